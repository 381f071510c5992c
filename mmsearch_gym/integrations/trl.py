"""TRL adapter: train LLM policies on MMSearchEnv with GRPO, after an SFT cold start.

Two GRPO routes, both stepping the same ``MMSearchEnv`` (the env parses every turn, runs the
tools through its search backend and computes the papers' reward; this module never parses or
scores model text itself):

* ``rollout_func`` (:func:`make_rollout_func`), any tag dialect (``mmsearch-r1``,
  ``deepmmsearch-r1``, ``tool-json``). Multi-turn episodes are generated here: generate until a
  closing tag of the dialect, step the env, append the tool result as a user turn rendered with
  the chat template, go on until the episode ends. It returns ``prompt_ids``,
  ``completion_ids``, ``logprobs``, ``env_mask`` (1 on tokens the model sampled, 0 on tool
  results and the chat-template glue around them) and the env's rewards and breakdowns, which
  :func:`env_reward` hands to GRPO unchanged. Generation uses the trainer's unwrapped model, or
  TRL's vLLM helper (``trainer.vllm_generation``) when the trainer was configured with
  ``use_vllm=True``.
* ``environment_factory`` (:class:`MMSearchToolEnv`), the ``tool-json`` dialect through TRL's
  own tool-calling loop: ``text_search(query)`` and ``image_search(x1, y1, x2, y2)`` are tool
  methods that step the env; the final ``<answer>..</answer>`` arrives as the last assistant
  message and is stepped into the env by :func:`episode_accuracy` (a weight-0 reward function
  that also logs metrics), after which TRL's ``get_reward`` call reads the env's reward.

Datasets: :func:`to_dataset` (GRPO prompts, one row per task, ``task_id`` column so every member
of a group plays the same task) and :func:`build_sft_dataset` (chat transcripts of scripted
policies or recorded episodes, balanced 50:50 search-required / search-free, tool results
masked from the loss by TRL's ``assistant_only_loss``). :func:`train_recipe` runs the
``policies/*.json`` recipes (``sft``, ``grpo``, ``sft+grpo``).

This is the only module of the package that imports trl.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import gymnasium as gym
import torch
import trl
from PIL import Image
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, ProcessorMixin, TrainerCallback
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.chat_template_utils import add_response_schema, qwen2_5_chat_template, qwen3_vl_chat_template
from trl.models import unwrap_model_for_generation

from mmsearch_gym.actions import (Dialect, ImageSearch, Invalid, Region, TextSearch,
                                  get_dialect)
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.policies import text_only_content
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import SEARCH_FREE, TaskSet

__all__ = [
    "EnvFactory", "MMSearchRollout", "MMSearchToolEnv", "build_sft_dataset", "env_factory",
    "env_reward", "episode_accuracy", "episode_metrics", "evaluate_model", "hf_generate", "load_model",
    "make_grpo_trainer", "make_rollout_func", "make_sft_trainer", "make_tiny_model",
    "make_tool_env_factory", "prepare_tool_calling", "record_teacher", "to_dataset", "train_recipe",
    "trajectory_messages",
]

EnvFactory = Callable[[], MMSearchEnv]
"""A zero-argument callable returning a fresh MMSearchEnv (one per concurrent episode)."""

TRL_VERSION = trl.__version__

# =============================================================================================
# Environments
# =============================================================================================


def _clone_env(env: MMSearchEnv, tasks: TaskSet | None = None) -> MMSearchEnv:
    """A new env sharing ``env``'s backend, grounder, limits and (unless given) task set."""
    return MMSearchEnv(
        tasks if tasks is not None else env.tasks, env.backend, dialect=env.dialect, reward=env.reward_spec,
        grounder=env.grounder, max_turns=env.max_turns, image_search_budget=env.image_search_budget,
        text_search_budget=env.text_search_budget, top_k=env.top_k, on_invalid=env.on_invalid,
        image_size=env.image_size, min_crop_side=env.min_crop_side,
        max_text_length=env.max_text_length, system_prompt=env.system_prompt,
    )


def env_factory(env: str | MMSearchEnv | EnvFactory, *, categories: Sequence[str] | None = None,
                **env_kwargs: Any) -> EnvFactory:
    """Turn an env id (``"MMSearch-Train-v0"``), an env or a factory into an :data:`EnvFactory`.

    Envs made from an id or an instance share one task set and one search backend (so the disk
    cache and the backend's index are loaded once), and each call returns a fresh env (an
    instance you pass is copied, never stepped itself). ``categories`` keeps only the tasks of
    those categories.
    """
    if categories is not None:
        base = env_factory(env, **env_kwargs)()
        tasks = base.tasks.filter(lambda task: task.category in set(categories),
                                  name=f"{base.tasks.name}[{','.join(categories)}]")
        return env_factory(_clone_env(base, tasks))
    if isinstance(env, str):
        import mmsearch_gym  # noqa: F401  (registers the env ids)

        first = gym.make(env, **env_kwargs).unwrapped
        if not isinstance(first, MMSearchEnv):
            raise ConfigError(f"env {env!r} is not an MMSearchEnv")
        template = first
    elif isinstance(env, MMSearchEnv):
        if env_kwargs:
            raise ConfigError("env_kwargs only apply when the env is given by id")
        return lambda: _clone_env(env)
    elif callable(env):
        if env_kwargs:
            raise ConfigError("env_kwargs only apply when the env is given by id")
        return env
    else:
        raise ConfigError(f"env must be an env id, an MMSearchEnv or a factory, got {type(env).__name__}")
    handed_out = [False]

    def make() -> MMSearchEnv:
        if not handed_out[0]:
            handed_out[0] = True
            return template
        return _clone_env(template)

    return make


class _EnvPool:
    """Reusable envs: GRPO resets hundreds of episodes per step; envs are built only once."""

    def __init__(self, factory: EnvFactory) -> None:
        self.factory = factory
        self.envs: list[MMSearchEnv] = []

    def take(self, n: int) -> list[MMSearchEnv]:
        while len(self.envs) < n:
            env = self.factory()
            if not isinstance(env, MMSearchEnv):
                raise ConfigError(f"the env factory returned {type(env).__name__}, not an MMSearchEnv")
            self.envs.append(env)
        return self.envs[:n]

    def first(self) -> MMSearchEnv:
        return self.take(1)[0]


def _resolve_tasks(source: TaskSet | str, split: str | None) -> tuple[TaskSet, str | None]:
    """A TaskSet from a TaskSet, an env id (its spec's tasks) or a task source string."""
    from mmsearch_gym.registration import load_specs, resolve_tasks

    if isinstance(source, TaskSet):
        if split is not None:
            raise ConfigError("split only applies when the tasks come from an env id or the world")
        return source, None
    if not isinstance(source, str):
        raise ConfigError(f"tasks must be a TaskSet, an env id or 'world:SPLIT', got {type(source).__name__}")
    specs = {spec["id"]: spec for spec in load_specs()}
    if source in specs:
        kwargs = specs[source].get("kwargs", {})
        tasks = kwargs.get("tasks", "world:test")
        if split is not None:
            if isinstance(tasks, Mapping) and "world" in tasks:
                tasks = {**tasks, "world": split}
            elif isinstance(tasks, str) and tasks.startswith("world:"):
                tasks = f"world:{split}"
            else:
                raise ConfigError(f"env {source!r} does not read the built-in world; split= cannot apply")
        return resolve_tasks(tasks), kwargs.get("dialect")
    if split is not None:
        raise ConfigError(f"split only applies to env ids; got tasks {source!r}")
    return resolve_tasks(source), None


# =============================================================================================
# GRPO prompts
# =============================================================================================


def _prompt_renderer(tasks: TaskSet, dialect: Dialect) -> MMSearchEnv:
    """An env used only to render prompts: its reset() messages are the single source of prompts."""
    return MMSearchEnv(tasks, MemoryBackend(), dialect=dialect)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text") or "" for block in content if block.get("type") == "text")


