"""SB3Policy: a trained decision model played through the Policy protocol
(``mmsearch-gym eval --policy sb3:PATH``), and the pickle-free export it loads."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from mmsearch_gym.actions import Dialect, get_dialect
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.grounding import Grounder
from mmsearch_gym.policies import EpisodeView, EvidenceReaderLike
from mmsearch_gym.tasks import Task, TaskSet

from .decision import DecisionConfig, DecisionCore, Evidence, FeatureCache, _default_grounder, decision_spaces

_ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "dqn": DQN}
_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
EXPORT_FORMAT = 1


class SB3Policy:
    """A trained SB3 decision model as a :class:`~mmsearch_gym.policies.Policy`.

    ``act`` rebuilds each episode's observation from its :class:`EpisodeView` (question,
    original image, the hits of the finished steps) with the same :class:`DecisionCore` the
    wrapper used in training, asks the network for a decision (greedy by default), and returns
    the action text in the episode's dialect. ``tasks`` (optional) gives the scene annotations
    for perception and crop grounding, as the training wrapper had them.
    """

    def __init__(self, policy: BasePolicy, config: DecisionConfig, *, tasks: TaskSet | None = None,
                 reader: EvidenceReaderLike | None = None, grounder: Grounder | str | None = "annotations",
                 deterministic: bool = True,
                 name: str = "sb3") -> None:
        if tasks is not None and not isinstance(tasks, TaskSet):
            raise ConfigError(f"tasks must be a TaskSet, got {type(tasks).__name__}")
        if grounder == "annotations":
            grounder = _default_grounder()
        if isinstance(grounder, str):
            raise ConfigError(f"grounder must be 'annotations', a Grounder or None, got {grounder!r}")
        self.policy = policy
        self.policy.set_training_mode(False)
        self.core = DecisionCore(config, reader=reader, grounder=grounder)
        self.config = config
        self.tasks = tasks
        self.deterministic = deterministic
        self.name = name
        self._vectors = FeatureCache()

    @classmethod
    def load(cls, path: str | Path, tasks: TaskSet | None = None,
             dialect: str | Dialect = "mmsearch-r1", **kwargs: Any) -> SB3Policy:
        """Load ``model.json`` + ``model.npz`` (pickle-free) given any of the three files or
        their folder. Without an export next to it, a ``.zip`` is loaded with SB3 (which
        unpickles: trusted files only) and the default :class:`DecisionConfig`.

        ``dialect`` is accepted for the ``make_policy`` signature: actions are formatted in
        each episode's own dialect.
        """
        get_dialect(dialect)
        path = Path(path)
        if path.is_dir():
            stem = path / "model"
        elif path.suffix in (".zip", ".json", ".npz"):
            stem = path.with_suffix("")
        else:
            stem = path
        meta_path, weights_path, zip_path = (stem.with_suffix(s) for s in (".json", ".npz", ".zip"))
        if meta_path.is_file() and weights_path.is_file():
            policy, config, name = _load_export(meta_path, weights_path)
            return cls(policy, config, tasks=tasks, name=kwargs.pop("name", name), **kwargs)
        if zip_path.is_file():
            config = DecisionConfig()
            if meta_path.is_file():
                config = DecisionConfig.from_json(json.loads(meta_path.read_text("utf-8"))["decision"])
            model = _load_zip(zip_path)
            return cls(model.policy, config, tasks=tasks, **kwargs)
        raise ConfigError(f"no SB3 policy at {path}: expected model.json + model.npz (written by "
                          "`mmsearch-gym train ppo-world`) or an SB3 model.zip")

    def _task(self, task_id: str) -> Task | None:
        if self.tasks is None or task_id not in self.tasks:
            return None
        return self.tasks.by_id(task_id)

    def history(self, episode: EpisodeView) -> list[Evidence]:
        """The evidence of an episode's finished steps."""
        return [Evidence.of(step.action, step.hits) for step in episode.steps]

    def observe(self, episode: EpisodeView) -> np.ndarray:
        """The wrapper's observation for an :class:`EpisodeView`."""
        vector = self._vectors.get(str(episode.task_id), lambda: self.core.image_vector(episode.image))
        return self.core.observe(episode.question, vector, self.history(episode))

    def decide(self, episodes: Sequence[EpisodeView]) -> list[int]:
        """The discrete decision for each episode (batched through the network)."""
        if not episodes:
            return []
        batch = np.stack([self.observe(e) for e in episodes])
        actions, _ = self.policy.predict(batch, deterministic=self.deterministic)
        return [int(a) for a in np.asarray(actions).reshape(-1)]

    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        texts = []
        for episode, index in zip(episodes, self.decide(episodes), strict=False):
            chosen, reason = self.core.action(index, episode.question, self.history(episode),
                                              task=self._task(episode.task_id),
                                              image_size=episode.image.size)
            texts.append(self.core.text(chosen, reason, get_dialect(episode.dialect)))
        return texts

    def __repr__(self) -> str:
        return f"SB3Policy(name={self.name!r}, actions={len(self.config.action_names)})"


