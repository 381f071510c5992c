"""The TRL adapter on CPU with tiny random models: datasets, SFT masks, both GRPO routes.

A tiny Qwen2 model (random weights, tokenizer trained here, TRL's Qwen2.5 chat template) is first
taught the action format by a short SFT on oracle episodes (a random model never emits a tool
call), then trained two GRPO steps through each route. The assertions check the plumbing
end to end: the env really ran the tools (backend calls), TRL's loss mask is 0 exactly on the
tool-result tokens, and the rewards TRL used are the env's.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from fixture_world import france_backend, scene_png  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmsearch_gym.actions import get_dialect  # noqa: E402
from mmsearch_gym.env import MMSearchEnv  # noqa: E402
from mmsearch_gym.errors import ConfigError, DataError  # noqa: E402
from mmsearch_gym.integrations import trl as T  # noqa: E402
from mmsearch_gym.integrations.tiny_models import TAG_TOKENS, load_tiny_model  # noqa: E402
from mmsearch_gym.integrations.trl.data import _text_of  # noqa: E402
from mmsearch_gym.integrations.trl.generation import _action_text, _cut_at_stop, _cut_turn  # noqa: E402
from mmsearch_gym.integrations.trl.lora import LoraSpec, trainable_parameters  # noqa: E402
from mmsearch_gym.integrations.trl.recipe import _RECIPE_KEYS  # noqa: E402
from mmsearch_gym.search.base import MemoryBackend  # noqa: E402
from mmsearch_gym.tasks import SceneObject, Task, TaskSet  # noqa: E402

# ---------------------------------------------------------------------------------------------
# A small world: two search-required tasks, two search-free ones, canned search results
# ---------------------------------------------------------------------------------------------


FLAG = SceneObject("flag", (200, 20, 300, 90), entity="fr", attributes={"position": "top right"})


def make_tasks() -> TaskSet:
    return TaskSet([
        Task("t0", "Which country's flag is shown at the top right?", ("France", "French Republic"),
             category="crop", image_bytes=scene_png((10, 120, 30)), objects=(FLAG,),
             meta={"oracle_plan": [{"tool": "image_search", "box": None}, {"tool": "answer"}]}),
        Task("t1", "What is the capital of the country whose flag is shown?", ("Paris",),
             category="image_then_text", image_bytes=scene_png((200, 10, 10)), objects=(FLAG,),
             meta={"oracle_plan": [{"tool": "image_search", "box": None},
                                   {"tool": "text_search", "query": "France capital"}, {"tool": "answer"}]}),
        Task("t2", "How many flags are in this picture?", ("1", "one"), category="search_free",
             image_bytes=scene_png((0, 0, 200), (200, 300)), objects=(FLAG,),
             meta={"oracle_plan": [{"tool": "answer"}]}),
        Task("t3", "Is there a flag in the picture?", ("yes",), category="search_free",
             image_bytes=scene_png((90, 90, 90)), objects=(FLAG,), meta={"oracle_plan": [{"tool": "answer"}]}),
    ], name="trl-tiny")


def make_backend() -> MemoryBackend:
    return france_backend()


class TinyReader:
    """The evidence reader the scripted oracle uses on this small world."""

    def identify(self, hits: Any) -> str | None:
        for hit in hits:
            if hit.title.startswith("Flag of "):
                return hit.title[len("Flag of "):]
        return None

    def build_query(self, question: str, hits: Any) -> str:
        return f"{self.identify(hits) or 'image'} capital"

    def answer(self, question: str, hits: Any) -> str | None:
        if "capital" in question:
            for hit in hits:
                found = re.search(r"Capital: ([A-Za-z ]+)\.", hit.snippet)
                if found:
                    return found.group(1)
            return None
        return self.identify(hits)

    def answer_from_scene(self, question: str, objects: Any, image_size: Any = None) -> str | None:
        if question.startswith("How many"):
            return str(len(objects))
        if question.startswith("Is there"):
            return "yes" if objects else "no"
        return None


def short_prompt(dialect: str) -> str:
    """A short system prompt keeps CPU sequences short (the same in SFT and GRPO)."""
    return "Answer the question. " + get_dialect(dialect).action_hint()


def make_env(dialect: str, backend: MemoryBackend | None = None) -> MMSearchEnv:
    return MMSearchEnv(make_tasks(), backend or make_backend(), dialect=dialect)


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny model taught the format by SFT (once per module, per route)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ROUTES = {"rollout": "mmsearch-r1", "environment": "tool-json"}
SFT_STEPS = {"rollout": 60, "environment": 100}  # JSON tool calls take a tiny model longer


def _sft_data(route: str, work: Path) -> Any:
    dialect = ROUTES[route]
    return T.build_sft_dataset(env=make_env(dialect), policy="oracle", route=route, balance=0.5,
                               system_prompt=short_prompt(dialect), work_dir=work, progress=False,
                               policy_kwargs={"reader": TinyReader()})


@pytest.fixture(scope="module")
def sft_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per route: a tiny model SFT-trained on the oracle's episodes (it then follows the format)."""
    out = {}
    for route in ROUTES:
        work = tmp_path_factory.mktemp(f"sft-{route}")
        data = _sft_data(route, work)
        texts = [m["content"] for row in data["messages"] for m in row]
        texts += list(data["tools"]) if route == "environment" else []
        path = T.make_tiny_model(work / "init", tasks=make_tasks(), texts=texts, vocab_size=768, seed=0)
        model, tokenizer = load_tiny_model(path)
        trainer = T.make_sft_trainer(model, tokenizer, data, output_dir=work / "run", args={
            "max_steps": SFT_STEPS[route], "learning_rate": 1e-2, "per_device_train_batch_size": 4,
            "lr_scheduler_type": "constant", "logging_steps": 60, "seed": 0, "disable_tqdm": True})
        trainer.train()
        trainer.save_model(str(work / "sft"))
        tokenizer.save_pretrained(str(work / "sft"))
        (work / "sft" / "mmsearch_tiny.json").write_text((path / "mmsearch_tiny.json").read_text())
        out[route] = work / "sft"
    return out