def to_dataset(source: TaskSet | str, split: str | None = None, dialect: str | Dialect | None = None, *,
               images: bool = False, route: str = "rollout", n: int | None = None, seed: int = 0,
               shuffle: bool = False, system_prompt: str | None = None,
               categories: Sequence[str] | None = None) -> datasets.Dataset:
    """GRPO prompts for a task set, one row per task.

    Args:
        source: a TaskSet, an env id (``"MMSearch-Train-v0"``: its spec's task set) or a task
            source (``"world:train"``, ``"jsonl:PATH"``).
        split: with an env id, read this split of the built-in world instead of the spec's.
        dialect: prompt template; default: the env spec's dialect, else ``mmsearch-r1``.
        images: add the ``image`` column (the task image) that TRL feeds VLM processors. Leave
            it off for text-only models (TRL would hand the images to a tokenizer).
        route: ``"rollout"`` (the prompt carries the question) or ``"environment"`` (the user
            turn is left empty: :meth:`MMSearchToolEnv.reset` appends the question).
        n / seed / shuffle: keep the first ``n`` tasks (after a seeded shuffle if asked).
        system_prompt: replace the dialect's system prompt (e.g. a short one for tiny CPU
            models; use the same one for SFT).
        categories: keep only tasks of these categories.

    Columns: ``prompt`` (system + user turn; the user message also carries ``task_id`` so a
    ``rollout_func``, which sees only prompts, can reset the env on the right task),
    ``task_id``, ``answers`` and ``category`` (for logging), and ``image`` when asked.
    TRL repeats each row ``num_generations`` times, so a whole GRPO group plays one task.
    """
    if route not in ("rollout", "environment"):
        raise ConfigError(f"route must be 'rollout' or 'environment', got {route!r}")
    tasks, spec_dialect = _resolve_tasks(source, split)
    dialect_obj = get_dialect(dialect or spec_dialect or ("tool-json" if route == "environment" else "mmsearch-r1"))
    order = [i for i, task in enumerate(tasks) if categories is None or task.category in categories]
    if shuffle:
        random.Random(seed).shuffle(order)
    if n is not None:
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        order = order[:n]
    renderer = _prompt_renderer(tasks, dialect_obj)
    system = system_prompt if system_prompt is not None else _system_prompt(dialect_obj, route)
    rows: dict[str, list[Any]] = {"prompt": [], "task_id": [], "answers": [], "category": []}
    if images:
        rows["image"] = []
    for index in order:
        task = tasks[index]
        _, info = renderer.reset(options={"task_index": index})
        content = info["messages"][1]["content"]
        user_text = "" if route != "rollout" else _text_of(content) if images else text_only_content(content)
        rows["prompt"].append([
            {"role": "system", "content": system},
            {"role": "user", "content": user_text, "task_id": task.id},
        ])
        rows["task_id"].append(task.id)
        rows["answers"].append(list(task.answers))
        rows["category"].append(task.category)
        if images:
            rows["image"].append(task.load_image())
    return datasets.Dataset.from_dict(rows)  # PIL images become an Image feature


def _system_prompt(dialect: Dialect, route: str) -> str:
    """The dialect's system prompt; for TRL's tool route without the JSON tool list, which the
    chat template renders itself from the environment's methods."""
    prompt = dialect.system_prompt()
    if route == "environment" and dialect.name == "tool-json":
        start, end = prompt.find("# Tools\n<tools>"), prompt.find("</tools>\n")
        if start != -1 and end != -1:
            prompt = prompt[:start] + prompt[end + len("</tools>\n"):]
        # the route's image_search takes x1, y1, x2, y2 (TRL builds the schema from the method)
        prompt = prompt.replace("bbox_2d is [x1, y1, x2, y2] in pixels of the original image.",
                                "Crop boxes x1, y1, x2, y2 are in pixels of the original image.")
    return prompt


# =============================================================================================
# The rollout_func route
# =============================================================================================


@dataclass
class _Episode:
    """One rollout: token bookkeeping plus the env that plays it."""

    env: MMSearchEnv
    task_id: str
    prompt_ids: list[int]
    images: list[Image.Image] | None
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    """The tool-result texts that entered the completion (masked tokens), in order."""
    turns: list[str] = field(default_factory=list)
    steps: int = 0
    done: bool = False
    finished: bool = False
    """True when the env itself ended the episode (answer or limit), False when tokens ran out."""
    breakdown: RewardBreakdown | None = None
    tool_calls: dict[str, int] = field(default_factory=lambda: {"image_search": 0, "text_search": 0})
    """Searches the env ran (sent to its backend) in this episode."""
    invalid_turns: int = 0