def _net_arch_json(policy_kwargs: Mapping[str, Any]) -> Any:
    arch = policy_kwargs.get("net_arch")
    return arch if arch is None or isinstance(arch, (list, dict)) else list(arch)


def export_policy(model: BaseAlgorithm, config: DecisionConfig, stem: Path, *,
                  policy_kwargs: Mapping[str, Any] | None = None, name: str = "sb3") -> tuple[Path, Path]:
    """Write ``STEM.json`` (config, algorithm, network shape) and ``STEM.npz`` (weights), no pickle."""
    algorithm = next((k for k, v in _ALGORITHMS.items() if isinstance(model, v)), None)
    if algorithm is None:
        raise ConfigError(f"can only export PPO or DQN models, got {type(model).__name__}")
    kwargs = dict(policy_kwargs or {})
    activation = kwargs.get("activation_fn", "tanh" if algorithm == "ppo" else "relu")
    if not isinstance(activation, str):
        activation = next((k for k, v in _ACTIVATIONS.items() if v is activation), None)
        if activation is None:
            raise ConfigError(f"cannot export activation {kwargs['activation_fn']!r}; use tanh or relu")
    meta = {"format": EXPORT_FORMAT, "name": name, "algorithm": algorithm, "decision": config.to_json(),
            "net_arch": _net_arch_json(kwargs), "activation": activation}
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    state = {k: v.detach().cpu().numpy() for k, v in model.policy.state_dict().items()}
    with weights_path.open("wb") as handle:
        np.savez(handle, **state)
    return meta_path, weights_path


def _load_export(meta_path: Path, weights_path: Path) -> tuple[BasePolicy, DecisionConfig, str]:
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{meta_path} is not valid JSON: {err}") from None
    if meta.get("format") != EXPORT_FORMAT or meta.get("algorithm") not in _ALGORITHMS:
        raise ConfigError(f"{meta_path} is not an SB3 decision policy export (format {EXPORT_FORMAT})")
    if meta.get("activation") not in _ACTIVATIONS:
        raise ConfigError(f"{meta_path}: unknown activation {meta.get('activation')!r}")
    config = DecisionConfig.from_json(meta["decision"])
    observation_space, action_space = decision_spaces(config)
    policy_kwargs: dict[str, Any] = {"activation_fn": _ACTIVATIONS[meta["activation"]]}
    if meta.get("net_arch") is not None:
        policy_kwargs["net_arch"] = meta["net_arch"]
    policy_class = _ALGORITHMS[meta["algorithm"]].policy_aliases["MlpPolicy"]
    policy = policy_class(observation_space, action_space, lambda _: 0.0, **policy_kwargs)
    with np.load(weights_path, allow_pickle=False) as data:
        state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    try:
        policy.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{weights_path} does not match the network in {meta_path}: {err}") from None
    return policy, config, str(meta.get("name", "sb3"))


def _load_zip(path: Path) -> BaseAlgorithm:
    errors = []
    for algorithm in _ALGORITHMS.values():
        try:
            return algorithm.load(path, device="cpu")
        except (KeyError, ValueError, TypeError, AssertionError) as err:
            errors.append(f"{algorithm.__name__}: {err}")
    raise ConfigError(f"{path} is neither a PPO nor a DQN model ({'; '.join(errors)})")
