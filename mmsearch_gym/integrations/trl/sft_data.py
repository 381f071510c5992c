"""SFT cold start: recorded teacher episodes -> chat transcripts for TRL's SFTTrainer, rendered
exactly as the GRPO routes render them (tool results are never assistant turns)."""

from __future__ import annotations

import io
import json
import random
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from PIL import Image

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.policies import text_only_content
from mmsearch_gym.tasks import SEARCH_FREE

from .data import _system_prompt, _text_of
from .envs import EnvSource, env_factory
from .tool_env import _strip_tool_response, _tool_schemas

if TYPE_CHECKING:
    from mmsearch_gym.policies import Policy
    from mmsearch_gym.trajectories import Trajectory, Turn


def record_teacher(env: EnvSource, policy: str | Policy = "oracle", *, episodes: int | None = None,
                   path: str | Path, seed: int = 0, thumbnails: bool = False,
                   policy_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
                   **env_kwargs: Any) -> list[Trajectory]:
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


def _tool_call_text(action: Mapping[str, Any]) -> tuple[str, str] | None:
    """A tool-json action as Qwen renders a call of MMSearchToolEnv's tools: (name, text), else None."""
    if action.get("kind") == "text_search":
        name, arguments = "text_search", {"query": action["query"]}
    elif action.get("kind") == "image_search":
        region = action.get("region") or {}
        if region.get("kind") == "box" and region.get("box"):
            corners = (int(v) for v in region["box"])
            name, arguments = "image_search", dict(zip(("x1", "y1", "x2", "y2"), corners, strict=False))
        elif region.get("kind") == "whole":
            name, arguments = "image_search", {}
        else:
            return None
    else:
        return None
    return name, ('<tool_call>\n{"name": "' + name + '", "arguments": '
                  + json.dumps(arguments, ensure_ascii=False) + "}\n</tool_call>")


def _thumbnails(turn: Turn) -> list[Image.Image]:
    """The embedded result thumbnails of a recorded turn (record with ``embed_images=True``)."""
    return [Image.open(io.BytesIO(hit.thumbnail)).convert("RGB") for hit in turn.hits if hit.thumbnail]


def trajectory_messages(trajectory: Trajectory, renderer: MMSearchEnv, *, route: str = "rollout",
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


def build_sft_dataset(source: str | Path | Sequence[Trajectory] | None = None, *,
                      env: EnvSource, policy: str | Policy = "oracle",
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
    else:
        trajectories = _read(source)
    if only_correct:
        trajectories = [t for t in trajectories if t.reward.raw_score > 0.5 and t.reward.format > 0.5]
    if balance is not None:
        trajectories = _balance(trajectories, balance, seed)
    if not trajectories:
        raise DataError("no episodes left for SFT (none correct and format-valid?); "
                        "check the teacher policy or pass only_correct=False")
    return _chat_rows(trajectories, renderer, route=route, images=images, thumbnails=thumbnails,
                      system_prompt=system_prompt)


def _read(source: str | Path | Sequence[Trajectory]) -> list[Trajectory]:
    from mmsearch_gym.trajectories import read_trajectories

    return read_trajectories(source) if isinstance(source, (str, Path)) else list(source)


def _chat_rows(trajectories: Sequence[Trajectory], renderer: MMSearchEnv, *, route: str, images: bool,
               thumbnails: bool, system_prompt: str | None) -> datasets.Dataset:
    """One SFT row per episode: ``messages``, ``task_id``, ``category`` (+ ``images``, ``tools``)."""
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


def _balance(trajectories: list[Trajectory], share_free: float, seed: int) -> list[Trajectory]:
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