class MMSearchRollout:
    """A TRL ``rollout_func`` playing multi-turn MMSearchEnv episodes (see :func:`make_rollout_func`)."""

    __name__ = "mmsearch_rollout"

    def __init__(self, env: str | MMSearchEnv | EnvFactory, *, dialect: str | Dialect | None = None,
                 max_turns: int | None = None, max_turn_tokens: int = 256,
                 generation_kwargs: Mapping[str, Any] | None = None, **env_kwargs: Any) -> None:
        self.pool = _EnvPool(env_factory(env, **env_kwargs))
        sample = self.pool.first()
        self.dialect = get_dialect(dialect) if dialect is not None else sample.dialect
        if self.dialect.name != sample.dialect.name:
            raise ConfigError(f"the rollout dialect {self.dialect.name!r} differs from the env's "
                              f"{sample.dialect.name!r}; build the env with dialect={self.dialect.name!r}")
        self.max_turns = max_turns if max_turns is not None else sample.max_turns
        if self.max_turns < 1 or max_turn_tokens < 1:
            raise ConfigError("max_turns and max_turn_tokens must be >= 1")
        self.max_turn_tokens = max_turn_tokens
        self.generation_kwargs = dict(generation_kwargs or {})
        self.last_episodes: list[_Episode] = []
        """The episodes of the latest call (tests and logging read them)."""
        self.total_env_steps = 0

    # -- the TRL entry point ------------------------------------------------------------------
    def __call__(self, prompts: list[list[dict[str, Any]]], trainer: GRPOTrainer) -> dict[str, Any]:
        use_vllm = bool(getattr(trainer, "use_vllm", False))
        if use_vllm:
            def generate(batch: list[_Episode], max_new: int) -> list[tuple[list[int], list[float] | None]]:
                return self._generate_vllm(trainer, batch)
        else:
            def generate(batch: list[_Episode], max_new: int) -> list[tuple[list[int], list[float] | None]]:
                with (unwrap_model_for_generation(
                        trainer.model_wrapped, trainer.accelerator,
                        gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                        generation_kwargs=trainer.generation_kwargs,
                        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as model,
                      torch.no_grad()):
                    return hf_generate(model, trainer.processing_class, batch, max_new,
                                       stops=self.dialect.stop_sequences,
                                       generation_config=trainer.generation_config,
                                       eos_token_ids=trainer.eos_token_ids, **self.generation_kwargs)
        episodes = self.play(prompts, trainer.processing_class, generate,
                             budget=int(trainer.max_completion_length))
        return self._output(episodes, use_vllm)

    def play(self, prompts: Sequence[Sequence[Mapping[str, Any]]], processing: Any,
             generate: Callable[[list[_Episode], int], list[tuple[list[int], list[float] | None]]],
             *, budget: int) -> list[_Episode]:
        """Play one episode per prompt with ``generate`` (a batch of episodes -> new token ids)."""
        tokenizer = _tokenizer_of(processing)
        envs = self.pool.take(len(prompts))
        episodes = []
        for prompt, env in zip(prompts, envs):
            task_id = _task_id_of(prompt)
            env.reset(options={"task_id": task_id})
            prompt_ids, images, vision = _encode_prompt(processing, prompt)
            episodes.append(_Episode(env=env, task_id=task_id, prompt_ids=prompt_ids, images=images,
                                     vision=vision))
        for _turn in range(self.max_turns):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            room = [budget - len(ep.completion_ids) for ep in active]
            max_new = max(1, min(self.max_turn_tokens, max(room)))
            outputs = generate(active, max_new)
            for ep, left, (ids, logps) in zip(active, room, outputs):
                ids, logps = _cut_at_stop(tokenizer, ids, logps, self.dialect.stop_sequences,
                                          min(left, self.max_turn_tokens))
                self._advance(ep, ids, logps, tokenizer, processing, budget)
        for ep in episodes:
            if not ep.done:  # out of turns on our side: the env decides what the episode earned
                self._close(ep, tokenizer, finished=False)
        self.last_episodes = episodes
        return episodes

    # -- one turn -------------------------------------------------------------------------
    def _advance(self, ep: _Episode, ids: list[int], logps: list[float] | None,
                 tokenizer: PreTrainedTokenizerBase, processing: Any, budget: int) -> None:
        ep.completion_ids += ids
        ep.env_mask += [1] * len(ids)
        ep.logprobs += logps if logps is not None else [0.0] * len(ids)
        text = _action_text(tokenizer, ids, self.dialect.stop_sequences)
        ep.turns.append(text)
        _obs, _reward, terminated, truncated, info = ep.env.step(text)
        ep.steps += 1
        self.total_env_steps += 1
        action = info.get("action")
        ep.tool_calls = _searches_run(info)
        if isinstance(action, Invalid):
            ep.invalid_turns += 1
        if terminated or truncated:
            ep.breakdown = info["reward_breakdown"]
            self._close(ep, tokenizer, finished=True)
            return
        result = text_only_content(info["messages"][-1]["content"])  # as SFT renders recorded results
        glue = _tool_turn_ids(processing, result, ends_with_eos=bool(ids) and ids[-1] == tokenizer.eos_token_id)
        if len(ep.completion_ids) + len(glue) >= budget:
            self._close(ep, tokenizer, finished=False)
            return
        ep.observations.append(result)
        ep.completion_ids += glue
        ep.env_mask += [0] * len(glue)
        ep.logprobs += [0.0] * len(glue)

    def _close(self, ep: _Episode, tokenizer: PreTrainedTokenizerBase, *, finished: bool) -> None:
        if ep.breakdown is None:
            ep.breakdown = ep.env.score()
        if finished and ep.completion_ids and ep.completion_ids[-1] != tokenizer.eos_token_id:
            # the chat template's end of turn: not sampled, so masked; it tells TRL the
            # completion ended (otherwise it counts as clipped)
            ep.completion_ids.append(tokenizer.eos_token_id)
            ep.env_mask.append(0)
            ep.logprobs.append(0.0)
        ep.finished = finished
        ep.done = True

    # -- generation backends ----------------------------------------------------------------
    def _generate_vllm(self, trainer: GRPOTrainer,
                       batch: list[_Episode]) -> list[tuple[list[int], list[float] | None]]:
        """One turn through TRL's vLLM helper (server or colocate mode); untested here (no GPU).

        TRL syncs the weights before calling the rollout function; we only add the dialect's
        stop strings to its sampling parameters and generate one continuation per episode.
        """
        generation = trainer.vllm_generation
        generation.generation_kwargs.setdefault("stop", list(self.dialect.stop_sequences))
        generation.generation_kwargs.setdefault("include_stop_str_in_output", True)
        seqs = [ep.prompt_ids + ep.completion_ids for ep in batch]
        images = [ep.images for ep in batch] if any(ep.images for ep in batch) else None
        _, completion_ids, logprobs, _ = generation.generate(prompts=seqs, images=images, num_generations=1)
        out = []
        for ids, lps in zip(completion_ids, logprobs or [None] * len(completion_ids)):
            flat = None if lps is None else [float("nan") if lp[0] is None else float(lp[0]) for lp in lps]
            out.append((list(ids), flat))
        return out

    # -- output ---------------------------------------------------------------------------
    def _output(self, episodes: list[_Episode], use_vllm: bool) -> dict[str, Any]:
        return {
            "prompt_ids": [ep.prompt_ids for ep in episodes],
            "completion_ids": [ep.completion_ids for ep in episodes],
            "logprobs": [ep.logprobs for ep in episodes] if use_vllm else None,
            "env_mask": [ep.env_mask for ep in episodes],
            "env_task_id": [ep.task_id for ep in episodes],
            "env_reward": [float(ep.breakdown.reward) for ep in episodes],  # type: ignore[union-attr]
            "reward_breakdown": [ep.breakdown.to_json() for ep in episodes],  # type: ignore[union-attr]
            "env_steps": [ep.steps for ep in episodes],
            "env_turns": [list(ep.turns) for ep in episodes],
            "env_observations": [list(ep.observations) for ep in episodes],
            "env_tool_calls": [dict(ep.tool_calls) for ep in episodes],
            "env_invalid_turns": [ep.invalid_turns for ep in episodes],
            "episode_finished": [ep.finished for ep in episodes],
        }


def _searches_run(info: Mapping[str, Any]) -> dict[str, int]:
    """The searches the env has sent to its backend so far in this episode (its own counters)."""
    return {"image_search": int(info["image_searches"]), "text_search": int(info["text_searches"])}


def make_rollout_func(env: str | MMSearchEnv | EnvFactory, dialect: str | Dialect | None = None,
                      max_turns: int | None = None, *, max_turn_tokens: int = 256,
                      generation_kwargs: Mapping[str, Any] | None = None,
                      **env_kwargs: Any) -> MMSearchRollout:
    """A TRL ``rollout_func(prompts, trainer) -> dict`` that plays MMSearchEnv episodes.

    Args:
        env: env id, env instance or factory (one env per concurrent episode; envs share the
            task set and backend). The dataset must come from :func:`to_dataset` on the same
            tasks (prompts carry the ``task_id`` the env is reset with).
        dialect: must match the env's dialect (default: the env's).
        max_turns: assistant turns per episode on our side (default: the env's limit, which
            truncates the episode itself).
        max_turn_tokens: new tokens per turn; the whole completion is bounded by the trainer's
            ``max_completion_length`` (an episode that runs out is scored as the env would score
            it if it ended there).
        generation_kwargs: extra ``generate()`` arguments for the transformers backend.

    The returned dict has ``prompt_ids``, ``completion_ids``, ``logprobs`` (vLLM only, else
    None), ``env_mask`` and the extra keys ``env_task_id``, ``env_reward``, ``reward_breakdown``, ``env_steps``,
    ``env_turns``, ``env_observations``, ``env_tool_calls``, ``env_invalid_turns`` and
    ``episode_finished`` which TRL passes to the reward functions (see :func:`env_reward`).
    """
    return MMSearchRollout(env, dialect=dialect, max_turns=max_turns, max_turn_tokens=max_turn_tokens,
                           generation_kwargs=generation_kwargs, **env_kwargs)


# ---- token helpers -----------------------------------------------------------------------


def _tokenizer_of(processing: Any) -> PreTrainedTokenizerBase:
    return processing.tokenizer if isinstance(processing, ProcessorMixin) else processing


def _task_id_of(prompt: Sequence[Mapping[str, Any]]) -> str:
    for message in prompt:
        task_id = message.get("task_id")
        if task_id:
            return str(task_id)
    raise DataError("a GRPO prompt carries no task_id: build the dataset with "
                    "mmsearch_gym.integrations.trl.to_dataset (its user message holds the task id)")


def _clean_messages(prompt: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _encode_prompt(processing: Any, prompt: Sequence[Mapping[str, Any]]
                   ) -> tuple[list[int], list[Image.Image] | None, dict[str, torch.Tensor]]:
    """Token ids of the chat prompt (with generation prompt), its images and vision tensors."""
    messages = _clean_messages(prompt)
    if isinstance(processing, ProcessorMixin):
        images = [block["image"] for m in messages if isinstance(m["content"], list)
                  for block in m["content"] if block.get("type") == "image" and block.get("image") is not None]
        out = processing.apply_chat_template([messages], add_generation_prompt=True, tokenize=True,
                                             return_dict=True, return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        vision = {k: v for k, v in out.items() if k in ("pixel_values", "image_grid_thw")}
        return ids, images or None, vision
    ids = processing.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return list(ids), None, {}


def _batch_vision(batch: Sequence[_Episode], device: Any) -> dict[str, torch.Tensor]:
    if not any(ep.vision for ep in batch):
        return {}
    return {
        "pixel_values": torch.cat([ep.vision["pixel_values"] for ep in batch]).to(device),
        "image_grid_thw": torch.cat([ep.vision["image_grid_thw"] for ep in batch]).to(device),
    }


def hf_generate(model: Any, processing: Any, batch: Sequence[_Episode], max_new: int, *,
                stops: Sequence[str], generation_config: Any = None,
                eos_token_ids: Sequence[int] | None = None,
                **generate_kwargs: Any) -> list[tuple[list[int], None]]:
    """One turn for a batch of episodes with ``model.generate`` (left-padded, stop strings)."""
    tokenizer = _tokenizer_of(processing)
    seqs = [ep.prompt_ids + ep.completion_ids for ep in batch]
    width = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attention[row, width - len(seq):] = 1
    inputs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    inputs.update(_batch_vision(batch, device))
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    config.max_new_tokens = max_new
    config.stop_strings = list(stops)
    for key, value in generate_kwargs.items():
        setattr(config, key, value)
    kwargs: dict[str, Any] = {"generation_config": config, "tokenizer": tokenizer}
    out = model.generate(**inputs, **kwargs)
    eos = set(eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id])
    results: list[tuple[list[int], None]] = []
    for ids in out[:, width:].cpu().tolist():
        cut = next((i + 1 for i, tok in enumerate(ids) if tok in eos), len(ids))
        results.append((ids[:cut], None))
    return results


_SENTINEL = "\x00MMSEARCH_TURN\x00"


def _tool_turn_ids(processing: Any, result: str, *, ends_with_eos: bool) -> list[int]:
    """Tokens between one assistant turn and the next: end of turn, the tool-result user turn,
    and the next assistant header, exactly as the chat template renders them."""
    tokenizer = _tokenizer_of(processing)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": _SENTINEL}, {"role": "user", "content": result},
    ]
    if isinstance(processing, ProcessorMixin):
        messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    text = processing.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(text, list):
        text = text[0]
    glue = text[text.index(_SENTINEL) + len(_SENTINEL):]
    ids = tokenizer(glue, add_special_tokens=False)["input_ids"]
    if ends_with_eos and ids and ids[0] == tokenizer.eos_token_id:
        ids = ids[1:]
    return ids


def _cut_at_stop(tokenizer: PreTrainedTokenizerBase, ids: list[int], logps: list[float] | None,
                 stops: Sequence[str], limit: int) -> tuple[list[int], list[float] | None]:
    """Keep tokens up to (and including) the one that completes the first stop string."""
    ids = ids[:max(0, limit)]
    if logps is not None:
        logps = logps[:len(ids)]
    text = ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        if any(stop in text for stop in stops):
            ids = ids[:i + 1]
            return ids, (logps[:i + 1] if logps is not None else None)
    return ids, logps


def _action_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: Sequence[str]) -> str:
    """The text the env is stepped with: the decoded turn, ending at its first closing tag."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return text[:min(ends)] if ends else text


# =============================================================================================
# Reward functions (they read the env's rewards; nothing is re-scored here)
# =============================================================================================


def episode_metrics(breakdowns: Sequence[Mapping[str, Any]],
                    tool_calls: Sequence[Mapping[str, int]] | None = None) -> dict[str, float]:
    """Batch means of the papers' evaluation numbers, from the env's reward breakdowns."""
    n = max(1, len(breakdowns))
    metrics = {
        "mmsearch/accuracy": sum(b["raw_score"] > 0.5 for b in breakdowns) / n,
        "mmsearch/search_ratio": sum(b["searches"] > 0 for b in breakdowns) / n,
        "mmsearch/format_rate": sum(b["format"] > 0.5 for b in breakdowns) / n,
        "mmsearch/image_search_calls": sum(b["image_searches"] for b in breakdowns) / n,
        "mmsearch/text_search_calls": sum(b["text_searches"] for b in breakdowns) / n,
        "mmsearch/env_reward": sum(b["reward"] for b in breakdowns) / n,
    }
    if tool_calls is not None:
        metrics["mmsearch/executed_image_searches"] = sum(t.get("image_search", 0) for t in tool_calls) / n
        metrics["mmsearch/executed_text_searches"] = sum(t.get("text_search", 0) for t in tool_calls) / n
    return metrics


def _log(kwargs: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        for name, value in metrics.items():
            log_metric(name, float(value))


def env_reward(prompts: list[Any], completions: list[Any], env_reward: list[float] | None = None,
               reward_breakdown: list[Mapping[str, Any]] | None = None, **kwargs: Any) -> list[float]:
    """GRPO reward of the rollout route: the env's episode reward, as the env computed it.

    Also logs accuracy, search ratio, format rate and calls per tool through TRL's
    ``log_metric`` (they appear next to ``reward`` in the trainer logs).
    """
    if env_reward is None or reward_breakdown is None:
        raise ConfigError("env_reward reads the env rewards of mmsearch_gym's rollout_func; "
                          "pass rollout_func=make_rollout_func(...) to GRPOTrainer")
    _log(kwargs, episode_metrics(reward_breakdown, kwargs.get("env_tool_calls")))
    return [float(r) for r in env_reward]


# =============================================================================================
# The environment_factory route
# =============================================================================================


class MMSearchToolEnv:
    """One MMSearchEnv episode behind TRL's ``environment_factory`` tool-calling loop.

    TRL builds one instance per rollout, calls :meth:`reset` with the dataset row, exposes the
    public methods :meth:`text_search` and :meth:`image_search` as JSON tools (their docstrings
    become the schemas), and calls :meth:`get_reward` after the rollout. Each tool call is one
    env step in the ``tool-json`` dialect; the final assistant message (the ``<answer>``) is
    stepped in by ``_finish`` (private: TRL turns every public method into a tool), which
    :func:`episode_accuracy` calls for every rollout before TRL asks for the reward.
    """

    _factory: EnvFactory | None = None
    _vision: bool = False

    def __init__(self) -> None:
        if type(self)._factory is None:
            raise ConfigError("use make_tool_env_factory(...) to build MMSearchToolEnv classes")
        self._env = type(self)._factory()  # type: ignore[misc]
        if self._env.dialect.name != "tool-json":
            raise ConfigError("the environment_factory route needs an env with dialect='tool-json'")
        self._done = True
        self._breakdown: RewardBreakdown | None = None
        self.steps = 0
        self.observations: list[str] = []
        self.tool_calls = {"image_search": 0, "text_search": 0}
        self.final_text: str | None = None

    @property
    def env(self) -> MMSearchEnv:
        return self._env

    def reset(self, **row: Any) -> str:
        """Start the episode on the row's task; returns the question for the user turn."""
        task_id = row.get("task_id")
        if task_id is None:
            raise DataError("the dataset row has no task_id column; build it with to_dataset(..., route='environment')")
        _, info = self._env.reset(options={"task_id": str(task_id)})
        self._done = False
        self._breakdown = None
        self.steps = 0
        self.observations = []
        self.tool_calls = {"image_search": 0, "text_search": 0}
        self.final_text = None
        content = info["messages"][1]["content"]  # a VLM gets the image from the dataset's column
        return _text_of(content) if type(self)._vision else text_only_content(content)

    def text_search(self, query: str) -> str:
        """Search the web for text and return summaries of the top pages.

        Args:
            query: The search query, e.g. the name of what the image shows plus the fact asked for.
        """
        return self._call(self._env.dialect.format(TextSearch(query)) if query.strip()
                          else _raw_call("text_search", {"query": query}))

    def image_search(self, x1: int | None = None, y1: int | None = None, x2: int | None = None,
                     y2: int | None = None) -> Any:
        """Reverse image search with the whole image, or with a crop when a box is given.

        Args:
            x1: Left edge of the crop in pixels of the original image (omit all four for the whole image).
            y1: Top edge of the crop in pixels.
            x2: Right edge of the crop in pixels.
            y2: Bottom edge of the crop in pixels.
        """
        coords = (x1, y1, x2, y2)
        if all(v is None for v in coords):
            text = self._env.dialect.format(ImageSearch(Region.whole()))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coords) \
                and x1 < x2 and y1 < y2:  # type: ignore[operator]
            text = self._env.dialect.format(ImageSearch(Region.from_box(*coords)))  # type: ignore[arg-type]
        else:  # the env turns a partial or reversed box into Invalid feedback
            text = _raw_call("image_search", {"bbox_2d": list(coords)})
        return self._call(text, image_results=True)

    def _call(self, turn_text: str, image_results: bool = False) -> Any:
        if self._done:
            return "The episode is over: no more tool calls. Give your final answer as <answer>answer</answer>."
        _obs, _r, terminated, truncated, info = self._env.step(turn_text)
        self.steps += 1
        self.tool_calls = _searches_run(info)
        if terminated or truncated:
            self._done = True
            self._breakdown = info["reward_breakdown"]
        last = info["messages"][-1]
        if last["role"] != "user":  # the env ended the episode without a result turn
            return "The episode is over. Give your final answer as <answer>answer</answer>."
        result = _strip_tool_response(text_only_content(last["content"]))  # as SFT renders recorded results
        self.observations.append(result)
        images = [b["image"] for b in last["content"] if b.get("type") == "image" and b.get("image") is not None]
        if image_results and type(self)._vision and images:
            return [{"type": "text", "text": result}] + [{"type": "image", "image": im} for im in images]
        return result

    def _finish(self, final_text: str | None) -> None:
        """Step the final assistant text (the answer) into the env, once, if it is still running.

        None (the rollout ended on a tool call, e.g. at TRL's ``max_tool_calling_iterations``)
        steps nothing: the env scores the turns it saw (no answer, so no correctness).
        """
        if self._done:
            return
        if final_text is None:
            self._done = True
            return
        self.final_text = final_text
        _obs, _r, terminated, truncated, info = self._env.step(self.final_text)
        self.steps += 1
        if terminated or truncated:
            self._breakdown = info["reward_breakdown"]
        self._done = True

    @property
    def breakdown(self) -> RewardBreakdown:
        """The env's reward breakdown (of the turns so far if the episode never ended)."""
        return self._breakdown if self._breakdown is not None else self._env.score()

    def get_reward(self) -> float:
        """The env's episode reward (TRL adds it to the GRPO reward with weight 1)."""
        return float(self.breakdown.reward)


