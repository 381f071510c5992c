"""Proof that the TRL adapter learns: a tiny random model, an SFT cold start, then GRPO.

    python benchmarks/learn_grpo.py               # about 6 minutes on 2 CPU cores
    python benchmarks/learn_grpo.py --copy-proof  # past the blind ceiling by copying names (see COPY_PROOF)
    python benchmarks/learn_grpo.py --quick       # a smoke run (a minute or two)

A randomly initialised Qwen2 (hidden size 64, 2 layers; tokenizer trained here) plays the
built-in world through MMSearchEnv in the MMSearch-R1 dialect:

1. evaluated as is (a random model never emits a valid action);
2. a short SFT cold start (150 steps) on oracle episodes of the world's train split (50:50
   search-free / search-required, tool results masked from the loss), then evaluated again: it
   has learned the format and when to search, not yet the answers;
3. GRPO through the ``rollout_func`` route (8 rollouts per task, the env's reward), which
   learns the answers from the reward alone, then evaluated a third time.

Each evaluation saves the model and runs ``mmsearch-gym eval --policy transformers:DIR``
(greedy, the env's reward, the same short system prompt and top-1 results as training, passed
with ``--set``), on two held-out sets: ``test``, the world's test split (countries never seen in
training), and ``train_heldout``, fresh tasks over the training countries (other scenes and
questions). Scripted baselines (direct, rag, oracle) on the same tasks give the scale.

What a tiny text-only model can learn: it sees neither the image nor any facts, so the task mix
is the two categories that need only the tags, the decision to search and the results:
``image_search`` (search the image, name the country of the first result) and ``search_free``
(answer at once; without the image only the likeliest answer per question can be learned).
Country names are single tokens of the tiny tokenizer (``--entity-tokens``), prompts are one
line plus the dialect's action hint, and results are cut to the top one, because CPU time grows
with every token. The model learns to name the training countries from their result
descriptions; in this default run it does not copy a name it never saw from the results, so on
the test split its image_search answers stay wrong whatever GRPO does, and the best it can reach
there is the blind ceiling of :func:`blind_ceilings`. A long cold start (``--sft-steps 800
--grpo-temperature 0.5``) reaches that ceiling by SFT alone. ``--copy-proof`` (:data:`COPY_PROOF`)
is the run that goes past it: image_search tasks only, where the answer is in the results alone.

Writes ``benchmarks/results/learn_grpo.json`` (config, baselines, the blind ceilings of
:func:`blind_ceilings`, the three evaluations with the ``mmsearch-gym eval`` command lines, the
SFT loss and GRPO reward curves, timings) and
``benchmarks/results/learn_grpo.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = ["image_search", "search_free"]
REPORT_KEYS = ("accuracy", "format_rate", "search_ratio", "mean_reward", "calls_per_episode")


def _log_callback() -> Any:
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs:
                self.logs.append({"step": state.global_step,
                                  **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}})

    return Keep()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)  # tiny matrices: one thread beats two contended ones
    from mmsearch_gym import cli
    from mmsearch_gym.actions import get_dialect
    from mmsearch_gym.evaluate import evaluate
    from mmsearch_gym.integrations import trl as T
    from mmsearch_gym.integrations.tiny_models import load_tiny_model, pretrain_copying
    from mmsearch_gym.integrations.trl.data import _text_of
    from mmsearch_gym.integrations.trl.generation import _tokenizer_of

    started = time.perf_counter()
    timings: dict[str, float] = {}
    dialect = get_dialect("mmsearch-r1")
    system_prompt = "Answer the question. " + dialect.action_hint()
    categories = args.categories
    vision = args.kind == "vlm"
    train_env = T.env_factory("MMSearch-Train-v0", top_k=args.top_k, system_prompt=system_prompt,
                              tasks={"world": "train", "n": args.train_pool, "seed": 0, "categories": categories})
    train_tasks = train_env().tasks
    # held-out evaluation sets: the test split (countries never seen in training) and fresh tasks
    # of the train distribution (other scenes and questions over the training countries)
    eval_sets = {"test": {"world": "test", "categories": categories},
                 "train_heldout": {"world": "train", "n": args.eval_tasks, "seed": 1, "categories": categories}}
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="learn-grpo-"))

    # scripted baselines on the same held-out tasks, for scale
    baselines = {set_name: {name: {k: report[k] for k in REPORT_KEYS} for name in ("direct", "rag", "oracle")
                            for report in [evaluate("MMSearch-v0", name, episodes=args.eval_tasks, progress=False,
                                                    tasks=spec, top_k=args.top_k).to_json()]}
                 for set_name, spec in eval_sets.items()}

    t = time.perf_counter()
    sft_data = T.build_sft_dataset(env=train_env, policy=args.teacher, episodes=args.sft_episodes,
                                   balance=0.5 if len(categories) > 1 else None, images=vision,
                                   thumbnails=vision, system_prompt=system_prompt, work_dir=work / "teacher",
                                   seed=0, progress=args.progress)
    if args.answer_space:
        sft_data = space_after_answer_tag(sft_data, dialect)
    texts = [_text_of(m["content"]) for row in sft_data["messages"] for m in row]
    names: list[str] = []
    if args.entity_tokens:  # the world's country names as single tokens: copying one symbol
        from mmsearch_gym.world import load_knowledge
        names = [name for entity in load_knowledge().countries() for name in entity.answers]
    model_dir = T.make_tiny_model(work / "init", kind=args.kind, tasks=train_tasks, texts=texts, size=args.size,
                                  vocab_size=args.vocab_size, seed=args.seed, extra_tokens=names,
                                  image_side=args.image_side)
    model, tokenizer = load_tiny_model(model_dir)
    if args.entity_swaps or args.copy_chats:
        sft_data = augment_for_copying(sft_data, dialect, swaps=args.entity_swaps, copy_chats=args.copy_chats, seed=0,
                                       pseudo_names=args.pseudo_names)
    timings["data_and_model_s"] = time.perf_counter() - t
    copy_curve: list[dict[str, float]] = []
    if args.copy_pretrain_steps:
        t = time.perf_counter()
        copy_curve = pretrain_copying(model, _tokenizer_of(tokenizer), steps=args.copy_pretrain_steps,
                                      span=args.copy_span, gap=args.copy_gap, batch_size=args.copy_batch,
                                      progress=args.progress)
        timings["copy_pretrain_s"] = time.perf_counter() - t
        print(f"copy pretraining: copy accuracy {copy_curve[-1]['copy_accuracy']:.3f}", flush=True)

    def save_checkpoint(folder: Path) -> None:
        """The model as it is now, loadable by ``mmsearch-gym eval --policy transformers:FOLDER``."""
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "mmsearch_tiny.json").write_text((model_dir / "mmsearch_tiny.json").read_text())

    played: dict[str, list[str]] = {}  # task ids each held-out set's evaluations play, in order

    def evaluate_now(label: str) -> dict[str, Any]:
        """Save the model as it is now and evaluate it with ``mmsearch-gym eval`` on each set."""
        t0 = time.perf_counter()
        checkpoint = work / "checkpoints" / label
        save_checkpoint(checkpoint)
        out: dict[str, Any] = {}
        for name, tasks_spec in eval_sets.items():
            argv = eval_argv(checkpoint, tasks_spec, work / f"eval-{label}-{name}.json", system_prompt, args)
            with contextlib.redirect_stdout(io.StringIO()):
                if cli.main(argv) != 0:
                    raise RuntimeError("mmsearch-gym " + shlex.join(argv) + " failed")
            report = json.loads((work / f"eval-{label}-{name}.json").read_text(encoding="utf-8"))
            episodes = report.pop("per_episode")
            played[name] = [e["task_id"] for e in episodes]
            out[name] = {**{k: report[k] for k in REPORT_KEYS}, "per_category": report["per_category"],
                         "examples": [e for c in categories for e in episodes if e["category"] == c][:2]
                         + [e for e in episodes if e["category"] == categories[0]][:2],
                         "command": "mmsearch-gym " + shlex.join(argv)}
        timings[f"eval_{label}_s"] = time.perf_counter() - t0
        return out

    evaluations = {"random": evaluate_now("random")}
    print("random:", _short(evaluations["random"]), flush=True)
    ceilings = {}
    for name, tasks_spec in eval_sets.items():
        by_id = {task.id: task for task in T.env_factory("MMSearch-v0", tasks=tasks_spec)().tasks}
        ceilings[name] = blind_ceilings(train_tasks, [by_id[i] for i in played[name]], dialect)
    print("blind ceilings:", json.dumps(ceilings), flush=True)

    t = time.perf_counter()
    sft_log = _log_callback()
    if args.load_sft:  # reuse a saved cold start (for tuning the GRPO stage)
        model, tokenizer = load_tiny_model(args.load_sft)
    else:
        sft = T.make_sft_trainer(model, tokenizer, sft_data, output_dir=work / "sft", callbacks=[sft_log], args={
            "max_steps": args.sft_steps, "learning_rate": args.sft_lr, "per_device_train_batch_size": 16,
            "lr_scheduler_type": "cosine", "warmup_steps": 10, "logging_steps": 10, "seed": args.seed,
            "disable_tqdm": not args.progress})
        sft.train()
        if args.save_sft:
            save_checkpoint(Path(args.save_sft))
    timings["sft_s"] = time.perf_counter() - t
    evaluations["sft"] = evaluate_now("sft")
    print("after SFT:", _short(evaluations["sft"]), flush=True)

    if args.grpo_steps == 0:  # SFT-only run (for tuning the cold start)
        losses = [{"step": int(log["step"]), "loss": log["loss"]} for log in sft_log.logs if "loss" in log]
        return {"config": {k: v for k, v in vars(args).items() if k not in ("work_dir", "progress", "out")},
                "evaluations": evaluations, "blind_ceilings": ceilings, "timings_s": timings,
                "sft_examples": len(sft_data), "copy_pretrain_curve": copy_curve[-1:], "sft_loss_curve": losses}
    t = time.perf_counter()
    grpo_data = T.to_dataset(train_tasks, shuffle=True, seed=2 + args.seed, system_prompt=system_prompt, images=vision)
    grpo_log = _log_callback()
    grpo = T.make_grpo_trainer(model, tokenizer, train_env, grpo_data, route="rollout", output_dir=work / "grpo",
                               max_turn_tokens=args.max_turn_tokens, callbacks=[grpo_log], args={
                                   "max_steps": args.grpo_steps, "learning_rate": args.grpo_lr,
                                   "per_device_train_batch_size": args.group_size * args.groups,
                                   "num_generations": args.group_size,
                                   "max_completion_length": args.max_completion_length,
                                   "temperature": args.grpo_temperature, "beta": args.grpo_beta,
                                   "lr_scheduler_type": "constant",
                                   "logging_steps": 1, "seed": args.seed, "disable_tqdm": not args.progress})
    grpo.train()
    timings["grpo_s"] = time.perf_counter() - t
    evaluations["grpo"] = evaluate_now("grpo")
    print("after GRPO:", _short(evaluations["grpo"]), flush=True)
    timings["total_s"] = time.perf_counter() - started

    curve = [{"step": int(log["step"]), "reward": log["reward"], "accuracy": log.get("mmsearch/accuracy"),
              "format_rate": log.get("mmsearch/format_rate"), "search_ratio": log.get("mmsearch/search_ratio"),
              "entropy": log.get("entropy"), "frac_reward_zero_std": log.get("frac_reward_zero_std")}
             for log in grpo_log.logs if "reward" in log]
    return {
        "benchmark": "learn_grpo",
        "config": {k: v for k, v in vars(args).items()
                   if k not in ("work_dir", "progress", "out", "save_sft", "load_sft")},
        "categories": categories,
        "dialect": dialect.name,
        "system_prompt": system_prompt,
        "model": {"size": args.size, "parameters": sum(p.numel() for p in model.parameters()),
                  "vocab_size": len(tokenizer)},
        "train_tasks": len(train_tasks), "sft_examples": len(sft_data),
        "eval_tasks": {name: args.eval_tasks for name in eval_sets},
        "baselines_on_eval_tasks": baselines,
        "blind_ceilings": ceilings,
        "evaluations": evaluations,
        "copy_pretrain_curve": copy_curve,
        "sft_loss_curve": [{"step": int(log["step"]), "loss": log["loss"]} for log in sft_log.logs if "loss" in log],
        "grpo_curve": curve,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": args.threads},
    }


def blind_ceilings(train_tasks: Any, eval_tasks: Any, dialect: Any) -> dict[str, Any]:
    """What a model that sees neither the image nor a name it can copy can score on ``eval_tasks``.

    Such a model can only learn one answer per question wording. ``train_majority`` answers
    each search_free question with its commonest training answer (what SFT imitates);
    ``best_constant`` with the answer commonest on ``eval_tasks`` themselves, an upper bound
    that no blind model beats (and that a lucky constant can reach without learning anything).
    Reported as search_free accuracy and as the env's mean reward over all ``eval_tasks`` when
    every other answer is wrong, scored by the env's own reward function.
    """
    from collections import Counter, defaultdict

    from mmsearch_gym.actions import Answer
    from mmsearch_gym.reward import score_episode

    def commonest(tasks: Any) -> dict[str, str]:
        by_question: dict[str, Counter[str]] = defaultdict(Counter)
        for task in tasks:
            if not task.search_required:
                by_question[task.question][task.answers[0]] += 1
        return {q: counts.most_common(1)[0][0] for q, counts in by_question.items()}

    out: dict[str, Any] = {"search_free_tasks": sum(not t.search_required for t in eval_tasks)}
    for name, guesses in (("train_majority", commonest(train_tasks)), ("best_constant", commonest(eval_tasks))):
        breakdowns = [score_episode([dialect.format(Answer(guesses.get(t.question, "")))], t.answers)
                      for t in eval_tasks]
        free = [b.raw_score for b, t in zip(breakdowns, eval_tasks, strict=False) if not t.search_required]
        out[name] = {"search_free_accuracy": round(sum(free) / max(1, len(free)), 4),
                     "mean_reward": round(sum(b.reward for b in breakdowns) / len(breakdowns), 4)}
    return out


def augment_for_copying(data: Any, dialect: Any, *, swaps: int, copy_chats: int, seed: int,
                        pseudo_names: int = 0) -> Any:
    """SFT rows that make reading the answer from the results the only way to it.

    * ``swaps`` counterfactual copies of each image_search chat: the country's name is replaced,
      in the result turn and in the answer, by another training country's, so the result
      description no longer tells the name and memorising description -> name does not pay;
    * ``copy_chats`` chats "Repeat: w1 .. wn" -> "w1 .. wn" over the world's country names and
      a few common words, so SFT keeps the copying that ``pretrain_copying`` grew instead of
      overwriting it (SFT alone takes copy accuracy on random strings from 1.0 to 0.01).

    With ``pseudo_names`` > 0 the swaps draw from that many made-up names spelled from common
    syllables (e.g. "Tovaleni") instead of the training countries: none is a token of the tiny
    tokenizer (trained before the augmentation), so each is spelled in several word pieces, as
    an unseen test country is, and no name recurs often enough to be memorised.

    Swaps use training names only, but the copy chats name every country, test ones included,
    as bare symbols (no flag, no description): a stand-in for a pretrained LM that has read the
    names. That is why the README reports runs with these options as experiments, not as the
    learning proof. Copy chats drawn from random vocabulary tokens instead did not help.
    """
    import random

    import datasets

    rng = random.Random(seed)
    rows = list(data)
    found = [(row, getattr(dialect.parse(row["messages"][-1]["content"]), "text", None))
             for row in rows if row["category"] == "image_search"]
    names = sorted({name for _, name in found if name})
    if pseudo_names:
        names = made_up_names(pseudo_names, seed=seed)
    for row, name in found:
        for other in rng.sample([n for n in names if n != name], min(swaps, len(names) - 1)) if name else []:
            messages = [dict(m) for m in row["messages"]]
            for message in messages[-2:]:  # the search result and the answer turn
                message["content"] = message["content"].replace(name, other)
            rows.append({**row, "messages": messages})
    if copy_chats:
        from mmsearch_gym.world import load_knowledge

        words = [name for entity in load_knowledge().countries() for name in entity.answers] + _COMMON_WORDS
        system = rows[0]["messages"][0]
        for _ in range(copy_chats):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
            rows.append({**rows[0], "category": "copy", "messages": [
                system, {"role": "user", "content": "Repeat: " + text}, {"role": "assistant", "content": text}]})
    return datasets.Dataset.from_list(rows).shuffle(seed=seed)


def space_after_answer_tag(data: Any, dialect: Any) -> Any:
    """The teacher's answers written after a space (``<answer> Slovakia</answer>``, parsed the same).

    With GPT-2's and Qwen's tokens a word carries the space before it: `` Slovakia`` in a result
    title and ``Slovakia`` right after the tag are different tokens, so copying a name would mean
    learning, for every word piece, which other piece it becomes. After a space the answer is the
    title's very tokens, and copying is copying.
    """
    from mmsearch_gym.actions import Answer

    marker = "ANSWER_MARKER"
    before = dialect.format(Answer(marker)).split(marker)[0]  # "<reason></reason><answer>"
    open_tag = before[before.rfind("<"):]

    def spaced(row: dict[str, Any]) -> dict[str, Any]:
        messages = [dict(m, content=m["content"].replace(open_tag, open_tag + " "))
                    if m["role"] == "assistant" and isinstance(m["content"], str) else m for m in row["messages"]]
        return {**row, "messages": messages}

    return data.map(spaced)


def made_up_names(count: int, *, seed: int) -> list[str]:
    """``count`` distinct capitalised names of 2 to 4 consonant-vowel syllables."""
    import random

    rng = random.Random(seed + 1)
    out: set[str] = set()
    while len(out) < count:
        name = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
        out.add(name.capitalize())
    return sorted(out)


COPY_PROOF: dict[str, Any] = {
    "categories": ["image_search"], "entity_tokens": False, "answer_space": True, "entity_swaps": 3,
    "pseudo_names": 3000, "copy_pretrain_steps": 900, "copy_span": 32, "copy_gap": 96, "copy_batch": 32,
    "sft_steps": 800, "sft_lr": 1e-3, "grpo_steps": 50, "grpo_lr": 1e-4, "grpo_temperature": 0.5,
    "out": RESULTS / "learn_grpo_copy.json"}
"""``--copy-proof``: a model that learns to copy a name it has never seen from a result into its answer.

