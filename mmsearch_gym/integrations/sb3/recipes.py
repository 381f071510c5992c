"""Training PPO or DQN on the decision wrapper from a recipe (``mmsearch-gym train ppo-world``)."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from tqdm.auto import tqdm

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.env_factory import EnvFactory, unwrap_env
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult
from mmsearch_gym.search.base import SearchBackend
from mmsearch_gym.tasks import TaskSet

from .decision import DecisionConfig, FeatureCache
from .memo import MemoBackend, preload_images
from .policy import _ACTIVATIONS, _ALGORITHMS, SB3Policy, export_policy
from .wrapper import SearchDecisionEnv


def make_vec_env(env_factory: Callable[[], SearchDecisionEnv], n_envs: int, *, seed: int = 0,
                 vec_env: Literal["dummy", "subproc"] = "dummy") -> VecEnv:
    """``n_envs`` copies of a decision env in one VecEnv (SB3's ``make_vec_env``: each env in a
    ``Monitor`` for episode statistics), seeded ``seed, seed + 1, ...`` so a run is reproducible."""
    if n_envs < 1:
        raise ConfigError(f"n_envs must be >= 1, got {n_envs}")
    if vec_env not in ("dummy", "subproc"):
        raise ConfigError(f"vec_env must be 'dummy' or 'subproc', got {vec_env!r}")
    return sb3_make_vec_env(env_factory, n_envs=n_envs, seed=seed,
                            vec_env_cls=DummyVecEnv if vec_env == "dummy" else SubprocVecEnv)


class _ProgressBar(BaseCallback):
    """A tqdm bar over environment steps (SB3's own bar needs ``rich``)."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__()
        self._total = total
        self._enabled = enabled
        self._bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self._bar = tqdm(total=self._total, desc="sb3", unit="step", disable=not self._enabled)

    def _on_step(self) -> bool:
        if self._bar is not None:
            self._bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()


_RECIPE_KEYS = {"trainer", "name", "description", "env", "decision", "n_envs", "vec_env", "seed",
                "total_timesteps", "ppo", "dqn", "eval", "progress", "torch_threads"}
_ENV_KEYS = {"tasks", "backend", "dialect", "reward", "max_turns", "image_search_budget",
             "text_search_budget", "top_k", "image_size", "grounder", "preload_images", "memo_search"}


def _env_factory(env_cfg: Mapping[str, Any], tasks: TaskSet, backend: SearchBackend,
                 decision: DecisionConfig) -> Callable[[], SearchDecisionEnv]:
    """Decision envs over sibling MMSearchEnvs of the core :class:`EnvFactory` (one task set,
    backend and grounder for all) with one image feature cache."""
    from mmsearch_gym.registration import make_env

    kwargs = {k: v for k, v in env_cfg.items()
              if k not in ("tasks", "backend", "grounder", "preload_images", "memo_search")}
    if "image_size" in kwargs:
        kwargs["image_size"] = tuple(kwargs["image_size"])
    grounder = env_cfg.get("grounder", "annotations")
    if grounder not in ("annotations", None):
        raise ConfigError(f"env.grounder must be 'annotations' or null, got {grounder!r}")
    siblings = EnvFactory.create(functools.partial(make_env, tasks=tasks, backend=backend, grounder=grounder,
                                                   **kwargs)).siblings()
    features = FeatureCache()

    def make() -> SearchDecisionEnv:
        env = siblings.new()
        return SearchDecisionEnv(env, config=decision, grounder=unwrap_env(env).grounder, feature_cache=features)

    return make


def rollout_stats(policy: SB3Policy | BaseAlgorithm, env: SearchDecisionEnv, *,
                  episodes: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Greedy episodes on task 0..N-1 of the wrapped env, summed by :func:`summarise` (the
    evaluator's table: accuracy, search ratio, calls per tool ..., overall and per category). A
    quick check inside training; ``mmsearch_gym.evaluate`` is the reference evaluation."""
    model_policy = policy.policy if isinstance(policy, (SB3Policy, BaseAlgorithm)) else policy
    tasks = env.mmsearch_env.tasks
    n = len(tasks) if episodes is None else min(int(episodes), len(tasks))
    results: list[EpisodeResult] = []
    for index in tqdm(range(n), desc="eval", disable=not progress):
        obs, _ = env.reset(options={"task_index": index})
        while True:
            action, _ = model_policy.predict(obs[None], deterministic=True)
            obs, _, terminated, truncated, step_info = env.step(int(np.asarray(action).reshape(-1)[0]))
            if terminated or truncated:
                break
        results.append(EpisodeResult.from_info(step_info, episode=index))
    return summarise(results, env.mmsearch_env, policy=getattr(policy, "name", type(policy).__name__))


def summarise(results: Sequence[EpisodeResult], env: MMSearchEnv, *, policy: str = "sb3") -> dict[str, Any]:
    """The eval report of ended episodes (:class:`~mmsearch_gym.evaluate.EvalReport`'s JSON:
    :class:`~mmsearch_gym.metrics.Metrics` overall and ``per_category``)."""
    from mmsearch_gym.evaluate import EvalReport

    report = EvalReport(list(results), env=env.tasks.name, policy=policy, dialect=env.dialect.name,
                        reward_spec=env.reward_spec.describe())
    return report.to_json()


_summarise = summarise  # the former private name


def train_recipe(recipe: Mapping[str, Any], *, output_dir: Path) -> dict[str, Any]:
    """Train PPO or DQN on the decision wrapper as ``recipe`` says; returns a JSON-able summary.

    Recipe keys: ``trainer`` (``ppo`` | ``dqn``); ``env``: ``tasks`` (e.g. ``{"world":
    "train", "n": 2000, "seed": 0}``, or a TaskSet), ``backend`` (``"world"`` or a backend),
    ``grounder`` (``"annotations"`` or null), ``preload_images`` (render every task image once
    and keep it in memory), ``memo_search`` (remember the deterministic backend's answers) and
    MMSearchEnv keyword arguments (``dialect``, ``reward``, ``image_size``, limits ...);
    ``decision`` (:class:`DecisionConfig` fields); ``n_envs``; ``vec_env`` (``dummy`` |
    ``subproc``); ``seed``; ``total_timesteps``; ``ppo`` / ``dqn`` (keyword arguments of the
    SB3 algorithm, with ``policy_kwargs.net_arch`` and ``policy_kwargs.activation_fn`` as
    ``"tanh"`` / ``"relu"``); ``torch_threads`` (default 1: small networks only contend for
    cores); ``eval`` (``{"tasks": ..., "episodes": N}``: greedy rollouts after training, with
    the same env settings and the un-memoised backend); ``progress``.

    Writes ``model.zip`` (SB3's format), ``model.json`` + ``model.npz`` (the pickle-free
    export :meth:`SB3Policy.load` reads) and ``summary.json`` to ``output_dir``.
    """
    from mmsearch_gym.registration import resolve_backend, resolve_tasks

    recipe, env_cfg, trainer, total = _checked(recipe)
    seed = int(recipe.get("seed", 0))
    progress = bool(recipe.get("progress", True))
    tasks = resolve_tasks(env_cfg.get("tasks", {"world": "train"}))
    if env_cfg.get("preload_images", False):
        tasks = preload_images(tasks, progress=progress)
    backend = resolve_backend(env_cfg.get("backend", "world"))
    train_backend = MemoBackend(backend) if env_cfg.get("memo_search", False) else backend
    factory = _env_factory(env_cfg, tasks, train_backend, DecisionConfig.from_json(recipe.get("decision") or {}))
    probe = factory()
    decision = probe.config  # limits as the env has them
    probe.close()
    n_envs = int(recipe.get("n_envs", 8))
    venv = make_vec_env(factory, n_envs, seed=seed, vec_env=recipe.get("vec_env", "dummy"))
    policy_kwargs = _policy_kwargs(recipe, trainer)
    model, seconds = _learn(recipe, trainer, venv, policy_kwargs, total, seed=seed, progress=progress)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = str(recipe.get("name", trainer))
    model.save(output_dir / "model.zip")
    meta_path, weights_path = export_policy(model, decision, output_dir / "model",
                                            policy_kwargs=policy_kwargs, name=name)
    episodes = list(model.ep_info_buffer or [])
    summary: dict[str, Any] = {
        "name": name, "trainer": trainer, "output_dir": str(output_dir), "model_zip": str(output_dir / "model.zip"),
        "policy": str(meta_path), "weights": str(weights_path), "tasks": {"name": tasks.name, "count": len(tasks)},
        "n_envs": n_envs, "total_timesteps": int(model.num_timesteps), "train_seconds": round(seconds, 3),
        "steps_per_second": round(model.num_timesteps / max(seconds, 1e-9), 1),
        "train_mean_reward_last_episodes": (float(np.mean([e["r"] for e in episodes])) if episodes else None),
        "decision": decision.to_json(),
    }
    eval_cfg = recipe.get("eval")
    if eval_cfg:
        eval_tasks = resolve_tasks(eval_cfg.get("tasks", {"world": "test"}))
        eval_env = _env_factory(env_cfg, eval_tasks, backend, decision)()
        summary["eval"] = rollout_stats(model, eval_env, episodes=eval_cfg.get("episodes"), progress=progress)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
    return summary


def _checked(recipe: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str, int]:
    """The recipe, its env section, its trainer and its step count, after validation."""
    recipe = dict(recipe)
    trainer = recipe.get("trainer")
    if trainer not in _ALGORITHMS:
        raise ConfigError(f"the SB3 integration trains 'ppo' or 'dqn', not {trainer!r}")
    unknown = set(recipe) - _RECIPE_KEYS
    if unknown:
        raise ConfigError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(_RECIPE_KEYS)}")
    env_cfg = dict(recipe.get("env") or {})
    bad_env = set(env_cfg) - _ENV_KEYS
    if bad_env:
        raise ConfigError(f"unknown env keys {sorted(bad_env)} in the recipe; known: {sorted(_ENV_KEYS)}")
    total = recipe.get("total_timesteps")
    if not isinstance(total, int) or total < 1:
        raise ConfigError("the recipe needs total_timesteps, a positive integer")
    return recipe, env_cfg, trainer, total


def _policy_kwargs(recipe: Mapping[str, Any], trainer: str) -> dict[str, Any]:
    """The recipe's ``policy_kwargs`` with the activation by name (as the export records it)."""
    policy_kwargs = dict((recipe.get(trainer) or {}).get("policy_kwargs", {}) or {})
    activation = policy_kwargs.get("activation_fn", "tanh" if trainer == "ppo" else "relu")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"policy_kwargs.activation_fn must be one of {sorted(_ACTIVATIONS)}")
    policy_kwargs["activation_fn"] = activation
    return policy_kwargs


def _learn(recipe: Mapping[str, Any], trainer: str, venv: VecEnv, policy_kwargs: Mapping[str, Any],
           total: int, *, seed: int, progress: bool) -> tuple[BaseAlgorithm, float]:
    """Build the algorithm and train it; returns the model and the training seconds."""
    algo_kwargs = {k: v for k, v in (recipe.get(trainer) or {}).items() if k != "policy_kwargs"}
    sb3_policy_kwargs = dict(policy_kwargs, activation_fn=_ACTIVATIONS[policy_kwargs["activation_fn"]])
    threads = torch.get_num_threads()
    # Tiny networks: more threads only contend for cores. Set before the weights are
    # initialised, so that a run is reproducible whatever OMP_NUM_THREADS says.
    torch.set_num_threads(int(recipe.get("torch_threads", 1)))
    try:
        try:
            model = _ALGORITHMS[trainer]("MlpPolicy", venv, seed=seed, device="cpu", verbose=0,
                                         policy_kwargs=sb3_policy_kwargs, **algo_kwargs)
        except TypeError as err:
            raise ConfigError(f"bad {trainer} settings in the recipe: {err}") from None
        started = time.perf_counter()
        model.learn(total_timesteps=total, callback=_ProgressBar(total, progress))
        return model, time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
        venv.close()