def _raw_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A tool-call turn for arguments the dialect cannot format (the env reports them invalid)."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) + "</tool_call>"


def _strip_tool_response(text: str) -> str:
    """The env's tool-json result without its ``<tool_response>`` wrapper, which the chat
    template adds back around tool messages (so the rendered turn is the env's text exactly)."""
    head, tail = "<tool_response>\n", "\n</tool_response>"
    if text.startswith(head) and text.endswith(tail):
        return text[len(head):-len(tail)]
    return text


def make_tool_env_factory(env: str | MMSearchEnv | EnvFactory, *, vision: bool = False,
                          **env_kwargs: Any) -> type[MMSearchToolEnv]:
    """An ``environment_factory`` for GRPOTrainer: a MMSearchToolEnv subclass bound to ``env``.

    ``vision=True`` makes image_search return the result thumbnails as image content blocks
    (for VLM processors); text models get the results as text.
    """
    factory = env_factory(env, **env_kwargs)
    return type("MMSearchToolEnv", (MMSearchToolEnv,), {"_factory": staticmethod(factory), "_vision": bool(vision)})


def _final_assistant_text(completion: Any) -> str | None:
    """The last assistant message's text when it ends the rollout (None if it is a tool call)."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            if message.get("tool_calls"):
                return None
            return _text_of(message.get("content") or "")
    return None


def episode_accuracy(prompts: list[Any], completions: list[Any], environments: list[Any] | None = None,
                     **kwargs: Any) -> list[float]:
    """Weight-0 reward function of the tool route: finishes each episode, logs metrics.

    It steps each rollout's final assistant message into its env (so the env scores the
    answer), logs accuracy, search ratio, format rate and tool calls, and returns the
    correctness score for logging (give it weight 0: the GRPO reward is the env's, from
    ``get_reward``). TRL calls synchronous reward functions in order before the
    environment's ``get_reward``.
    """
    if environments is None:
        raise ConfigError("episode_accuracy belongs to the environment_factory route")
    for environment, completion in zip(environments, completions):
        if isinstance(environment, MMSearchToolEnv):
            environment._finish(_final_assistant_text(completion))
    breakdowns = [e.breakdown.to_json() for e in environments]
    _log(kwargs, episode_metrics(breakdowns, [e.tool_calls for e in environments]))
    return [float(b["raw_score"]) for b in breakdowns]


def prepare_tool_calling(processing: Any) -> Any:
    """Give Qwen2.5-VL processors the Qwen response parser (TRL 1.16 only knows it for Qwen2.5,
    Qwen3 and Qwen3-VL templates, and Qwen2.5-VL emits the same ``<tool_call>`` JSON)."""
    tokenizer = _tokenizer_of(processing)
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        try:
            add_response_schema(processing)
        except ValueError:
            from trl.chat_template_utils import qwen3_template
            tokenizer.response_template = qwen3_template
    return processing


# =============================================================================================
# SFT cold start: recorded episodes -> chat transcripts
# =============================================================================================


def record_teacher(env: str | MMSearchEnv | EnvFactory, policy: Any = "oracle", *, episodes: int | None = None,
                   path: str | Path, seed: int = 0, thumbnails: bool = False,
                   policy_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
                   **env_kwargs: Any) -> list[Any]:
    """Play a teacher policy with :func:`mmsearch_gym.evaluate.evaluate`, keep its trajectories.

    Episode ``i`` plays task ``i`` (the first ``episodes`` tasks). The trajectories (the
    project's JSON-lines format, :mod:`mmsearch_gym.trajectories`) are written to ``path`` and
    returned; ``thumbnails`` embeds the result thumbnails (for VLM SFT).
    """
    from mmsearch_gym.evaluate import evaluate
    from mmsearch_gym.trajectories import read_trajectories

    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} exists; record the teacher into a new file (evaluate appends to it)")
    factory = env_factory(env, **env_kwargs)
    evaluate(factory, policy, episodes=episodes, seed=seed, trajectories=path, progress=progress,
             embed_images=thumbnails, policy_kwargs=policy_kwargs)
    return read_trajectories(path)


def _tool_schemas() -> list[dict[str, Any]]:
    """The JSON schemas TRL renders for MMSearchToolEnv's tools (from their signatures and docstrings)."""
    import types

    from transformers.utils import get_json_schema

    holder = object()
    return [get_json_schema(types.MethodType(fn, holder))
            for fn in (MMSearchToolEnv.image_search, MMSearchToolEnv.text_search)]


def _tool_call_text(action: Mapping[str, Any]) -> tuple[str, str] | None:
    """A tool-json action as Qwen renders a call of MMSearchToolEnv's tools: (name, text), else None."""
    if action.get("kind") == "text_search":
        name, arguments = "text_search", {"query": action["query"]}
    elif action.get("kind") == "image_search":
        region = action.get("region") or {}
        if region.get("kind") == "box" and region.get("box"):
            name, arguments = "image_search", dict(zip(("x1", "y1", "x2", "y2"), (int(v) for v in region["box"])))
        elif region.get("kind") == "whole":
            name, arguments = "image_search", {}
        else:
            return None
    else:
        return None
    return name, ('<tool_call>\n{"name": "' + name + '", "arguments": '
                  + json.dumps(arguments, ensure_ascii=False) + "}\n</tool_call>")


def _thumbnails(turn: Any) -> list[Image.Image]:
    """The embedded result thumbnails of a recorded turn (record with ``embed_images=True``)."""
    return [Image.open(io.BytesIO(hit.thumbnail)).convert("RGB") for hit in turn.hits if hit.thumbnail]


def trajectory_messages(trajectory: Any, renderer: MMSearchEnv, *, route: str = "rollout",
                        vision: bool = False, thumbnails: bool = False, system_prompt: str | None = None
                        ) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """The chat of one recorded episode as the GRPO route renders it, plus its images in order.

    ``renderer`` is an env on the trajectory's task set: its ``reset`` gives the system and user
    turns (the single source of prompts). Assistant turns are the recorded action texts, tool
    results the recorded observations. For ``route="environment"`` tool calls become Qwen
    ``<tool_call>`` JSON of MMSearchToolEnv's tools and results become ``tool`` messages.
    """
    dialect = renderer.dialect
    _, info = renderer.reset(options={"task_id": trajectory.task_id})
    content = info["messages"][1]["content"]
    user_text = _text_of(content) if vision else text_only_content(content)
    images: list[Image.Image] = []
    task_blocks: list[dict[str, Any]] = []
    if vision:
        images.append(renderer.task.load_image())
        task_blocks.append({"type": "image", "text": None})

    def entry(role: str, text: str, blocks: Sequence[dict[str, Any]] = (), after: bool = True,
              name: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": role}
        if vision:
            text_block = {"type": "text", "text": text}
            message["content"] = [text_block, *blocks] if after else [*blocks, text_block]
        else:
            message["content"] = text
        if route == "environment":
            message["name"] = name
        return message

    system = system_prompt if system_prompt is not None else _system_prompt(dialect, route)
    messages = [entry("system", system),
                entry("user", user_text, task_blocks, after=False)]
    turns = list(trajectory.turns)
    for index, turn in enumerate(turns):
        text = turn.text
        tool: str | None = None
        if route == "environment":
            call = _tool_call_text(turn.action)
            if call is not None:  # keep the teacher's reasoning before the call
                reasoning = text[:text.find("<tool_call>")].strip() if "<tool_call>" in text else ""
                tool, text = call[0], (reasoning + "\n" if reasoning else "") + call[1]
        messages.append(entry("assistant", text))
        if index == len(turns) - 1 or not turn.observation:
            continue
        blocks = []
        if vision and thumbnails and turn.action.get("kind") == "image_search":
            shots = _thumbnails(turn)
            images.extend(shots)
            blocks = [{"type": "image", "text": None} for _ in shots]
        if route == "environment":
            if tool is None:
                raise DataError(f"trajectory of task {trajectory.task_id!r}: a tool result follows a turn that "
                                "is no tool call; the environment route needs tool-json episodes")
            messages.append(entry("tool", _strip_tool_response(turn.observation), blocks, name=tool))
        else:
            messages.append(entry("user", turn.observation, blocks))
    return messages, images


def build_sft_dataset(source: str | Path | Sequence[Any] | None = None, *,
                      env: str | MMSearchEnv | EnvFactory, policy: Any = "oracle",
                      episodes: int | None = None, balance: float | None = 0.5,
                      only_correct: bool = True, route: str = "rollout", images: bool = False,
                      thumbnails: bool = False, seed: int = 0, work_dir: str | Path | None = None,
                      system_prompt: str | None = None, policy_kwargs: Mapping[str, Any] | None = None,
                      progress: bool = True,
                      **env_kwargs: Any) -> datasets.Dataset:
    """A chat dataset for TRL's SFTTrainer (``assistant_only_loss=True``) from teacher episodes.

    Args:
        source: recorded trajectories (a JSON-lines path from ``mmsearch-gym eval
            --trajectories`` / :func:`record_teacher`, or a list of
            :class:`~mmsearch_gym.trajectories.Trajectory`). None: record them now by playing
            ``policy`` (default the oracle; ``"rag"`` works too) on the first ``episodes``
            tasks of ``env`` (for example ``"MMSearch-Train-v0"``).
        env: the env (id, instance or factory) whose tasks the episodes played; it renders the
            prompts and provides task images.
        balance: share of search-free episodes (DeepMMSearch-R1: 0.5, i.e. 50:50 with
            search-required ones); the larger group is subsampled (seeded). None keeps all.
        only_correct: keep only episodes the env scored correct and format-valid.
        route: ``"rollout"`` (tool results are user turns, as the tag dialects and the
            rollout_func route render them) or ``"environment"`` (tool-json episodes as Qwen
            tool calls and ``tool`` messages plus the ``tools`` column, exactly as TRL's
            environment route renders its prompts).
        images / thumbnails: for VLM processors, the task image (and image-search result
            thumbnails) in an ``images`` column, with matching ``{"type": "image"}``
            placeholders in the messages.
        work_dir: where recorded trajectories are written (default: a temporary folder).
        system_prompt: replace the dialect's system prompt (the same one as the GRPO dataset).

    Tool-result turns are never assistant turns, so TRL's assistant-only loss (the chat
    template's ``{% generation %}`` blocks) masks them: only the teacher's actions are learned.
    """
    import tempfile

    from mmsearch_gym.trajectories import read_trajectories

    if route not in ("rollout", "environment"):
        raise ConfigError(f"route must be 'rollout' or 'environment', got {route!r}")
    if route == "environment" and thumbnails:
        raise ConfigError("TRL 1.16's SFT collator fills image placeholders only outside tool messages; "
                          "use thumbnails=False with route='environment'")
    if balance is not None and not 0.0 < balance < 1.0:
        raise ConfigError(f"balance must be in (0, 1) or None, got {balance!r}")
    factory = env_factory(env, **env_kwargs)
    renderer = factory()
    if source is None:
        folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="mmsearch-sft-"))
        target = folder / "teacher.jsonl"
        target.unlink(missing_ok=True)  # our own scratch file from an earlier run
        trajectories = record_teacher(factory, policy, episodes=episodes, seed=seed, thumbnails=thumbnails,
                                      path=target, policy_kwargs=policy_kwargs, progress=progress)
    elif isinstance(source, (str, Path)):
        trajectories = read_trajectories(source)
    else:
        trajectories = list(source)
    if only_correct:
        trajectories = [t for t in trajectories if t.reward.raw_score > 0.5 and t.reward.format > 0.5]
    if balance is not None:
        trajectories = _balance(trajectories, balance, seed)
    if not trajectories:
        raise DataError("no episodes left for SFT (none correct and format-valid?); "
                        "check the teacher policy or pass only_correct=False")
    rows: dict[str, list[Any]] = {"messages": [], "task_id": [], "category": []}
    if images:
        rows["images"] = []
    if route == "environment":
        rows["tools"] = []
        tools = json.dumps(_tool_schemas(), ensure_ascii=False)
    for trajectory in trajectories:
        messages, row_images = trajectory_messages(trajectory, renderer, route=route, vision=images,
                                                   thumbnails=thumbnails, system_prompt=system_prompt)
        rows["messages"].append(messages)
        rows["task_id"].append(trajectory.task_id)
        rows["category"].append(trajectory.category)
        if images:
            rows["images"].append(row_images)
        if route == "environment":
            rows["tools"].append(tools)
    return datasets.Dataset.from_dict(rows)