def _grpo_args(**extra: Any) -> dict[str, Any]:
    return {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 160,
            "max_steps": 2, "learning_rate": 1e-4, "beta": 0.0, "temperature": 0.3, "seed": 0,
            "disable_tqdm": True, **extra}


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def test_to_dataset_prompts_are_the_envs() -> None:
    env = make_env("mmsearch-r1")
    data = T.to_dataset(env.tasks)
    assert data.column_names == ["prompt", "task_id", "answers", "category"]
    assert data["task_id"] == ["t0", "t1", "t2", "t3"]
    for row in data:
        _, info = env.reset(options={"task_id": row["task_id"]})
        system, user = row["prompt"]
        assert system["content"] == env.dialect.system_prompt()
        # a text-only model reads the image as the placeholder, as TransformersPolicy shows it
        assert user["content"] == "[image]\n" + info["messages"][1]["content"][1]["text"]
        assert user["task_id"] == row["task_id"]
    assert data[1]["answers"] == ["Paris"] and data[2]["category"] == "search_free"
    with_images = T.to_dataset(env.tasks, images=True)
    assert with_images[0]["prompt"][1]["content"] == data[0]["prompt"][1]["content"].removeprefix("[image]\n")


def test_to_dataset_options() -> None:
    tasks = make_tasks()
    tool = T.to_dataset(tasks, dialect="tool-json", route="environment", images=True, categories=["search_free"])
    assert tool["task_id"] == ["t2", "t3"]
    assert tool[0]["prompt"][1]["content"] == ""  # reset() adds the question
    assert "<tools>" not in tool[0]["prompt"][0]["content"]  # TRL's template renders the tools
    assert tool[0]["image"].size == (200, 300)
    short = T.to_dataset(tasks, n=2, shuffle=True, seed=3, system_prompt="Be brief.")
    assert len(short) == 2 and short[0]["prompt"][0]["content"] == "Be brief."
    with pytest.raises(ConfigError):
        T.to_dataset(tasks, route="sideways")
    with pytest.raises(ConfigError):
        T.to_dataset(tasks, split="train")


def test_to_dataset_from_env_id_reads_the_world_split() -> None:
    data = T.to_dataset("MMSearch-v0", split="train", n=3)
    assert len(data) == 3 and all(tid for tid in data["task_id"])
    assert data[0]["prompt"][0]["content"] == get_dialect("mmsearch-r1").system_prompt()


def test_sft_dataset_is_balanced_and_masks_tool_results(tmp_path: Path) -> None:
    data = _sft_data("rollout", tmp_path)
    categories = data["category"]
    assert categories.count("search_free") == len(categories) - categories.count("search_free") == 2
    path = T.make_tiny_model(tmp_path / "m", tasks=make_tasks(), vocab_size=512)
    model, tokenizer = load_tiny_model(path)
    trainer = T.make_sft_trainer(model, tokenizer, data, output_dir=tmp_path / "run", args={
        "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "disable_tqdm": True})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
    for row, ids, labels in zip(data, batch["input_ids"], batch["labels"], strict=False):
        trained = tokenizer.decode(ids[labels != -100])
        assistant = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        results = [m["content"] for m in row["messages"][2:] if m["role"] == "user"]
        # exactly the assistant turns (each closed by the end-of-turn token) are learned ...
        assert trained == "".join(f"\n{text}<|im_end|>\n" for text in assistant)
        # ... and every tool result is in the input but masked
        for result in results:
            assert result in tokenizer.decode(ids) and result not in trained
        if row["category"] != "search_free":
            assert results and "<information>" in results[0]
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=False))


