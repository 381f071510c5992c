"""Stable-Baselines3 integration: learn *when* and *how* to search with a classic RL policy.

A language model decides in text; a classic policy (PPO, DQN) needs a fixed-size vector in and
a discrete choice out. :class:`SearchDecisionEnv` is that view of an :class:`MMSearchEnv`:

* **Actions** (``Discrete``): ``answer`` now from the evidence so far; ``image_search`` of the
  whole image; ``crop:<target>`` (an image search of one object: at one of nine grid
  positions, "top left" ... "bottom right", or the largest / smallest / second from the left,
  the words the world's crop questions and the grounder share); ``text_search`` with a query
  built from the question and the hits so far.
* **Observation** (``Box`` of float32 in [-1, 1]): image features of the task image, a hashed
  bag of words of the question, what the searches so far returned (top scores, whether an
  entity was identified, words of the top image hit's title, whether a fact answer is in the
  hits) and turn / budget counters.

The skill being learned is the *decision*; the text around it is deterministic: answers and
queries come from an evidence reader (the world's ``EvidenceReader``: counting and layout
perception of the scene for search-free questions, reading the hits otherwise), crops are
snapped to the object at the chosen position by a grounder (the env's, else
:class:`~mmsearch_gym.grounding.AnnotationGrounder`, a stand-in for a detector such as the
Grounding DINO of DeepMMSearch-R1), and the action is formatted in the env's dialect and sent
to the real ``env.step``. The reward is the env's reward, unchanged.

No leak of the gold answer or the category: every observation feature is a function of the
question text, the task image pixels, the hits the env returned, and the counters. Nothing
reads ``task.answers``, ``task.category``, ``task.meta`` or the scene annotations
(``task.objects`` are used only to *act*: perception for the answer text and the crop box,
never to observe).

:class:`SB3Policy` plays a trained model through the :class:`~mmsearch_gym.policies.Policy`
protocol (``mmsearch-gym eval --policy sb3:PATH``): it rebuilds the same observation from each
``EpisodeView`` and returns the formatted action text. :func:`train_recipe` trains PPO or DQN
from a recipe in ``policies/``.

Models are saved twice: SB3's own ``model.zip`` (to resume training with SB3; it holds
pickled objects, so load only zips you trust) and a pickle-free export, ``model.json`` (the
decision config and network shape) plus ``model.npz`` (the weights), which
:meth:`SB3Policy.load` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from PIL import Image
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor
from tqdm.auto import tqdm

from mmsearch_gym.actions import (UNABLE_TO_ANSWER, Action, Answer, Dialect, ImageSearch, Region,
                                  TextSearch, get_dialect)
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.lru import LRU
from mmsearch_gym.policies import default_reader, first_image
from mmsearch_gym.search.base import Hit
from mmsearch_gym.search.image_features import FEATURE_DIM, image_feature
from mmsearch_gym.tasks import Task, TaskSet

__all__ = [
    "ACTION_ANSWER", "ACTION_IMAGE", "ACTION_TEXT", "CROP_POSITIONS", "CROP_TARGETS", "DecisionConfig",
    "DecisionCore", "Evidence", "FeatureCache", "MemoBackend", "SB3Policy", "SearchDecisionEnv",
    "export_policy", "make_vec_env", "preload_images", "train_recipe",
]

CROP_POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                                   "bottom left", "bottom", "bottom right")
"""The 3x3 grid names of :func:`mmsearch_gym.grounding.position_name`, which the world
generator writes into questions and scene annotations."""
CROP_TARGETS: tuple[str, ...] = (*CROP_POSITIONS, "largest", "smallest", "second from the left")
"""What a crop decision can point at: a grid position, or the size and order selectors the
world's crop questions use ("the largest flag", "the second flag from the left"). The
grounder turns each into the box of one object; together they reach the target of every crop
task of the world."""

ACTION_ANSWER = "answer"
ACTION_IMAGE = "image_search"
ACTION_TEXT = "text_search"

EvidenceKind = Literal["image", "crop", "text", "other"]

_TOKEN = re.compile(r"[a-z0-9]+")
_LAYOUT_SIDE = 4
_IMAGE_BLOCKS = {"layout": _LAYOUT_SIDE * _LAYOUT_SIDE * 3, "descriptor": FEATURE_DIM, "none": 0}
_FEATURE_CACHE_SIZE = 50_000
_REASONS = {
    ACTION_IMAGE: "I need to identify what the image shows.",
    ACTION_TEXT: "I need a fact about what I identified.",
}


# --------------------------------------------------------------------------------------------
# Configuration and evidence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionConfig:
    """Shape of the decision problem: which actions exist and how observations are built.

    The episode limits are copied from the env the wrapper wraps (they are part of what the
    policy was trained on, so a saved policy carries them).
    """

    question_dim: int = 128
    """Buckets of the hashed bag of words (and word pairs) of the question."""
    title_dim: int = 16
    """Buckets of the hashed words of the top image hit's title (a flag page vs a photo page)."""
    image_features: Literal["layout", "descriptor", "none"] = "layout"
    """How the task image enters the observation: ``layout``, its mean colour on a 4x4 grid
    (48 numbers: a single flag or a photo scene, and where colour sits); ``descriptor``, the
    image-search descriptor :func:`~mmsearch_gym.search.image_features.image_feature` (hundreds
    of numbers; rich enough to memorise training images, which hurts on unseen ones); ``none``."""
    crop_targets: tuple[str, ...] = CROP_TARGETS
    max_turns: int = 3
    image_search_budget: int = 1
    text_search_budget: int = 2

    def __post_init__(self) -> None:
        if self.image_features not in _IMAGE_BLOCKS:
            raise ConfigError(f"image_features must be one of {sorted(_IMAGE_BLOCKS)}, got {self.image_features!r}")
        if self.question_dim < 1 or self.title_dim < 1:
            raise ConfigError("question_dim and title_dim must be >= 1")
        if self.max_turns < 1 or self.image_search_budget < 0 or self.text_search_budget < 0:
            raise ConfigError("max_turns must be >= 1 and budgets >= 0")
        object.__setattr__(self, "crop_targets", tuple(str(p) for p in self.crop_targets))

    @property
    def action_names(self) -> tuple[str, ...]:
        """Discrete action i means ``action_names[i]``."""
        return (ACTION_ANSWER, ACTION_IMAGE, *(f"crop:{p}" for p in self.crop_targets), ACTION_TEXT)

    @property
    def block_sizes(self) -> dict[str, int]:
        """Length of each observation block, in order (documentation and debugging)."""
        return {"image": _IMAGE_BLOCKS[self.image_features], "question": self.question_dim,
                "turn": 4, "budget": 5, "image_hits": 4, "image_title": self.title_dim, "text_hits": 4}

    @property
    def observation_dim(self) -> int:
        return sum(self.block_sizes.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_targets"] = list(self.crop_targets)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown decision config keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if "crop_targets" in values:
            values["crop_targets"] = tuple(values["crop_targets"])
        return cls(**values)


@dataclass(frozen=True)
class Evidence:
    """What one finished turn did and got back: the only history a decision looks at."""

    kind: EvidenceKind
    hits: tuple[Hit, ...] = ()

    @classmethod
    def of(cls, action: Action, hits: Sequence[Hit]) -> Evidence:
        """The evidence of a turn the env parsed as ``action`` and answered with ``hits``."""
        if isinstance(action, ImageSearch):
            return cls("image" if action.region.kind == "whole" else "crop", tuple(hits))
        if isinstance(action, TextSearch):
            return cls("text", tuple(hits))
        return cls("other", ())


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _bucket(token: str, dim: int) -> int:
    """A stable bucket (unlike ``hash``, the same in every process and on every machine)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % dim


@lru_cache(maxsize=65_536)
def _hashed_words(text: str, dim: int, pairs: bool) -> tuple[int, ...]:
    words = _TOKEN.findall(text.lower())
    tokens = list(words)
    if pairs:
        tokens += [f"{a}_{b}" for a, b in pairwise(words)]
    return tuple(sorted({_bucket(t, dim) for t in tokens}))


def hashed_bag(text: str, dim: int, *, pairs: bool = True) -> np.ndarray:
    """Presence (0/1) of the text's words, and adjacent word pairs, hashed into ``dim`` buckets."""
    out = np.zeros(dim, dtype=np.float32)
    out[list(_hashed_words(text, dim, pairs))] = 1.0
    return out


def _squash(value: float) -> float:
    """Map an unbounded score (BM25) into (-1, 1), keeping order."""
    return value / (1.0 + abs(value))


class DecisionCore:
    """The deterministic half of a decision policy: observation in, action text out.

    Shared by the training wrapper and :class:`SB3Policy`, so the policy sees at evaluation
    exactly the features it was trained on and its choices become exactly the same text.

    Args:
        config: the decision problem's shape.
        reader: reads evidence (``identify``, ``build_query``, ``answer``,
            ``answer_from_scene``); default: the built-in world's ``EvidenceReader``.
        grounder: snaps a crop position to the annotated object there (``ground(expression,
            task)``); ``None`` crops fixed half-size windows.
    """

    def __init__(self, config: DecisionConfig, *, reader: Any = None, grounder: Any = None) -> None:
        self.config = config
        self._reader = reader
        self.grounder = grounder
        self.observation_space, self.action_space = decision_spaces(config)

    @property
    def reader(self) -> Any:
        if self._reader is None:
            self._reader = default_reader()
        return self._reader

    # -- observation --------------------------------------------------------------------
    def image_vector(self, image: Image.Image) -> np.ndarray:
        """The image block of the observation (empty when image features are off)."""
        kind = self.config.image_features
        if kind == "none":
            return np.zeros(0, dtype=np.float32)
        if kind == "layout":
            small = image.convert("RGB").resize((_LAYOUT_SIDE, _LAYOUT_SIDE), Image.Resampling.BOX)
            return (np.asarray(small, dtype=np.float32).reshape(-1) / 127.5 - 1.0).astype(np.float32)
        return np.clip(image_feature(image), -1.0, 1.0).astype(np.float32)

    def observe(self, question: str, image_vector: np.ndarray, history: Sequence[Evidence]) -> np.ndarray:
        """The observation after the turns in ``history``, blocks in order:

        ``image``: ``image_vector`` (features of the task image); ``question``: hashed words and
        word pairs; ``turn``: one-hot turns taken (0, 1, 2, 3+); ``budget``: turns left
        (fraction), last-turn flag, image and text searches left (fractions), a crop was
        searched; ``image_hits`` (latest image search): any hits, top cosine, margin to the
        second, an entity was identified; ``image_title``: hashed words of the top image hit's
        title (a flag page or a photo page); ``text_hits`` (latest text search): any hits,
        squashed top BM25 score and margin, and whether the reader finds an answer to the
        question in all hits so far.
        """
        cfg = self.config
        turns = len(history)
        image_used = sum(e.kind in ("image", "crop") for e in history)
        text_used = sum(e.kind == "text" for e in history)
        turn = np.zeros(4, dtype=np.float32)
        turn[min(turns, 3)] = 1.0
        left = max(0, cfg.max_turns - turns)
        budget = np.array([
            left / cfg.max_turns,
            1.0 if left == 1 else 0.0,
            max(0, cfg.image_search_budget - image_used) / max(1, cfg.image_search_budget),
            max(0, cfg.text_search_budget - text_used) / max(1, cfg.text_search_budget),
            1.0 if any(e.kind == "crop" for e in history) else 0.0,
        ], dtype=np.float32)

        image_hits = np.zeros(4, dtype=np.float32)
        title = np.zeros(cfg.title_dim, dtype=np.float32)
        last_image = next((e for e in reversed(history) if e.kind in ("image", "crop")), None)
        if last_image is not None and last_image.hits:
            scores = [h.score for h in last_image.hits]
            image_hits[:] = (1.0, scores[0], scores[0] - (scores[1] if len(scores) > 1 else 0.0),
                             1.0 if self.reader.identify(list(last_image.hits)) is not None else 0.0)
            title = hashed_bag(last_image.hits[0].title, cfg.title_dim, pairs=False)

        text_hits = np.zeros(4, dtype=np.float32)
        last_text = next((e for e in reversed(history) if e.kind == "text"), None)
        if last_text is not None and last_text.hits:
            scores = [h.score for h in last_text.hits]
            text_hits[:3] = (1.0, _squash(scores[0]),
                             _squash(scores[0] - (scores[1] if len(scores) > 1 else 0.0)))
        hits = [h for e in history for h in e.hits]
        if hits and self.reader.answer(question, hits) is not None:
            text_hits[3] = 1.0

        parts = [image_vector, hashed_bag(question, cfg.question_dim), turn, budget, image_hits,
                 title, text_hits]
        return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)

    # -- action -------------------------------------------------------------------------
    def action(self, index: int, question: str, history: Sequence[Evidence], *,
               task: Task | None, image_size: tuple[int, int]) -> tuple[Action, str]:
        """The env action that discrete choice ``index`` stands for, and a one-line reason."""
        names = self.config.action_names
        if not 0 <= int(index) < len(names):
            raise ConfigError(f"decision {index!r} is outside 0..{len(names) - 1}")
        name = names[int(index)]
        if name == ACTION_ANSWER:
            return self.answer(question, history, task)
        if name == ACTION_IMAGE:
            return ImageSearch(Region.whole()), _REASONS[ACTION_IMAGE]
        if name == ACTION_TEXT:
            hits = [h for e in history for h in e.hits]
            return TextSearch(self.reader.build_query(question, hits)), _REASONS[ACTION_TEXT]
        target = name.split(":", 1)[1]
        box = self.crop_box(target, task, image_size)
        where = f"at the {target}" if target in CROP_POSITIONS else f"the {target} one"
        return ImageSearch(Region.from_box(*box)), f"I need to identify the object {where}."

    def answer(self, question: str, history: Sequence[Evidence], task: Task | None) -> tuple[Answer, str]:
        """Scene perception (counts, layout) first, then the reader over every hit so far."""
        if task is not None and task.objects:
            seen = self.reader.answer_from_scene(question, task.objects)
            if seen is not None:
                return Answer(seen), "I can see the answer in the image."
        hits = [h for e in history for h in e.hits]
        found = self.reader.answer(question, hits) if hits else None
        if found:
            return Answer(found), "The search results contain the answer."
        return Answer(UNABLE_TO_ANSWER), "I do not have the information."

    def crop_box(self, target: str, task: Task | None, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The grounded box of the object ``target`` names, else a fixed half-size window."""
        if self.grounder is not None and task is not None and task.objects:
            box = self.grounder.ground(target, task)
            if box is not None:
                return tuple(int(v) for v in box)  # type: ignore[return-value]
        return window_box(target, image_size)

    def text(self, action: Action, reason: str, dialect: Dialect) -> str:
        return dialect.format(action, reason)


def decision_spaces(config: DecisionConfig) -> tuple[spaces.Box, spaces.Discrete]:
    """The observation and action spaces of a decision problem."""
    return (spaces.Box(-1.0, 1.0, shape=(config.observation_dim,), dtype=np.float32),
            spaces.Discrete(len(config.action_names)))


def window_box(position: str, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A half-width, half-height window towards ``position`` (the centre one for anything
    that is not a grid position), inside the image: the crop when nothing can be grounded."""
    width, height = image_size
    words = position.split()
    fx = 0.0 if "left" in words else 0.5 if "right" in words else 0.25
    fy = 0.0 if "top" in words else 0.5 if "bottom" in words else 0.25
    x1, y1 = int(fx * width), int(fy * height)
    return x1, y1, max(x1 + 1, int((fx + 0.5) * width)), max(y1 + 1, int((fy + 0.5) * height))


def _default_grounder() -> Any:
    from mmsearch_gym.grounding import AnnotationGrounder
    return AnnotationGrounder()


class FeatureCache:
    """Image feature vectors per task id (training resets the same tasks over and over)."""

    def __init__(self, size: int = _FEATURE_CACHE_SIZE) -> None:
        self._items: LRU[str, np.ndarray] = LRU(size)

    def get(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        def make() -> np.ndarray:
            value = compute()
            value.setflags(write=False)
            return value
        return self._items.get_or_make(key, make)


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


class SearchDecisionEnv(gym.Env[np.ndarray, np.int64]):
    """An :class:`~mmsearch_gym.env.MMSearchEnv` seen as a small decision problem for SB3.

    Each step takes a discrete decision, turns it into action text in the env's dialect, and
    steps the wrapped env with it; the reward and ``truncated`` are the wrapped env's,
    unchanged. ``terminated`` is the wrapped env's ``terminated or truncated``: the turn and
    search limits that truncate an MMSearch episode are part of the decision problem (the
    observation counts turns and budgets left, and the episode reward is final when they run
    out), so the episode has ended for good, and SB3 must not bootstrap a value past it as it
    does for a time-limit truncation (it would learn that running out of turns pays). ``info`` is the wrapped env's info plus ``decision`` (the action name)
    and ``action_text``, without the chat ``messages`` unless ``info_messages`` is set (SB3's
    vector envs deep-copy every info, and the chat holds images; ``env.base.transcript()``
    has the text).

    Args:
        env: an MMSearchEnv, possibly wrapped (``gym.make("MMSearch-Train-v0")``).
        config: observation and action shape; its episode limits are taken from ``env``.
        reader: evidence reader (default: the world's ``EvidenceReader``).
        grounder: for crops; ``"env"`` (default) uses the env's grounder, else an
            :class:`~mmsearch_gym.grounding.AnnotationGrounder`; ``None`` crops fixed windows.
        feature_cache: image feature vectors by task id; pass one cache to every copy of the
            env in a vector env so each task's image is described once.
        info_messages: keep the wrapped env's ``messages`` in ``info``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(self, env: gym.Env, *, config: DecisionConfig | None = None, reader: Any = None,
                 grounder: Any = "env", feature_cache: FeatureCache | None = None,
                 info_messages: bool = False) -> None:
        from mmsearch_gym.env import MMSearchEnv

        base = env.unwrapped
        if not isinstance(base, MMSearchEnv):
            raise ConfigError(f"SearchDecisionEnv wraps an MMSearchEnv, got {type(base).__name__}")
        self.env = env
        self.base: MMSearchEnv = base
        config = replace(config or DecisionConfig(), max_turns=base.max_turns,
                         image_search_budget=base.image_search_budget,
                         text_search_budget=base.text_search_budget)
        if grounder == "env":
            grounder = base.grounder if base.grounder is not None else _default_grounder()
        self.core = DecisionCore(config, reader=reader, grounder=grounder)
        self.config = config
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space
        self.render_mode = "ansi" if base.render_mode == "ansi" else None
        self._vectors = feature_cache if feature_cache is not None else FeatureCache()
        self.info_messages = info_messages
        self._question = ""
        self._image_vector = np.zeros(0, dtype=np.float32)
        self._image_size = (1, 1)
        self._history: list[Evidence] = []

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def history(self) -> list[Evidence]:
        """The evidence of the current episode so far (a copy)."""
        return list(self._history)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        _, info = self.env.reset(seed=seed, options=options)
        self._question = str(info["question"])
        image = first_image(info["messages"])
        if image is None:
            raise ConfigError("the wrapped env's reset info has no image in its messages")
        self._image_size = image.size
        self._image_vector = self._vectors.get(str(info["task_id"]), lambda: self.core.image_vector(image))
        self._history = []
        return self.core.observe(self._question, self._image_vector, self._history), self._info(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        index = int(np.asarray(action).reshape(-1)[0]) if not isinstance(action, (int, np.integer)) else int(action)
        chosen, reason = self.core.action(index, self._question, self._history,
                                          task=self.base.task, image_size=self._image_size)
        text = self.core.text(chosen, reason, self.base.dialect)
        _, reward, terminated, truncated, info = self.env.step(text)
        self._history.append(Evidence.of(info.get("action", chosen), info.get("hits") or []))
        info = dict(self._info(info), decision=self.config.action_names[index], action_text=text)
        obs = self.core.observe(self._question, self._image_vector, self._history)
        return obs, float(reward), bool(terminated or truncated), bool(truncated), info

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        return info if self.info_messages else {k: v for k, v in info.items() if k != "messages"}

    def render(self) -> str | None:
        return self.base.transcript() if self.render_mode == "ansi" else None

    def close(self) -> None:
        self.env.close()
        super().close()


# --------------------------------------------------------------------------------------------
# Playing a trained model through the Policy protocol
# --------------------------------------------------------------------------------------------

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
                 reader: Any = None, grounder: Any = "annotations", deterministic: bool = True,
                 name: str = "sb3") -> None:
        if tasks is not None and not isinstance(tasks, TaskSet):
            raise ConfigError(f"tasks must be a TaskSet, got {type(tasks).__name__}")
        if grounder == "annotations":
            grounder = _default_grounder()
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

    def history(self, episode: Any) -> list[Evidence]:
        """The evidence of an episode's finished steps."""
        return [Evidence.of(step.action, step.hits) for step in episode.steps]

    def observe(self, episode: Any) -> np.ndarray:
        """The wrapper's observation for an :class:`EpisodeView`."""
        vector = self._vectors.get(str(episode.task_id), lambda: self.core.image_vector(episode.image))
        return self.core.observe(episode.question, vector, self.history(episode))

    def decide(self, episodes: Sequence[Any]) -> list[int]:
        """The discrete decision for each episode (batched through the network)."""
        if not episodes:
            return []
        batch = np.stack([self.observe(e) for e in episodes])
        actions, _ = self.policy.predict(batch, deterministic=self.deterministic)
        return [int(a) for a in np.asarray(actions).reshape(-1)]

    def act(self, episodes: Sequence[Any]) -> list[str]:
        texts = []
        for episode, index in zip(episodes, self.decide(episodes)):
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


# --------------------------------------------------------------------------------------------
# Training from a recipe
# --------------------------------------------------------------------------------------------


def make_vec_env(env_factory: Callable[[], SearchDecisionEnv], n_envs: int, *, seed: int = 0,
                 vec_env: Literal["dummy", "subproc"] = "dummy") -> VecEnv:
    """``n_envs`` copies of a decision env in one VecEnv (with episode statistics), seeded
    ``seed, seed + 1, ...`` so a run is reproducible."""
    if n_envs < 1:
        raise ConfigError(f"n_envs must be >= 1, got {n_envs}")
    if vec_env not in ("dummy", "subproc"):
        raise ConfigError(f"vec_env must be 'dummy' or 'subproc', got {vec_env!r}")
    factories: list[Callable[[], gym.Env]] = [env_factory for _ in range(n_envs)]
    venv: VecEnv = DummyVecEnv(factories) if vec_env == "dummy" else SubprocVecEnv(factories)
    venv.seed(seed)
    return VecMonitor(venv)


class _ProgressBar(BaseCallback):
    """A tqdm bar over environment steps (SB3's own bar needs ``rich``)."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__()
        self._total = total
        self._enabled = enabled
        self._bar: Any = None

    def _on_training_start(self) -> None:
        self._bar = tqdm(total=self._total, desc="sb3", unit="step", disable=not self._enabled)

    def _on_step(self) -> bool:
        self._bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self._bar.close()


@lru_cache(maxsize=4096)
def _decoded_thumbnail(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@dataclass(frozen=True)
class _MemoHit(Hit):
    """A Hit whose thumbnail is decoded once per process (the env decodes every thumbnail of
    every image search into the chat; in training the same few hundred recur)."""

    def thumbnail_image(self) -> Image.Image | None:
        return None if self.thumbnail is None else _decoded_thumbnail(self.thumbnail).copy()


class MemoBackend:
    """Remembers a deterministic backend's answers in memory for one training run.

    Training asks the same searches of the same tasks over and over; the world's engine
    always gives the same answer, so computing it once is enough (and each thumbnail is
    decoded once). Not a :class:`SearchCache` (nothing is written anywhere), and only for
    backends whose results never change.
    """

    def __init__(self, inner: Any, max_entries: int = 200_000) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self._memo: LRU[tuple[Any, ...], list[Hit]] = LRU(max_entries)

    def cache_params(self) -> dict[str, Any]:
        params = getattr(self.inner, "cache_params", None)
        return params() if callable(params) else {}

    def _get(self, key: tuple[Any, ...], compute: Callable[[], list[Hit]]) -> list[Hit]:
        hits = self._memo.get_or_make(key, lambda: [_MemoHit(**{f.name: getattr(h, f.name)
                                                                 for f in dataclasses.fields(Hit)})
                                                    for h in compute()])
        return list(hits)

    def text_search(self, query: str, k: int) -> list[Hit]:
        return self._get(("text", query, k), lambda: self.inner.text_search(query, k))

    def image_search(self, image: Any, k: int) -> list[Hit]:
        return self._get(("image", image.digest, image.box, k), lambda: self.inner.image_search(image, k))


class _FrozenImage:
    """A task's ``render`` that hands out copies of pixels rendered once."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image

    def __call__(self) -> Image.Image:
        return self.image.copy()


def preload_images(tasks: TaskSet, *, progress: bool = True) -> TaskSet:
    """The same tasks with their images rendered once and kept in memory.

    The world renders scenes on demand (tens of milliseconds each) and an env keeps only a
    few recent ones; training visits thousands of tasks many times, so rendering each once
    makes resets cheap. Same pixels, same ids, same everything else.
    """
    preloaded = [dataclasses.replace(task, render=_FrozenImage(task.load_image()))
                 for task in tqdm(tasks, desc="render", unit="task", disable=not progress)]
    return TaskSet(preloaded, name=tasks.name)


_RECIPE_KEYS = {"trainer", "name", "description", "env", "decision", "n_envs", "vec_env", "seed",
                "total_timesteps", "ppo", "dqn", "eval", "progress", "torch_threads"}
_ENV_KEYS = {"tasks", "backend", "dialect", "reward", "max_turns", "image_search_budget",
             "text_search_budget", "top_k", "image_size", "grounder", "preload_images", "memo_search"}


def _env_factory(env_cfg: Mapping[str, Any], tasks: TaskSet, backend: Any,
                 decision: DecisionConfig) -> Callable[[], SearchDecisionEnv]:
    from mmsearch_gym.env import MMSearchEnv

    kwargs = {k: v for k, v in env_cfg.items()
              if k not in ("tasks", "backend", "grounder", "preload_images", "memo_search")}
    if "image_size" in kwargs:
        kwargs["image_size"] = tuple(kwargs["image_size"])
    grounder = env_cfg.get("grounder", "annotations")
    if grounder not in ("annotations", None):
        raise ConfigError(f"env.grounder must be 'annotations' or null, got {grounder!r}")

    features = FeatureCache()

    def make() -> SearchDecisionEnv:
        g = _default_grounder() if grounder == "annotations" else None
        return SearchDecisionEnv(MMSearchEnv(tasks, backend, grounder=g, **kwargs), config=decision,
                                 grounder=g, feature_cache=features)

    return make


def rollout_stats(policy: SB3Policy | BaseAlgorithm, env: SearchDecisionEnv, *,
                  episodes: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Greedy episodes on task 0..N-1 of the wrapped env: mean reward, accuracy, search ratio
    and calls per tool, overall and per category (the evaluator's definitions). A quick check
    inside training; ``mmsearch_gym.evaluate`` is the reference evaluation."""
    model_policy = policy.policy if isinstance(policy, (SB3Policy, BaseAlgorithm)) else policy
    n = len(env.base.tasks) if episodes is None else min(int(episodes), len(env.base.tasks))
    rows: list[dict[str, Any]] = []
    for index in tqdm(range(n), desc="eval", disable=not progress):
        obs, info = env.reset(options={"task_index": index})
        while True:
            action, _ = model_policy.predict(obs[None], deterministic=True)
            obs, _, terminated, truncated, step_info = env.step(int(np.asarray(action).reshape(-1)[0]))
            if terminated or truncated:
                break
        breakdown = step_info["reward_breakdown"]
        rows.append({"category": info["category"], "reward": breakdown.reward,
                     "correct": breakdown.raw_score > 0.5, "image": step_info["image_searches"],
                     "text": step_info["text_searches"]})
    return _summarise(rows)


def _summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def stats(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        n = max(1, len(group))
        return {"episodes": len(group),
                "mean_reward": sum(r["reward"] for r in group) / n,
                "accuracy": sum(r["correct"] for r in group) / n,
                "search_ratio": sum((r["image"] + r["text"]) > 0 for r in group) / n,
                "calls_per_episode": {"image_search": sum(r["image"] for r in group) / n,
                                      "text_search": sum(r["text"] for r in group) / n}}
    out = stats(rows)
    out["per_category"] = {c: stats([r for r in rows if r["category"] == c])
                           for c in sorted({r["category"] for r in rows})}
    return out


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
    seed = int(recipe.get("seed", 0))
    n_envs = int(recipe.get("n_envs", 8))
    progress = bool(recipe.get("progress", True))
    algo_kwargs = dict(recipe.get(trainer) or {})
    policy_kwargs = dict(algo_kwargs.pop("policy_kwargs", {}) or {})
    activation = policy_kwargs.get("activation_fn", "tanh" if trainer == "ppo" else "relu")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"policy_kwargs.activation_fn must be one of {sorted(_ACTIVATIONS)}")
    policy_kwargs["activation_fn"] = activation

    tasks = resolve_tasks(env_cfg.get("tasks", {"world": "train"}))
    if env_cfg.get("preload_images", False):
        tasks = preload_images(tasks, progress=progress)
    backend = resolve_backend(env_cfg.get("backend", "world"))
    train_backend = MemoBackend(backend) if env_cfg.get("memo_search", False) else backend
    decision = DecisionConfig.from_json(recipe.get("decision") or {})
    factory = _env_factory(env_cfg, tasks, train_backend, decision)
    probe = factory()
    decision = probe.config  # limits as the env has them
    probe.close()
    venv = make_vec_env(factory, n_envs, seed=seed, vec_env=recipe.get("vec_env", "dummy"))

    algorithm = _ALGORITHMS[trainer]
    sb3_policy_kwargs = dict(policy_kwargs, activation_fn=_ACTIVATIONS[activation])
    threads = torch.get_num_threads()
    # Tiny networks: more threads only contend for cores. Set before the weights are
    # initialised, so that a run is reproducible whatever OMP_NUM_THREADS says.
    torch.set_num_threads(int(recipe.get("torch_threads", 1)))
    try:
        try:
            model = algorithm("MlpPolicy", venv, seed=seed, device="cpu", verbose=0,
                              policy_kwargs=sb3_policy_kwargs, **algo_kwargs)
        except TypeError as err:
            raise ConfigError(f"bad {trainer} settings in the recipe: {err}") from None
        started = time.perf_counter()
        model.learn(total_timesteps=total, callback=_ProgressBar(total, progress))
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
        venv.close()
    episodes = list(model.ep_info_buffer or [])

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = str(recipe.get("name", trainer))
    model.save(output_dir / "model.zip")
    meta_path, weights_path = export_policy(model, decision, output_dir / "model",
                                            policy_kwargs=policy_kwargs, name=name)
    summary: dict[str, Any] = {
        "name": name,
        "trainer": trainer,
        "output_dir": str(output_dir),
        "model_zip": str(output_dir / "model.zip"),
        "policy": str(meta_path),
        "weights": str(weights_path),
        "tasks": {"name": tasks.name, "count": len(tasks)},
        "n_envs": n_envs,
        "total_timesteps": int(model.num_timesteps),
        "train_seconds": round(seconds, 3),
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