def _balance(trajectories: list[Any], share_free: float, seed: int) -> list[Any]:
    """Subsample so that search-free episodes make ``share_free`` of the set (seeded)."""
    free = [t for t in trajectories if t.category == SEARCH_FREE]
    required = [t for t in trajectories if t.category != SEARCH_FREE]
    if not free or not required:
        raise DataError(f"cannot balance search-free/search-required episodes: got {len(free)} and "
                        f"{len(required)}; pass balance=None to keep them all")
    rng = random.Random(seed)
    rng.shuffle(free)
    rng.shuffle(required)
    total = min(len(free) / share_free, len(required) / (1.0 - share_free))
    n_free = max(1, int(round(total * share_free)))
    n_required = max(1, int(round(total * (1.0 - share_free))))
    chosen = free[:n_free] + required[:n_required]
    rng.shuffle(chosen)
    return chosen


# =============================================================================================
# Models, trainers, evaluation
# =============================================================================================


def default_chat_template(kind: str = "text") -> str:
    """TRL's bundled chat template for tiny models: Qwen2.5 (text) or Qwen3-VL (vision); TRL
    recognises both for tool calling and has training variants for assistant-only loss."""
    return qwen3_vl_chat_template if kind == "vlm" else qwen2_5_chat_template


def make_tiny_model(out_dir: str | Path, *, kind: str = "text", size: str = "tiny",
                    tasks: TaskSet | None = None, texts: Sequence[str] = (), vocab_size: int = 1024,
                    seed: int = 0, extra_tokens: Sequence[str] = (), image_side: int = 56) -> Path:
    """Build and save a random tiny model plus a tokenizer trained on the task texts (no hub).

    ``extra_tokens``: whole words kept as single tokens (see ``tiny_models.build_tokenizer``).
    ``image_side``: a VLM sees each image at about ``image_side``² pixels.
    """
    from mmsearch_gym.integrations.tiny_models import save_tiny_model

    corpus = list(texts)
    if tasks is not None:
        for task in tasks:
            corpus.append(task.question)
            corpus.extend(task.answers)
    return save_tiny_model(out_dir, chat_template=default_chat_template(kind), texts=corpus, kind=kind,
                           size=size, vocab_size=vocab_size, seed=seed, extra_tokens=extra_tokens,
                           image_side=image_side)