def test_sft_dataset_for_the_tool_route(tmp_path: Path) -> None:
    data = _sft_data("environment", tmp_path)
    row = next(r for r in data if r["category"] != "search_free")
    roles = [m["role"] for m in row["messages"]]
    assert roles[:3] == ["system", "user", "assistant"] and "tool" in roles
    call = row["messages"][2]["content"]
    assert call.endswith('<tool_call>\n{"name": "image_search", "arguments": {}}\n</tool_call>')
    tool = next(m for m in row["messages"] if m["role"] == "tool")
    assert tool["name"] == "image_search" and tool["content"].startswith("<information>")
    assert [t["function"]["name"] for t in __import__("json").loads(row["tools"])] == ["image_search", "text_search"]


def test_sft_balance_needs_both_kinds(tmp_path: Path) -> None:
    env = MMSearchEnv(make_tasks().filter(lambda t: t.category == "search_free"), make_backend())
    with pytest.raises(DataError, match="balance"):
        T.build_sft_dataset(env=env, policy="oracle", work_dir=tmp_path, progress=False,
                            policy_kwargs={"reader": TinyReader()})


# ---------------------------------------------------------------------------------------------
# GRPO through rollout_func
# ---------------------------------------------------------------------------------------------


class Spy:
    """Wraps a callable and keeps every output (what TRL received)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.outputs = fn, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        self.outputs.append(out)
        return out


def _masked_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans, current = [], []
    for tok, keep in zip(ids, mask, strict=False):
        if keep:
            if current:
                spans.append(current)
                current = []
        else:
            current.append(tok)
    if current:
        spans.append(current)
    return spans


def _train(trainer: Any) -> tuple[Spy, list[dict[str, Any]]]:
    """Run the trainer, spying on the batches TRL built (its loss masks and advantages)."""
    batches = Spy(trainer._generate_and_score_completions)
    trainer._generate_and_score_completions = batches
    trainer.train()
    return batches, batches.outputs


@pytest.mark.slow
def test_grpo_rollout_route_runs_the_env(sft_models: dict[str, Path], tmp_path: Path) -> None:
    backend = make_backend()
    env = make_env("mmsearch-r1", backend)
    model, tokenizer = load_tiny_model(sft_models["rollout"])
    data = T.to_dataset(env.tasks, system_prompt=short_prompt("mmsearch-r1"))
    trainer = T.make_grpo_trainer(model, tokenizer, env, data, route="rollout", args=_grpo_args(),
                                  output_dir=tmp_path, max_turn_tokens=48)
    rollouts = Spy(trainer.rollout_func)
    trainer.rollout_func = rollouts
    _, batches = _train(trainer)
    assert trainer.state.global_step == 2 and len(rollouts.outputs) == 2

    executed = steps = 0
    for out, batch in zip(rollouts.outputs, batches, strict=False):
        n = len(out["completion_ids"])
        assert n == 8 and out["logprobs"] is None
        # one GRPO group (4 generations) per task: every member played the task of its prompt
        groups = [out["env_task_id"][i:i + 4] for i in range(0, n, 4)]
        assert all(len(set(group)) == 1 for group in groups)
        # the env really ran: searches through the backend, several steps per searching episode
        steps += sum(out["env_steps"])
        executed += sum(c["image_search"] + c["text_search"] for c in out["env_tool_calls"])
        # TRL used the env's rewards, unchanged
        for breakdown, reward in zip(out["reward_breakdown"], out["env_reward"], strict=False):
            assert breakdown["reward"] == reward
        # the mask TRL trains with is our env_mask; its zeros are exactly the tool-result turns
        tool_mask = batch["tool_mask"] * batch["completion_mask"]
        for row, (ids, mask, observations) in enumerate(zip(out["completion_ids"], out["env_mask"],
                                                            out["env_observations"], strict=False)):
            assert tool_mask[row, :len(ids)].tolist() == mask
            assert batch["completion_ids"][row, :len(ids)].tolist() == ids
            spans = [tokenizer.decode(s) for s in _masked_spans(ids, mask)]
            result_spans = [s for s in spans if s != "<|im_end|>"]
            assert len(result_spans) == len(observations)
            for span, observation in zip(result_spans, observations, strict=False):
                assert span == f"<|im_end|>\n<|im_start|>user\n{observation}<|im_end|>\n<|im_start|>assistant\n" \
                    or span == f"\n<|im_start|>user\n{observation}<|im_end|>\n<|im_start|>assistant\n"
            # what the model sampled (mask 1) is exactly the turns the env was stepped with
            sampled = tokenizer.decode([t for t, m in zip(ids, mask, strict=False) if m], skip_special_tokens=True)
            assert sampled.startswith(out["env_turns"][row][0])
    assert executed > 0 and len(backend.calls) == executed
    assert steps > 16  # 16 episodes, some of them searched before answering
    logged = trainer.state.log_history[0]
    for key in ("mmsearch/accuracy", "mmsearch/search_ratio", "mmsearch/format_rate",
                "mmsearch/image_search_calls", "mmsearch/text_search_calls"):
        assert key in logged
    assert logged["reward"] == pytest.approx(sum(rollouts.outputs[0]["env_reward"]) / 8, abs=1e-6)
    assert max(h.get("mmsearch/format_rate", 0.0) for h in trainer.state.log_history) > 0  # SFT taught it


def test_grpo_trainer_leaves_the_process_environment_alone(sft_models: dict[str, Path], tmp_path: Path) -> None:
    """TRL's "experimental feature" notice is silenced for the trainer's construction only."""
    saved = os.environ.pop("TRL_EXPERIMENTAL_SILENCE", None)
    try:
        model, tokenizer = load_tiny_model(sft_models["rollout"])
        env = make_env("mmsearch-r1")
        data = T.to_dataset(env.tasks, system_prompt=short_prompt("mmsearch-r1"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            T.make_grpo_trainer(model, tokenizer, env, data, route="rollout", args=_grpo_args(), output_dir=tmp_path)
        assert "TRL_EXPERIMENTAL_SILENCE" not in os.environ
        assert not [w for w in caught if "experimental feature" in str(w.message)]
    finally:
        if saved is not None:
            os.environ["TRL_EXPERIMENTAL_SILENCE"] = saved


def test_rollout_groups_share_a_task(sft_models: dict[str, Path]) -> None:
    """Each prompt (repeated num_generations times by TRL) resets its env on its own task."""
    env = make_env("mmsearch-r1")
    rollout = T.make_rollout_func(env, max_turn_tokens=8)
    model, tokenizer = load_tiny_model(sft_models["rollout"])
    data = T.to_dataset(env.tasks, system_prompt=short_prompt("mmsearch-r1"))
    prompts = [p for p in data["prompt"] for _ in range(3)]

    def generate(batch: list[Any], max_new: int) -> list[tuple[list[int], None]]:
        return T.hf_generate(model, tokenizer, batch, max_new, stops=rollout.dialect.stop_sequences)

    episodes = rollout.play(prompts, tokenizer, generate, budget=64)
    assert [ep.task_id for ep in episodes] == [tid for tid in data["task_id"] for _ in range(3)]
    assert all(rollout._env(ep.slot).task.id == ep.task_id for ep in episodes)
    assert len({id(rollout._env(ep.slot)) for ep in episodes}) == len(episodes)


def test_eval_policy_sees_exactly_the_training_text(sft_models: dict[str, Path]) -> None:
    """``mmsearch-gym eval --policy transformers:DIR`` shows a text-only model, turn by turn, the
    very text the rollout trained it on, so greedy evaluation plays the same episodes."""
    from mmsearch_gym.evaluate import evaluate
    from mmsearch_gym.integrations.transformers_policy import TransformersPolicy
    from mmsearch_gym.policies import EpisodeView

    prompt = short_prompt("mmsearch-r1")
    env = MMSearchEnv(make_tasks(), make_backend(), system_prompt=prompt)
    model, tokenizer = load_tiny_model(sft_models["rollout"])
    rollout = T.make_rollout_func(env, max_turn_tokens=24)
    data = T.to_dataset(env.tasks, system_prompt=prompt)

    def generate(batch: list[Any], max_new: int) -> list[tuple[list[int], None]]:
        with torch.no_grad():
            return T.hf_generate(model, tokenizer, batch, max_new, stops=rollout.dialect.stop_sequences,
                                 generation_config=greedy)

    greedy = model.generation_config.__class__(**{**model.generation_config.to_dict(), "do_sample": False,
                                                  "temperature": None, "top_p": None, "top_k": None})
    episodes = rollout.play(data["prompt"], tokenizer, generate, budget=128)
    policy = TransformersPolicy(model, tokenizer, max_new_tokens=24)
    searched = 0
    for ep in episodes:
        trained_on = tokenizer.decode(ep.prompt_ids + ep.completion_ids)
        replay = MMSearchEnv(make_tasks(), make_backend(), system_prompt=prompt)
        obs, info = replay.reset(options={"task_id": ep.task_id})
        view = EpisodeView.start(obs, info, dialect=replay.dialect)
        for turn in ep.turns:
            shown, _ = policy.prompt(view)
            assert trained_on.startswith(shown)  # the eval prompt is the training text so far
            assert trained_on[len(shown):].startswith(turn)
            obs, _, terminated, truncated, info = replay.step(turn)
            view.record(turn, obs, info)
            searched += info["action"].kind == "image_search"
    assert searched > 0  # tool results were part of what was compared
    report = evaluate(lambda: MMSearchEnv(make_tasks(), make_backend(), system_prompt=prompt), policy,
                      progress=False)
    assert [r.reward.reward for r in report.results] == [ep.breakdown.reward for ep in episodes]


def test_rollout_rejects_foreign_prompts() -> None:
    rollout = T.make_rollout_func(make_env("mmsearch-r1"))
    with pytest.raises(DataError, match="task_id"):
        rollout.play([[{"role": "user", "content": "hi"}]], None, lambda b, n: [], budget=8)
    with pytest.raises(ConfigError, match="dialect"):
        T.make_rollout_func(make_env("mmsearch-r1"), dialect="tool-json")


# ---------------------------------------------------------------------------------------------
# GRPO through environment_factory
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grpo_environment_route_runs_the_env(sft_models: dict[str, Path], tmp_path: Path) -> None:
    backend = make_backend()
    env = make_env("tool-json", backend)
    model, tokenizer = load_tiny_model(sft_models["environment"])
    data = T.to_dataset(env.tasks, route="environment", system_prompt=short_prompt("tool-json"))
    trainer = T.make_grpo_trainer(model, tokenizer, env, data, route="environment", args=_grpo_args(),
                                  output_dir=tmp_path)
    original = trainer._calculate_rewards
    snapshots: list[tuple[Any, list[dict[str, Any]]]] = []

    def calculate(*args: Any, **kwargs: Any) -> Any:  # what TRL scored, and the envs at that moment
        rewards = original(*args, **kwargs)
        snapshots.append((rewards.clone(), [
            {"steps": e.steps, "turns": len(e.env.turns), "calls": sum(e.tool_calls.values()),
             "observations": list(e.observations), "breakdown": e.breakdown} for e in trainer.environments]))
        return rewards

    trainer._calculate_rewards = calculate
    _, batches = _train(trainer)
    assert trainer.state.global_step == 2 and len(snapshots) == 2
    assert trainer.reward_func_names == ["episode_accuracy", "MMSearchToolEnv"]
    assert trainer.reward_weights.tolist() == [0.0, 1.0]

    executed = steps = 0
    for (rewards, envs), batch in zip(snapshots, batches, strict=False):
        loss_mask = batch["tool_mask"] * batch["completion_mask"]
        for row, state in enumerate(envs):
            # TRL's GRPO reward is the env's; the weight-0 column is its correctness
            assert rewards[row, 1].item() == pytest.approx(state["breakdown"].reward)
            assert rewards[row, 0].item() == pytest.approx(state["breakdown"].raw_score)
            assert state["steps"] == state["turns"]
            steps += state["steps"]
            executed += state["calls"]
            # the zeros of the loss mask are exactly the tool responses the env produced
            ids = batch["completion_ids"][row][batch["completion_mask"][row].bool()].tolist()
            mask = loss_mask[row, :len(ids)].tolist()
            spans = [tokenizer.decode(s) for s in _masked_spans(ids, mask)]
            assert len(spans) == len(state["observations"])
            for span, observation in zip(spans, state["observations"], strict=False):
                assert f"<tool_response>\n{observation}\n</tool_response>" in span
                assert span.startswith(("<|im_end|>\n<|im_start|>user\n", "\n<|im_start|>user\n"))
    assert executed > 0 and len(backend.calls) == executed
    assert steps > 16
    logged = trainer.state.log_history[0]
    assert "mmsearch/accuracy" in logged and "tools/call_frequency" in logged


def test_tool_env_steps_the_env() -> None:
    backend = make_backend()
    cls = T.make_tool_env_factory(make_env("tool-json", backend))
    environment = cls()
    question = environment.reset(task_id="t1", prompt=[], answers=["Paris"])
    assert question.startswith("[image]\nQuestion: What is the capital")  # text-only: the placeholder
    first = environment.image_search()
    assert first.startswith("<information>") and "[image] Flag of France" in first
    second = environment.text_search("france capital")
    assert "Capital: Paris." in second
    assert environment.steps == 2 and backend.calls == [("image", None), ("text", "france capital")]
    environment._finish("<answer>Paris</answer>")
    assert environment.get_reward() == pytest.approx(environment.env.score().reward)
    assert environment.breakdown.raw_score == 1.0
    # a partial box is the env's business: it answers with Invalid feedback, the episode goes on
    environment.reset(task_id="t0")
    feedback = environment.image_search(x1=10)
    assert "invalid" in feedback.lower() and environment.tool_calls["image_search"] == 0
    vision = T.make_tool_env_factory(make_env("tool-json"), vision=True)()
    assert vision.reset(task_id="t0").startswith("Question:")  # a VLM gets the image itself
    blocks = vision.image_search(x1=200, y1=20, x2=300, y2=90)
    assert blocks[0]["type"] == "text" and [b["type"] for b in blocks[1:]] == ["image"]


def test_tool_env_needs_tool_json() -> None:
    cls = T.make_tool_env_factory(make_env("mmsearch-r1"))
    with pytest.raises(ConfigError, match="tool-json"):
        cls()


# ---------------------------------------------------------------------------------------------
# A tiny vision-language model (Qwen2.5-VL architecture, image-only processor)
# ---------------------------------------------------------------------------------------------


def _vlm_after_sft(route: str, work: Path, steps: int) -> tuple[Any, Any]:
    dialect = ROUTES[route]
    data = T.build_sft_dataset(env=make_env(dialect), policy="oracle", route=route, images=True,
                               thumbnails=route == "rollout", system_prompt=short_prompt(dialect), work_dir=work,
                               progress=False, policy_kwargs={"reader": TinyReader()})
    assert [len(images) for images in data["images"]] == [
        1 + sum(1 for m in row[2:] if m["role"] == "user" and any(b["type"] == "image" for b in m["content"]))
        for row in data["messages"]]
    texts = [_text_of(m["content"]) for row in data["messages"] for m in row]
    path = T.make_tiny_model(work / "init", kind="vlm", tasks=make_tasks(), texts=texts, vocab_size=768)
    model, processor = load_tiny_model(path)
    T.make_sft_trainer(model, processor, data, output_dir=work / "run", args={
        "max_steps": steps, "learning_rate": 1e-2, "per_device_train_batch_size": 4,
        "lr_scheduler_type": "constant", "logging_steps": steps, "seed": 0, "disable_tqdm": True}).train()
    return model, processor


def _image_tokens_match(batch: dict[str, Any], processor: Any) -> None:
    """Placeholders and images always match: one feature per <|image_pad|> token, per row."""
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    merge = processor.image_processor.merge_size ** 2
    features = (batch["image_grid_thw"].prod(dim=1) // merge).tolist()
    start = 0
    for row, count in enumerate(batch["num_images"]):
        assert (ids[row] == image_token).sum().item() == sum(features[start:start + count])
        start += count
    assert start == len(features)


def _tiny_vlm_and_data(work: Path) -> tuple[Any, Any, Any]:
    data = T.build_sft_dataset(env=make_env("mmsearch-r1"), policy="oracle", images=True, thumbnails=True,
                               system_prompt=short_prompt("mmsearch-r1"), work_dir=work, progress=False,
                               policy_kwargs={"reader": TinyReader()})
    texts = [_text_of(m["content"]) for row in data["messages"] for m in row]
    model, processor = load_tiny_model(T.make_tiny_model(work / "init", kind="vlm", tasks=make_tasks(), texts=texts,
                                                         vocab_size=768))
    return model, processor, data


_SFT_ARGS = {"max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 4, "lr_scheduler_type": "constant",
             "logging_steps": 3, "seed": 0, "disable_tqdm": True}


def _snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_sft_freezing_the_vision_side_trains_only_the_language_model(tmp_path: Path) -> None:
    model, processor, data = _tiny_vlm_and_data(tmp_path)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for name, p in model.named_parameters() if ".visual." in f".{name}")
    assert 0 < vision < total
    before = _snapshot(model)
    trainer = T.make_sft_trainer(model, processor, data, output_dir=tmp_path / "run", args=_SFT_ARGS,
                                 freeze_vision=True)
    assert trainable_parameters(trainer.model) == total - vision
    trainer.train()
    after = _snapshot(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before if ".visual." in f".{n}")  # projector included
    assert any(not torch.equal(before[n], after[n]) for n in before if ".visual." not in f".{n}")


def test_sft_with_lora_trains_only_adapters_on_the_language_model(tmp_path: Path) -> None:
    model, processor, data = _tiny_vlm_and_data(tmp_path)
    spec = LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    expected = sum(spec.r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if name.rsplit(".", 1)[-1] in spec.target_modules and ".visual." not in f".{name}.")
    before = _snapshot(model)
    trainer = T.make_sft_trainer(model, processor, data, output_dir=tmp_path / "run", args=_SFT_ARGS,
                                 lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                                 freeze_vision=True)
    assert expected > 0 and trainable_parameters(trainer.model) == expected
    trainer.train()
    merged = trainer.model.merge_and_unload()
    after = _snapshot(merged)
    assert after.keys() == before.keys()  # a plain model again, same weights by name
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.rsplit(".", 2)[-2] in spec.target_modules for n in changed)
    assert not any(".visual." in f".{n}" for n in changed)
    with pytest.raises(ConfigError, match="unknown lora fields"):
        LoraSpec.from_json({"rank": 8})


@pytest.mark.slow
def test_vlm_rollout_route(tmp_path: Path) -> None:
    model, processor = _vlm_after_sft("rollout", tmp_path, steps=40)
    backend = make_backend()
    env = make_env("mmsearch-r1", backend)
    data = T.to_dataset(env.tasks, images=True, system_prompt=short_prompt("mmsearch-r1"))
    trainer = T.make_grpo_trainer(model, processor, env, data, route="rollout", args=_grpo_args(),
                                  output_dir=tmp_path / "grpo", max_turn_tokens=48)
    rollouts = Spy(trainer.rollout_func)
    trainer.rollout_func = rollouts
    _, batches = _train(trainer)
    assert trainer.state.global_step == 2
    for out, batch in zip(rollouts.outputs, batches, strict=False):
        assert batch["num_images"] == [1] * 8  # the task image; results reach this route as text
        _image_tokens_match(batch, processor)
        for breakdown, reward in zip(out["reward_breakdown"], out["env_reward"], strict=False):
            assert breakdown["reward"] == reward
    assert len(backend.calls) == sum(sum(c.values()) for out in rollouts.outputs for c in out["env_tool_calls"]) > 0


@pytest.mark.slow
def test_vlm_environment_route_sees_thumbnails(tmp_path: Path) -> None:
    model, processor = _vlm_after_sft("environment", tmp_path, steps=100)
    backend = make_backend()
    env = make_env("tool-json", backend)
    data = T.to_dataset(env.tasks, route="environment", images=True, system_prompt=short_prompt("tool-json"))
    trainer = T.make_grpo_trainer(model, processor, env, data, route="environment", args=_grpo_args(),
                                  output_dir=tmp_path / "grpo")
    _, batches = _train(trainer)
    assert trainer.state.global_step == 2
    searched = False
    for batch in batches:
        _image_tokens_match(batch, processor)
        searched |= any(n > 1 for n in batch["num_images"])  # task image + result thumbnails
    assert searched and any(call[0] == "image" for call in backend.calls)


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------

TRL_RECIPES = ["grpo-tiny-cpu", "sft-tiny-cpu", "sft-grpo-tiny-cpu", "grpo-qwen2.5-vl-7b",
               "grpo-qwen3-vl-8b", "sft-qwen2.5-vl-7b"]
_DATA_KEYS = {"teacher", "episodes", "balance", "thumbnails", "trajectories"}


@pytest.mark.parametrize("name", TRL_RECIPES)
def test_shipped_recipes_are_valid(name: str, tmp_path: Path) -> None:
    from trl import GRPOConfig, SFTConfig

    from mmsearch_gym.commands.train import load_recipe

    recipe = load_recipe(name)
    assert recipe["trainer"] in ("sft", "grpo", "sft+grpo") and recipe["description"]
    assert set(recipe) <= _RECIPE_KEYS
    cpu = {"bf16": False, "use_cpu": True, "output_dir": str(tmp_path)}
    if "grpo" in recipe:
        config = GRPOConfig(**{**recipe["grpo"], **cpu})
        assert config.num_generations == 8  # the papers' group size
        if isinstance(recipe["model"], str):  # the GPU recipes: MMSearch-R1's settings, vLLM
            assert config.use_vllm and config.beta == 0.001 and config.learning_rate == 2e-6
    if "sft" in recipe:
        SFTConfig(**{**{k: v for k, v in recipe["sft"].items() if k not in _DATA_KEYS}, **cpu})
        assert recipe["sft"].get("balance", 0.5) == 0.5


def test_train_recipe_rejects_bad_recipes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainer"):
        T.train_recipe({"trainer": "ppo"}, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown recipe fields"):
        T.train_recipe({"trainer": "grpo", "modle": "x"}, output_dir=tmp_path)


@pytest.mark.slow
def test_train_recipe_cli_runs_both_stages(tmp_path: Path) -> None:
    """``mmsearch-gym train`` on a shipped tiny recipe, shrunk to a few steps."""
    from mmsearch_gym.cli import main

    out = tmp_path / "run"
    code = main(["train", "sft-grpo-tiny-cpu", "-o", str(out), "--set", "env.kwargs.tasks.n=40",
                 "--set", "sft.episodes=16", "--set", "sft.max_steps=2", "--set", "sft.per_device_train_batch_size=4",
                 "--set", "grpo.max_steps=1", "--set", "grpo.per_device_train_batch_size=8",
                 "--set", "grpo.num_generations=4", "--set", "grpo.max_completion_length=64",
                 "--set", "eval.episodes=4", "--set", "eval.max_completion_length=32"])
    assert code == 0
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["stages"]["sft"]["steps"] == 2 and summary["stages"]["grpo"]["steps"] == 1
    assert len(summary["stages"]["grpo"]["reward_curve"]) == 1
    assert set(summary["eval_before"]) == set(summary["eval_after"])
    model, tokenizer = load_tiny_model(summary["final_model"])
    assert tokenizer.chat_template == T.default_chat_template()


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", " b", "</answer>", "</search>", "<answer>", "x", "</text_search>"]),
                max_size=12))
def test_action_text_ends_at_the_first_stop(pieces: list[str]) -> None:
    tokenizer = _tokenizer()
    ids = tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    stops = get_dialect("mmsearch-r1").stop_sequences
    cut, _ = _cut_at_stop(tokenizer, ids, None, stops, 100)
    text = _action_text(tokenizer, cut, stops)
    full = "".join(pieces)
    ends = [full.find(s) + len(s) for s in stops if s in full]
    assert text == (full[:min(ends)] if ends else full)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", " b", "</answer>", "</search>", "<answer>", "x", "</text_search>"]),
                max_size=12))
def test_cut_turn_gives_the_cut_tokens_and_their_action_text(pieces: list[str]) -> None:
    tokenizer = _tokenizer()
    ids = tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    stops = get_dialect("mmsearch-r1").stop_sequences
    cut, _, text = _cut_turn(tokenizer, ids, None, stops, 100)
    assert cut == _cut_at_stop(tokenizer, ids, None, stops, 100)[0]
    assert text == _action_text(tokenizer, cut, stops)


_TOKENIZER: list[Any] = []


def _tokenizer() -> Any:
    if not _TOKENIZER:
        from mmsearch_gym.integrations.tiny_models import build_tokenizer
        _TOKENIZER.append(build_tokenizer(["a b x"], chat_template=T.default_chat_template(), vocab_size=300))
    return _TOKENIZER[0]


def test_tiny_tokenizer_keeps_tags_whole() -> None:
    tokenizer = _tokenizer()
    for tag in TAG_TOKENS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.chat_template == T.default_chat_template()


def test_episode_metrics() -> None:
    from mmsearch_gym.metrics import EpisodeResult
    from mmsearch_gym.reward import RewardBreakdown

    breakdowns = [RewardBreakdown(reward=0.91, score=0.91, raw_score=1.0, format=1.0, searches=1, image_searches=1,
                                  text_searches=0, penalty=0.09, answer="France"),
                  RewardBreakdown(reward=0.0, score=0.0, raw_score=0.0, format=0.0, searches=0, image_searches=0,
                                  text_searches=0, penalty=0.0, answer=None)]
    results = [EpisodeResult(0, "t0", "crop", breakdowns[0], image_searches=1, text_searches=0, turns=2,
                             answered=True, last_search="image"),
               EpisodeResult(1, "t2", "search_free", breakdowns[1], image_searches=0, text_searches=0, turns=1)]
    metrics = T.episode_metrics(results)
    assert metrics["mmsearch/accuracy"] == 0.5 and metrics["mmsearch/search_ratio"] == 0.5
    assert metrics["mmsearch/image_search_calls"] == 0.5 and metrics["mmsearch/env_reward"] == pytest.approx(0.455)
    with pytest.raises(ConfigError):
        T.env_reward([], [])


def test_tiny_vlm_plays_through_transformers_policy(tmp_path: Path) -> None:
    """`mmsearch-gym eval --policy transformers:DIR` loads a tiny VLM (its processor is image-only)."""
    from fixture_world import play_policy

    from mmsearch_gym.integrations.transformers_policy import TransformersPolicy
    from mmsearch_gym.policies import make_policy

    path = T.make_tiny_model(tmp_path / "vlm", kind="vlm", tasks=make_tasks(), vocab_size=400, image_side=84)
    policy = make_policy(f"transformers:{path}", max_new_tokens=6)
    assert isinstance(policy, TransformersPolicy) and policy.is_vlm
    assert policy.processor.image_processor.size["longest_edge"] == 84 * 84
    backend = make_backend()
    view, _, _ = play_policy(make_env("mmsearch-r1", backend), policy, 1)
    assert view.steps  # the random model acted on the image (its text is whatever it is)


def test_pretrain_copying_grows_induction(tmp_path: Path) -> None:
    from mmsearch_gym.integrations.tiny_models import pretrain_copying

    model, tokenizer = load_tiny_model(T.make_tiny_model(tmp_path / "lm", tasks=make_tasks(), vocab_size=400))
    curve = pretrain_copying(model, tokenizer, steps=150, batch_size=32, span=12)
    assert curve[0]["copy_accuracy"] < 0.1 and curve[-1]["copy_accuracy"] > 0.9
    assert [p["step"] for p in curve][:2] == [0, 25] and curve[-1]["step"] == 149
    with pytest.raises(ConfigError, match="span"):
        pretrain_copying(model, tokenizer, steps=1, span=1)