Test-split image_search tasks name countries that never occur in training, and a blind model
scores 0 on them (:func:`blind_ceilings`); the only way up is reading the result. Each option
removes one obstacle met by earlier stops (README): names are spelled in the same word pieces in
a result and after ``<answer>`` (``answer_space``); copy pretraining puts a random gap between the two
copies so only content-based copying helps (``copy_gap``); three of four SFT chats swap the
country for a made-up name so that memorising names does not pay (``entity_swaps``,
``pseudo_names``); GRPO at a low rate and temperature keeps what SFT learned."""

_COMMON_WORDS = ["red", "blue", "green", "flag", "star", "cross", "the", "of", "and", "with", "yellow", "white",
                 "black"]


def eval_argv(checkpoint: Path, tasks_spec: dict[str, Any], out: Path, system_prompt: str,
              args: argparse.Namespace) -> list[str]:
    """The ``mmsearch-gym eval`` arguments that evaluate ``checkpoint`` on one held-out set."""
    return ["eval", "--env", "MMSearch-v0", "--policy", f"transformers:{checkpoint}",
            "--set", "tasks=" + json.dumps(tasks_spec), "--set", f"top_k={args.top_k}",
            "--set", "system_prompt=" + system_prompt, "--episodes", str(args.eval_tasks),
            "--policy-set", f"max_new_tokens={args.max_turn_tokens}", "--policy-set", "batch_size=32",
            "--json", str(out), "--per-episode", "--no-progress"]


def _short(evaluation: dict[str, Any]) -> str:
    keys = ("accuracy", "format_rate", "search_ratio", "mean_reward")
    return " | ".join(name + ": " + ", ".join(f"{k}={part[k]:.3f}" for k in keys)
                      for name, part in evaluation.items())


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["eval_tasks"])
    fig, axes = plt.subplots(1, 2 + len(sets), figsize=(5 * (2 + len(sets)), 4.2))
    sft = result["sft_loss_curve"]
    axes[0].plot([p["step"] for p in sft], [p["loss"] for p in sft], color="tab:blue")
    axes[0].set(title="SFT cold start: loss", xlabel="SFT step", ylabel="assistant-token NLL")
    curve = result["grpo_curve"]
    steps = [p["step"] for p in curve]
    rewards = [p["reward"] for p in curve]
    window = max(1, len(rewards) // 8)
    smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1])
              for i in range(len(rewards))]
    axes[1].plot(steps, rewards, color="tab:orange", alpha=0.35, label="batch mean")
    axes[1].plot(steps, smooth, color="tab:orange", label=f"moving mean ({window} steps)")
    axes[1].set(title="GRPO: env reward of the rollouts", xlabel="GRPO step", ylabel="reward")
    axes[1].legend()
    stages = ["random", "sft", "grpo"]
    keys = [("mean_reward", "mean reward"), ("accuracy", "accuracy"), ("format_rate", "format rate"),
            ("search_ratio", "search ratio")]
    width = 0.2
    for ax, name in zip(axes[2:], sets, strict=False):
        for i, (key, label) in enumerate(keys):
            values = [result["evaluations"][s][name][key] for s in stages]
            ax.bar([x + (i - 1.5) * width for x in range(3)], values, width, label=label)
        ceiling = result.get("blind_ceilings", {}).get(name, {}).get("train_majority", {}).get("mean_reward")
        if ceiling is not None:  # the most a model that cannot read the results scores
            ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label="blind ceiling (mean reward)")
        ax.set_xticks(range(3), ["random init", "after SFT", "after SFT+GRPO"])
        ax.set(title=f"{name} (n={result['eval_tasks'][name]}, greedy)", ylim=(0, 1))
        ax.legend(fontsize=8, loc="center left")  # the random-init bars are near 0
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    parser.add_argument("--copy-proof", action="store_true",
                        help="the copying proof: image_search tasks only, answers after a space, copy "
                             "pretraining with gaps, pseudo-name swaps (options given too still win)")
    parser.add_argument("--size", default="tiny", help="tiny model size (tiny, small, base)")
    parser.add_argument("--kind", default="text", choices=("text", "vlm"),
                        help="a text-only Qwen2 or a tiny Qwen2.5-VL that sees the images")
    parser.add_argument("--image-side", type=int, default=56, help="a VLM sees each image at about this side²")
    parser.add_argument("--categories", nargs="+", default=CATEGORIES, help="task categories to train and test on")
    parser.add_argument("--copy-pretrain-steps", type=int, default=0,
                        help="first teach the random model to copy on random token strings (no task data)")
    parser.add_argument("--copy-span", type=int, default=24, help="copy pretraining: length of the copied string")
    parser.add_argument("--copy-gap", type=int, default=0,
                        help="copy pretraining: up to this many random tokens between the two copies (0: none)")
    parser.add_argument("--copy-batch", type=int, default=64, help="copy pretraining: rows per step")
    parser.add_argument("--answer-space", action=argparse.BooleanOptionalAction, default=False,
                        help="SFT answers written after a space, so a name is the same tokens as in a result title")
    parser.add_argument("--entity-swaps", type=int, default=0,
                        help="counterfactual copies of each image_search SFT chat with another country's name")
    parser.add_argument("--copy-chats", type=int, default=0, help="'Repeat: ...' chats mixed into SFT")
    parser.add_argument("--pseudo-names", type=int, default=0,
                        help="--entity-swaps draw from this many made-up names instead of the training countries")
    parser.add_argument("--teacher", default="oracle", help="policy whose episodes the SFT cold start imitates")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--train-pool", type=int, default=3000,
                        help="train-split tasks of CATEGORIES that SFT and GRPO draw from")
    parser.add_argument("--sft-episodes", type=int, default=1200)
    parser.add_argument("--sft-steps", type=int, default=150,
                        help="a short cold start: the format and the search decision, not yet the answers")
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--grpo-steps", type=int, default=125)
    parser.add_argument("--grpo-lr", type=float, default=3e-4)
    parser.add_argument("--groups", type=int, default=8, help="tasks per GRPO step")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per task (the papers use 8)")
    parser.add_argument("--eval-tasks", type=int, default=160)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--max-completion-length", type=int, default=256)
    parser.add_argument("--max-turn-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--entity-tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the world's country names as single tokens")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (model init, SFT and GRPO order and sampling); "
                             "tasks and teacher episodes stay fixed")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--save-sft", default=None, help="save the SFT model here")
    parser.add_argument("--load-sft", default=None, help="skip SFT: start GRPO from this saved model")
    parser.add_argument("--grpo-temperature", type=float, default=0.7)
    parser.add_argument("--grpo-beta", type=float, default=0.0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "learn_grpo.json")
    if parser.parse_known_args(argv)[0].copy_proof:
        parser.set_defaults(**COPY_PROOF)
    args = parser.parse_args(argv)
    if args.quick:
        args.sft_episodes, args.sft_steps, args.grpo_steps, args.eval_tasks, args.train_pool = 60, 20, 3, 32, 300
        args.copy_pretrain_steps, args.copy_chats = min(args.copy_pretrain_steps, 20), min(args.copy_chats, 40)
    if args.kind == "vlm" and (args.entity_swaps or args.copy_chats or args.copy_pretrain_steps):
        parser.error("--kind vlm takes --entity-swaps 0 --copy-chats 0 --copy-pretrain-steps 0 "
                     "(text-only augmentations)")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.grpo_steps == 0:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        return 0
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({"evaluations": {k: {n: {m: p[m] for m in REPORT_KEYS} for n, p in v.items()}
                                      for k, v in result["evaluations"].items()},
                      "timings_s": result["timings_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