def load_model(spec: str | Path, *, model_kwargs: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """``(model, processing_class)`` from a local directory or a hub id (VLMs get a processor)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    if (path / "mmsearch_tiny.json").exists():
        from mmsearch_gym.integrations.tiny_models import load_tiny_model
        return load_tiny_model(path)
    kwargs = dict(model_kwargs or {})
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(str(spec))
    if getattr(config, "vision_config", None) is not None:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained(str(spec), padding_side="left")
        return AutoModelForImageTextToText.from_pretrained(str(spec), **kwargs), processor
    tokenizer = AutoTokenizer.from_pretrained(str(spec), padding_side="left")
    return AutoModelForCausalLM.from_pretrained(str(spec), **kwargs), tokenizer


def _is_vlm(processing: Any) -> bool:
    return isinstance(processing, ProcessorMixin)


def _config(cls: type, values: Mapping[str, Any] | Any, output_dir: Path, **defaults: Any) -> Any:
    if isinstance(values, cls):
        return values
    given = dict(values or {})
    if "gradient_checkpointing" in given:  # the deprecated name still wins over our default
        defaults.pop("activation_checkpointing", None)
    options = {**defaults, **given}
    options.setdefault("output_dir", str(output_dir))
    options.setdefault("report_to", [])
    options.setdefault("save_strategy", "no")
    options.setdefault("logging_steps", 1)
    if not torch.cuda.is_available():
        options.setdefault("use_cpu", True)
        options.setdefault("bf16", False)
    return cls(**options)


def make_sft_trainer(model: Any, processing: Any, dataset: datasets.Dataset, *,
                     args: SFTConfig | Mapping[str, Any] | None = None, output_dir: str | Path = "runs/sft",
                     callbacks: Sequence[TrainerCallback] = ()) -> SFTTrainer:
    """TRL's SFTTrainer with assistant-only loss (tool results never reach the loss)."""
    config = _config(SFTConfig, args, Path(output_dir), assistant_only_loss=True, max_length=2048,
                     activation_checkpointing=False, remove_unused_columns=not _is_vlm(processing))
    if not config.assistant_only_loss:
        raise ConfigError("SFT on search episodes needs assistant_only_loss=True (tool results must be masked)")
    if _is_vlm(processing) and "tools" in dataset.column_names:
        dataset = _inline_tools(dataset, processing)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processing,
                      callbacks=list(callbacks))


