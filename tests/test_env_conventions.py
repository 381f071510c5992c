"""MMSearchEnv's Gymnasium conventions: close(), info["messages"] modes, vector envs in an LLM loop."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult
from mmsearch_gym.registration import make_env
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.search.cache import SearchCache, summarize_cache
from mmsearch_gym.tasks import TaskSet

IMAGE = "<reason>r</reason><search><img></search>"
TEXT = "<reason>r</reason><text_search>france capital</text_search>"
ANSWER = "<reason>r</reason><answer>Paris</answer>"


class Closable(MemoryBackend):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_close_flushes_the_cache_counters_and_closes_the_backend(tiny_tasks: TaskSet, memory_backend: MemoryBackend,
                                                                  tmp_path: Path) -> None:
    cache = {"mode": "readthrough", "dir": str(tmp_path)}
    for expected in ((0, 2), (2, 2)):  # first run: two misses; second run: two hits
        env = make_env(tasks=tiny_tasks, backend=memory_backend, cache=cache)
        assert isinstance(env.backend, SearchCache)
        env.reset(options={"task_index": 1})
        env.step(IMAGE)
        env.step(TEXT)
        env.close()
        summary = summarize_cache(tmp_path)
        assert (summary.hits, summary.misses) == expected
    backend = Closable(text={}, default_text_hits=[], default_image_hits=[])
    env = MMSearchEnv(tiny_tasks, backend)
    env.close()
    env.close()
    assert backend.closed == 2  # closing twice is harmless
    env = make_env(tasks=tiny_tasks, backend=backend, cache={"mode": "readthrough", "dir": str(tmp_path / "c")})
    env.close()
    assert backend.closed == 3  # through the cache that wraps it (its HTTP sessions, for a web backend)


@pytest.mark.parametrize("mode", ["full", "delta", "off"])
def test_info_messages_modes(tiny_tasks: TaskSet, memory_backend: MemoryBackend, mode: str) -> None:
    full = MMSearchEnv(tiny_tasks, memory_backend)
    env = MMSearchEnv(tiny_tasks, memory_backend, info_messages=mode)  # type: ignore[arg-type]
    chat: list[dict[str, Any]] = []
    for game in (full, env):
        _, info = game.reset(seed=0, options={"task_index": 1})
        infos = [info] + [game.step(text)[-1] for text in (IMAGE, TEXT, ANSWER)]
        if game is full:
            expected = infos[-1]["messages"]
            continue
        if mode == "off":
            assert all("messages" not in i for i in infos)
        else:
            for i in infos:
                chat = i["messages"] if mode == "full" else chat + i["messages"]
            assert chat == expected
        assert EpisodeResult.from_info(infos[-1]) == EpisodeResult.from_info(full_end(full))
    with pytest.raises(ConfigError, match="info_messages"):
        MMSearchEnv(tiny_tasks, memory_backend, info_messages="some")  # type: ignore[arg-type]


def full_end(env: MMSearchEnv) -> dict[str, Any]:
    env.reset(seed=0, options={"task_index": 1})
    for text in (IMAGE, TEXT, ANSWER):
        info = env.step(text)[-1]
    return info


def _vector(tasks: TaskSet, backend: MemoryBackend, mode: AutoresetMode) -> SyncVectorEnv:
    make = functools.partial(make_env, tasks=tasks, backend=backend, info_messages="delta")
    return SyncVectorEnv([make, make], autoreset_mode=mode)


def _ended(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s info out of a vector env's batched info dict."""
    return {k: v[i] for k, v in info.items() if not k.startswith("_")}


def _policy(step: int, i: int) -> str:
    """Env 0 answers at once; env 1 searches the image, then answers."""
    return ANSWER if i == 0 or step % 2 == 1 else IMAGE


def test_same_step_autoreset_wastes_no_generation(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    """With SAME_STEP, the step that ends an episode already returns the next episode's first
    observation, so every action text the model generates is played."""
    envs = _vector(tiny_tasks, memory_backend, AutoresetMode.SAME_STEP)
    obs, info = envs.reset(seed=0)
    results: list[EpisodeResult] = []
    for step in range(4):
        texts = [_policy(step, i) for i in range(2)]
        obs, reward, terminated, truncated, info = envs.step(texts)
        for i in np.flatnonzero(terminated | truncated):
            ended = _ended(info["final_info"], int(i))
            results.append(EpisodeResult.from_info(ended))
            assert ended["reward_breakdown"].reward == reward[i]
            assert obs["text"][i] == info["question"][i]  # already the next episode's question
    assert [r.turns for r in results] == [1, 1, 2, 1, 1, 2]  # 4 steps x 2 envs = 8 turns, all played
    envs.close()


def test_disabled_autoreset_resets_only_the_finished_envs(tiny_tasks: TaskSet,
                                                          memory_backend: MemoryBackend) -> None:
    envs = _vector(tiny_tasks, memory_backend, AutoresetMode.DISABLED)
    envs.reset(seed=0)
    played = 0
    for step in range(4):
        _, _, terminated, truncated, info = envs.step([_policy(step, i) for i in range(2)])
        played += 2
        done = terminated | truncated
        for i in np.flatnonzero(done):
            assert EpisodeResult.from_info(_ended(info, int(i))).answered
        if done.any():
            envs.reset(options={"reset_mask": done})
    assert played == 8
    envs.close()