def _inline_tools(dataset: datasets.Dataset, processing: Any) -> datasets.Dataset:
    """Render the ``tools`` column into the system message with the processor's own template.

    TRL 1.16's vision SFT collator calls the chat template without ``tools``, while its GRPO
    environment route renders them: without this the SFT prompts would lack the tool block.
    """
    marker = "\x00SYSTEM\x00"

    def system_text(system: str, tools: str) -> str:
        rendered = processing.apply_chat_template(
            [{"role": "system", "content": [{"type": "text", "text": marker}]}], tools=json.loads(tools),
            tokenize=False)
        rendered = rendered[0] if isinstance(rendered, list) else rendered
        end = rendered.rfind(_tokenizer_of(processing).eos_token or "<|im_end|>")
        body = rendered[rendered.index(marker):end if end != -1 else None]
        return body.replace(marker, system)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        messages = [dict(m) for m in row["messages"]]
        first = messages[0]
        if first["role"] == "system":
            text = _text_of(first["content"])
            first["content"] = [{"type": "text", "text": system_text(text, row["tools"])}]
        return {"messages": messages}

    return dataset.map(convert, remove_columns=["tools"])


def make_grpo_trainer(model: Any, processing: Any, env: str | MMSearchEnv | EnvFactory,
                      dataset: datasets.Dataset, *, route: str = "rollout",
                      args: GRPOConfig | Mapping[str, Any] | None = None, output_dir: str | Path = "runs/grpo",
                      max_turn_tokens: int = 256, vision: bool | None = None,
                      callbacks: Sequence[TrainerCallback] = (), **env_kwargs: Any) -> GRPOTrainer:
    """A GRPOTrainer wired to MMSearchEnv through ``route`` (``"rollout"`` or ``"environment"``).

    The dataset comes from :func:`to_dataset` with the same ``route``. The reward is the env's:
    :func:`env_reward` for the rollout route; ``MMSearchToolEnv.get_reward`` (plus the weight-0
    :func:`episode_accuracy`, which steps the final answer and logs metrics) for the tool route.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    vision = _is_vlm(processing) if vision is None else vision
    if route == "rollout":
        rollout = make_rollout_func(env, max_turn_tokens=max_turn_tokens, **env_kwargs)
        config = _config(GRPOConfig, args, Path(output_dir), activation_checkpointing=False,
                         remove_unused_columns=False, reward_weights=[1.0])
        return GRPOTrainer(model=model, reward_funcs=[env_reward], args=config, train_dataset=dataset,
                           processing_class=processing, rollout_func=rollout, callbacks=list(callbacks))
    if route == "environment":
        factory = env_factory(env, **env_kwargs)
        environment_class = make_tool_env_factory(factory, vision=vision)
        probe = factory()
        config = _config(GRPOConfig, args, Path(output_dir), activation_checkpointing=False,
                         remove_unused_columns=False, reward_weights=[0.0],
                         max_tool_calling_iterations=probe.max_turns)
        prepare_tool_calling(processing)
        return GRPOTrainer(model=model, reward_funcs=[episode_accuracy], args=config, train_dataset=dataset,
                           processing_class=processing, environment_factory=environment_class,
                           callbacks=list(callbacks))
    raise ConfigError(f"route must be 'rollout' or 'environment', got {route!r}")


def evaluate_model(model: Any, processing: Any, env: str | MMSearchEnv | EnvFactory,
                   dataset: datasets.Dataset, *, batch_size: int = 16, max_completion_length: int = 512,
                   max_turn_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
                   seed: int = 0, progress: bool = True, **env_kwargs: Any) -> dict[str, Any]:
    """Play every prompt of a :func:`to_dataset` dataset once (greedy by default, else sampled
    at ``temperature``) and report the env's numbers: accuracy, search ratio, format rate, mean
    reward and calls per tool."""
    rollout = make_rollout_func(env, max_turn_tokens=max_turn_tokens, **env_kwargs)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    config = copy.deepcopy(model.generation_config)
    config.do_sample = do_sample
    config.temperature = temperature if do_sample else None
    config.top_p = config.top_k = None
    episodes: list[_Episode] = []
    prompts = dataset["prompt"]
    if "image" in dataset.column_names:
        prompts = [_with_image(p, im) for p, im in zip(prompts, dataset["image"])]
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="evaluating", disable=not progress):
            chunk = prompts[start:start + batch_size]

            def generate(batch: list[_Episode], max_new: int) -> list[tuple[list[int], None]]:
                with torch.no_grad():
                    return hf_generate(model, processing, batch, max_new, stops=rollout.dialect.stop_sequences,
                                       generation_config=config)

            episodes += rollout.play(chunk, processing, generate, budget=max_completion_length)
    finally:
        model.train(was_training)
    breakdowns = [ep.breakdown.to_json() for ep in episodes]  # type: ignore[union-attr]
    return {
        "metrics": episode_metrics(breakdowns, [ep.tool_calls for ep in episodes]),
        "episodes": [{"task_id": ep.task_id, "turns": ep.turns, "breakdown": b, "finished": ep.finished}
                     for ep, b in zip(episodes, breakdowns)],
    }


def _with_image(prompt: list[dict[str, Any]], image: Image.Image) -> list[dict[str, Any]]:
    """The prompt as TRL hands it to a VLM: the image block before the first user text."""
    out = []
    placed = False
    for message in prompt:
        message = dict(message)
        if message["role"] == "user" and not placed and isinstance(message["content"], str):
            message["content"] = [{"type": "image", "image": image}, {"type": "text", "text": message["content"]}]
            placed = True
        out.append(message)
    return out


# =============================================================================================
# Recipes (``mmsearch-gym train RECIPE``)
# =============================================================================================

_STAGES = {"sft": ("sft",), "grpo": ("grpo",), "sft+grpo": ("sft", "grpo")}
_RECIPE_KEYS = {"name", "description", "trainer", "model", "model_kwargs", "env", "categories", "route", "images",
                "system_prompt", "max_turn_tokens", "sft", "grpo", "grpo_tasks", "eval", "seed", "torch_threads"}


def _env_spec(spec: Any, what: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("id"), str):
        return spec["id"], dict(spec.get("kwargs") or {})
    raise ConfigError(f"recipe {what} must be an env id or {{'id': ..., 'kwargs': {{...}}}}, got {spec!r}")


def _recipe_system_prompt(value: Any, dialect: Dialect) -> str | None:
    """``null``: the dialect's prompt; ``"short"``: one line plus the dialect's action hint (for
    tiny CPU models, whose cost grows with every prompt token); any other string: itself."""
    if value is None:
        return None
    if value == "short":
        return "Answer the question. " + dialect.action_hint()
    if isinstance(value, str):
        return value
    raise ConfigError(f"system_prompt must be null, 'short' or a string, got {value!r}")


def _recipe_model(recipe: Mapping[str, Any], output_dir: Path, tasks: TaskSet,
                  sft_data: datasets.Dataset | None) -> tuple[Any, Any, Path | None]:
    spec = recipe.get("model")
    if isinstance(spec, Mapping) and "tiny" in spec:
        options = dict(spec["tiny"] or {})
        if options.pop("entity_tokens", False):  # the world's country names as single tokens
            from mmsearch_gym.world import load_knowledge
            options["extra_tokens"] = [n for entity in load_knowledge().countries() for n in entity.answers]
        texts: list[str] = []
        if sft_data is not None:
            for row in sft_data["messages"]:
                texts += [m["content"] if isinstance(m["content"], str) else _text_of(m["content"]) for m in row]
            if "tools" in sft_data.column_names:
                texts += list(sft_data["tools"][:1])
        path = make_tiny_model(output_dir / "init", tasks=tasks, texts=texts, **options)
        model, processing = load_model(path)
        return model, processing, path
    if isinstance(spec, (str, Path)):
        model, processing = load_model(spec, model_kwargs=recipe.get("model_kwargs"))
        return model, processing, None
    raise ConfigError(f"recipe model must be a path / hub id or {{'tiny': {{...}}}}, got {spec!r}")


def _save(model: Any, processing: Any, path: Path, tiny: Path | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    processing.save_pretrained(str(path))
    if tiny is not None:
        (path / "mmsearch_tiny.json").write_text((tiny / "mmsearch_tiny.json").read_text(encoding="utf-8"),
                                                 encoding="utf-8")
    return path


class _Progress(TrainerCallback):
    """Keeps the per-step logs (reward, loss, env metrics) for the recipe summary."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs:
            self.logs.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


def train_recipe(recipe: Mapping[str, Any], *, output_dir: Path) -> dict[str, Any]:
    """Run a training recipe (``policies/*.json``, trainer ``sft``, ``grpo`` or ``sft+grpo``).

    Recipe fields:

    * ``model``: a hub id / path, or ``{"tiny": {kind, size, vocab_size, seed, entity_tokens}}`` to
      build a random tiny model locally (``entity_tokens``: the world's country names become
      single tokens); ``model_kwargs`` (e.g. ``{"dtype": "bfloat16"}``);
    * ``env``: an id or ``{"id", "kwargs"}`` (the training tasks and tools); ``categories``
      keeps only these task categories; ``route``: ``rollout`` or ``environment``; ``images``:
      give VLMs the image column; ``system_prompt``: null, ``"short"`` or text;
      ``max_turn_tokens``;
    * ``sft``: SFTConfig fields plus ``teacher``, ``episodes``, ``balance``, ``thumbnails``,
      ``trajectories``; ``grpo``: GRPOConfig fields; ``grpo_tasks``: how many tasks GRPO
      samples from;
    * ``eval``: ``{"env", "episodes", "categories", "max_completion_length"}``, a greedy
      evaluation before and after training; ``torch_threads``: CPU threads (tiny models run
      faster on one); ``seed``.

    Writes checkpoints and ``summary.json`` under ``output_dir`` and returns the summary.
    """
    recipe = dict(recipe)
    trainer_kind = recipe.get("trainer")
    if trainer_kind not in _STAGES:
        raise ConfigError(f"the TRL integration's recipe trainer must be 'sft', 'grpo' or 'sft+grpo', "
                          f"got {trainer_kind!r}")
    unknown = sorted(set(recipe) - _RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"unknown recipe fields {unknown}; known: {sorted(_RECIPE_KEYS)}")
    stages = _STAGES[trainer_kind]
    if recipe.get("torch_threads"):
        torch.set_num_threads(int(recipe["torch_threads"]))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    seed = int(recipe.get("seed", 0))
    route = recipe.get("route", "rollout")
    images = bool(recipe.get("images", False))
    env_id, env_kwargs = _env_spec(recipe.get("env", "MMSearch-Train-v0"), "env")
    factory = env_factory(env_id, categories=recipe.get("categories"), **env_kwargs)
    base = factory()
    dialect = base.dialect
    system_prompt = _recipe_system_prompt(recipe.get("system_prompt"), dialect)
    max_turn_tokens = int(recipe.get("max_turn_tokens", 256))
    started = time.perf_counter()
    summary: dict[str, Any] = {"recipe": recipe.get("name"), "trainer": trainer_kind, "route": route,
                               "dialect": dialect.name, "env": env_id, "trl_version": TRL_VERSION,
                               "output_dir": str(output_dir), "stages": {}}

    sft_options = dict(recipe.get("sft") or {})
    sft_data = None
    if "sft" in stages:
        teacher = sft_options.pop("teacher", "oracle")
        sft_data = build_sft_dataset(
            sft_options.pop("trajectories", None), env=factory, policy=teacher,
            episodes=sft_options.pop("episodes", None), balance=sft_options.pop("balance", 0.5),
            route=route, images=images, thumbnails=bool(sft_options.pop("thumbnails", False)), seed=seed,
            system_prompt=system_prompt, work_dir=output_dir / "sft")
    model, processing, tiny = _recipe_model(recipe, output_dir, base.tasks, sft_data)

    eval_options = recipe.get("eval")
    eval_env = eval_data = None
    if eval_options:
        eval_id, eval_kwargs = _env_spec(eval_options.get("env", "MMSearch-v0"), "eval.env")
        eval_env = env_factory(eval_id, **eval_kwargs)
        eval_data = to_dataset(eval_env().tasks, dialect=dialect, images=images, n=eval_options.get("episodes"),
                               categories=eval_options.get("categories"), system_prompt=system_prompt)

        def evaluate_now() -> dict[str, float]:
            report = evaluate_model(model, processing, eval_env, eval_data,  # type: ignore[arg-type]
                                    max_completion_length=int(eval_options.get("max_completion_length", 512)),
                                    max_turn_tokens=max_turn_tokens)
            return report["metrics"]

        summary["eval_before"] = evaluate_now()

    if "sft" in stages:
        progress = _Progress()
        trainer = make_sft_trainer(model, processing, sft_data, args={"seed": seed, **sft_options},  # type: ignore[arg-type]
                                   output_dir=output_dir / "sft", callbacks=[progress])
        result = trainer.train()
        path = _save(trainer.model, processing, output_dir / "sft" / "final", tiny)
        summary["stages"]["sft"] = {"examples": len(sft_data), "steps": trainer.state.global_step,  # type: ignore[arg-type]
                                    "train_loss": float(result.training_loss), "path": str(path),
                                    "loss_curve": [log["loss"] for log in progress.logs if "loss" in log]}
        model = trainer.model

    if "grpo" in stages:
        grpo_options = dict(recipe.get("grpo") or {})
        grpo_options.setdefault("seed", seed)
        data = to_dataset(base.tasks, dialect=dialect, images=images, route=route, n=recipe.get("grpo_tasks"),
                          shuffle=True, seed=seed, system_prompt=system_prompt)
        progress = _Progress()
        trainer = make_grpo_trainer(model, processing, factory, data, route=route, args=grpo_options,
                                    output_dir=output_dir / "grpo", max_turn_tokens=max_turn_tokens,
                                    callbacks=[progress])
        result = trainer.train()
        path = _save(trainer.model, processing, output_dir / "grpo" / "final", tiny)
        steps = [log for log in progress.logs if "reward" in log]
        summary["stages"]["grpo"] = {
            "tasks": len(data), "steps": trainer.state.global_step, "train_loss": float(result.training_loss),
            "path": str(path), "reward_curve": [log["reward"] for log in steps],
            "accuracy_curve": [log.get("mmsearch/accuracy") for log in steps],
        }
        model = trainer.model

    if eval_options:
        summary["eval_after"] = evaluate_now()
    summary["final_model"] = str(_save(model, processing, output_dir / "final", tiny))
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str),
                                             encoding="utf-8")
    return summary
