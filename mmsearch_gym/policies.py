"""Policies: anything that turns running episodes into the next action text.

A :class:`Policy` looks at a batch of :class:`EpisodeView` objects (one per live episode: the
question, the original image, the dialect, the latest observation and info, and the finished
turns so far) and returns one action text per episode. Batching is part of the protocol because
model policies (``transformers``, OpenAI-compatible servers) are only fast when many episodes
are decoded at once; scripted policies simply loop.

Keeping views while stepping envs (what the evaluator does)::

    obs, info = env.reset(options={"task_index": i})
    view = EpisodeView.start(obs, info, dialect=env.dialect)
    while True:
        text = policy.act([view])[0]
        obs, reward, terminated, truncated, info = env.step(text)
        view.record(text, obs, info)
        if terminated or truncated:
            break

Scripted baselines (deterministic; they read evidence with the built-in world's
``EvidenceReader`` and never put a gold answer in an action):

* ``direct``  answers at once: scene perception for search-free questions, otherwise
  MMSearch-R1's "Unable to answer due to lack of relevant information".
* ``rag``     the papers' RAG workflow: image search, then text search, then answer (search
  ratio 100%).
* ``oracle``  follows each task's ``meta["oracle_plan"]`` (the minimal correct tool calls),
  then answers from the hits it got.
* ``random``  seeded random legal actions and some junk text (a floor and a robustness probe).

``make_policy(spec)`` builds any of them, or a family of :data:`POLICY_REGISTRY`
(``transformers:PATH``, ``openai:BASE_URL#model``, ``sb3:PATH``): a prefix names a
``"module:Class"`` target imported only when asked for, so importing this module never imports
torch or an integration, and a missing optional extra is a ConfigError naming it.
"""

from __future__ import annotations

import contextlib
import importlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mmsearch_gym.actions import (
    UNABLE_TO_ANSWER,
    Action,
    Answer,
    Dialect,
    ImageSearch,
    Invalid,
    Region,
    TextSearch,
    get_dialect,
)
from mmsearch_gym.chat import (
    RESULT_IMAGE_MARKER,
    first_image,
    interleave_images,
    text_only_content,
)
from mmsearch_gym.episode_view import EpisodeView, Step
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.search.base import Hit
from mmsearch_gym.stopping import cut_at_stop  # re-exported: the one stop-string rule
from mmsearch_gym.tasks import SEARCH_FREE, SceneObject, Task, TaskSet

__all__ = [
    "POLICY_REGISTRY",
    "POLICY_SPECS",
    "RESULT_IMAGE_MARKER",
    "DirectPolicy",
    "EpisodeView",
    "EvidenceReaderLike",
    "OraclePolicy",
    "Policy",
    "PolicyEntry",
    "PolicyError",
    "RAGPolicy",
    "RandomPolicy",
    "ScriptedPolicy",
    "Step",
    "cut_at_stop",
    "first_image",
    "interleave_images",
    "make_policy",
    "register_policy",
    "text_only_content",
]

# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------


class PolicyError(MMSearchError):
    """A policy could not produce actions for a reason outside the model's text (e.g. its model
    server kept failing). Model text itself never raises: the env turns it into Invalid."""


@runtime_checkable
class Policy(Protocol):
    """Turns a batch of running episodes into one action text each.

    ``act`` must return exactly ``len(episodes)`` strings, in order. Policies are
    deterministic given their seed and inputs, and the answer for one episode never depends
    on which other episodes share its batch.
    """

    name: str

    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        """One action text per episode (batched: many episodes at once)."""
        ...


# ---------------------------------------------------------------------------------------------
# Evidence reading (the built-in world's reader, or anything with the same four methods)
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class EvidenceReaderLike(Protocol):
    """What scripted policies need to read search results: the world's ``EvidenceReader`` API."""

    def identify(self, hits: Sequence[Hit]) -> str | None: ...

    def build_query(self, question: str, hits: Sequence[Hit]) -> str: ...

    def answer(self, question: str, hits: Sequence[Hit]) -> str | None: ...

    def answer_from_scene(self, question: str, objects: Sequence[SceneObject],
                          image_size: tuple[int, int] | None = None) -> str | None: ...


def default_reader() -> EvidenceReaderLike:
    """The built-in world's ``EvidenceReader`` (imported on first use), for policies without a reader."""
    try:
        from mmsearch_gym.world.reader import EvidenceReader
    except ImportError as err:
        raise ConfigError("policies read evidence with mmsearch_gym.world.reader.EvidenceReader, "
                          f"which could not be imported ({err}); pass reader= an object with identify, "
                          "build_query, answer and answer_from_scene") from err
    return EvidenceReader()


# ---------------------------------------------------------------------------------------------
# Scripted baselines
# ---------------------------------------------------------------------------------------------


class ScriptedPolicy:
    """Base of the deterministic baselines: one decision per episode, formatted in its dialect.

    Args:
        tasks: the task set being played; scripted policies look a task up by id for its scene
            annotations (perception of search-free questions) and oracle plans. Without it they
            act from the question and the hits alone.
        reader: reads hits and scenes; default: the built-in world's ``EvidenceReader``.
        seed: only the random policy uses it; accepted by all for a uniform constructor.
    """

    name = "scripted"

    def __init__(self, tasks: TaskSet | None = None, *, reader: EvidenceReaderLike | None = None,
                 seed: int = 0) -> None:
        if tasks is not None and not isinstance(tasks, TaskSet):
            raise ConfigError(f"tasks must be a TaskSet, got {type(tasks).__name__}")
        self.tasks = tasks
        self.seed = int(seed)
        self._reader = reader

    @property
    def reader(self) -> EvidenceReaderLike:
        if self._reader is None:
            self._reader = default_reader()
        return self._reader

    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        return [self.decide(episode) for episode in episodes]

    def decide(self, episode: EpisodeView) -> str:
        """The action text for one episode."""
        raise NotImplementedError

    # -- shared pieces ------------------------------------------------------------------
    def task_of(self, episode: EpisodeView) -> Task | None:
        if self.tasks is None or episode.task_id not in self.tasks:
            return None
        return self.tasks.by_id(episode.task_id)

    def perceive(self, episode: EpisodeView) -> str | None:
        """Answer a search-free question from the scene (counts and layout, never entities)."""
        if episode.category != SEARCH_FREE:
            return None
        task = self.task_of(episode)
        if task is None or not task.objects:
            return None
        size = task.meta.get("image_size")
        image_size = (int(size[0]), int(size[1])) if size else episode.image.size
        return self.reader.answer_from_scene(episode.question, task.objects, image_size=image_size)

    def final_answer(self, episode: EpisodeView) -> str:
        """Perception for search-free questions, else the reader's answer from all hits."""
        seen = self.perceive(episode)
        if seen is not None:
            return self._say(episode, Answer(seen), "I can see the answer in the image.")
        hits = episode.hits
        found = self.reader.answer(episode.question, hits) if hits else None
        if found:
            return self._say(episode, Answer(found), "The search results contain the answer.")
        return self._say(episode, Answer(UNABLE_TO_ANSWER), "The results do not contain the answer.")

    @staticmethod
    def _say(episode: EpisodeView, action: Action, reasoning: str) -> str:
        return episode.dialect.format(action, reasoning)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class DirectPolicy(ScriptedPolicy):
    """Answers at once, never searches: perception for search-free questions, else "unable"."""

    name = "direct"

    def decide(self, episode: EpisodeView) -> str:
        seen = self.perceive(episode)
        if seen is not None:
            return self._say(episode, Answer(seen), "I can see the answer in the image.")
        return self._say(episode, Answer(UNABLE_TO_ANSWER), "I do not know this without searching.")


class RAGPolicy(ScriptedPolicy):
    """The papers' RAG workflow: whole-image search, a text search built from the image hits,
    then an answer from everything retrieved. Always searches (search ratio 100%)."""

    name = "rag"

    def decide(self, episode: EpisodeView) -> str:
        budget = _budget(episode)
        if _attempts(episode, ImageSearch) == 0 and budget.image > 0:
            return self._say(episode, ImageSearch(Region.whole()),
                             "I should find out what the image shows.")
        if _attempts(episode, TextSearch) == 0 and budget.text > 0 and budget.turns_left > 1:
            query = self.reader.build_query(episode.question, episode.hits)
            return self._say(episode, TextSearch(query), "I need facts about what the image shows.")
        return self.final_answer(episode)


class OraclePolicy(RAGPolicy):
    """Follows each task's ``meta["oracle_plan"]`` (the minimal correct tool calls) and answers
    from the hits those calls returned; tasks without a plan are played like ``rag``.

    Crops use the annotated box (``deepmmsearch-r1``: a referring expression built from the
    object's position attribute, falling back to the pixel box if the env cannot ground it).
    """

    name = "oracle"

    def decide(self, episode: EpisodeView) -> str:
        task = self.task_of(episode)
        plan = task.meta.get("oracle_plan") if task is not None else None
        if not plan:
            return super().decide(episode)
        done = [s for s in episode.steps if not isinstance(s.action, Invalid)]
        retry_crop = bool(episode.steps) and isinstance(episode.steps[-1].action, Invalid) \
            and _is_expression(episode.dialect.parse(episode.steps[-1].text))
        index = len(done)
        if index >= len(plan) or plan[index].get("tool") == "answer" or _budget(episode).turns_left <= 1:
            return self.final_answer(episode)
        item = plan[index]
        tool = item.get("tool")
        if tool == "image_search":
            box = item.get("box")
            if box is None:
                return self._say(episode, ImageSearch(Region.whole()), "I should search the whole image.")
            x1, y1, x2, y2 = (int(v) for v in box)
            return self._say(episode, self._crop(episode, task, (x1, y1, x2, y2), retry_crop),
                             "The question is about one part of the image; I search that part.")
        if tool == "text_search":
            query = str(item.get("query") or "") or self.reader.build_query(episode.question, episode.hits)
            return self._say(episode, TextSearch(query), "I need a fact about what I found.")
        raise ConfigError(f"task {episode.task_id!r}: unknown oracle plan tool {tool!r}; "
                          "use image_search, text_search or answer")

    @staticmethod
    def _crop(episode: EpisodeView, task: Task | None, box: tuple[int, int, int, int],
              retry: bool) -> ImageSearch:
        if episode.dialect.name == "deepmmsearch-r1" and not retry and task is not None:
            expression = _referring_expression(task, box)
            if expression is not None:
                return ImageSearch(Region.refer(expression))
        return ImageSearch(Region.from_box(*box))


def _is_expression(action: Action) -> bool:
    return isinstance(action, ImageSearch) and action.region.kind == "expression"


def _referring_expression(task: Task, box: Sequence[int]) -> str | None:
    """Words a grounder resolves to ``box``: "the flag at the top right" (never the entity)."""
    for obj in task.objects:
        if tuple(obj.box) == tuple(box):
            position = obj.attributes.get("position")
            if not isinstance(position, str) or not position:
                return None
            noun = obj.label.split()[0] if obj.label.split() else "object"
            where = "in the center" if position == "center" else f"at the {position}"
            return f"the {noun} {where}"
    return None


@dataclass(frozen=True)
class _Budget:
    image: int
    text: int
    turns_left: int


def _budget(episode: EpisodeView) -> _Budget:
    """What the dialect's paper limits still allow (the env may be stricter; it truncates)."""
    limits = episode.dialect.limits
    image = limits.image_searches - _attempts(episode, ImageSearch)
    text_limit = limits.text_searches if limits.text_searches is not None else limits.max_turns
    text = text_limit - _attempts(episode, TextSearch)
    return _Budget(image, text, limits.max_turns - len(episode.steps))


def _attempts(episode: EpisodeView, kind: type) -> int:
    """Turns whose text asked for ``kind`` (a crop the env could not ground still counts)."""
    return sum(isinstance(episode.dialect.parse(step.text), kind) for step in episode.steps)


class RandomPolicy(ScriptedPolicy):
    """Seeded random actions of the dialect, including crops and some junk text.

    The choice for an episode depends only on ``(seed, task_id, turn)``, never on the batch, so
    runs are reproducible whatever the batching or the number of env workers.
    """

    name = "random"
    JUNK_RATE = 0.15

    def decide(self, episode: EpisodeView) -> str:
        rng = random.Random(f"{self.seed}|{episode.task_id}|{len(episode.steps)}")
        dialect = episode.dialect
        if rng.random() < self.JUNK_RATE:
            return _junk(rng, dialect)
        words = [w.strip("?,.!\"'") for w in episode.question.split()] or ["image"]
        words = [w for w in words if w] or ["image"]
        roll = rng.random()
        if roll < 0.3:
            pool = words + [w for hit in episode.hits for w in hit.title.split()]
            if rng.random() < 0.2:
                text = UNABLE_TO_ANSWER
            else:
                text = " ".join(rng.sample(pool, min(len(pool), rng.randint(1, 3))))
            return dialect.format(Answer(text), "A guess.")
        if roll < 0.6:
            query = " ".join(rng.sample(words, min(len(words), rng.randint(1, 4))))
            return dialect.format(TextSearch(query), "Let me look something up.")
        return dialect.format(ImageSearch(self._region(rng, episode)), "Let me search the image.")

    @staticmethod
    def _region(rng: random.Random, episode: EpisodeView) -> Region:
        kind = rng.choice(["whole", "box", "expression"])
        if kind == "expression" and episode.dialect.name == "deepmmsearch-r1":
            position = rng.choice(["top left", "top right", "bottom left", "bottom right", "center",
                                   "left", "right"])
            return Region.refer(f"the object at the {position}")
        if kind == "whole":
            return Region.whole()
        width, height = episode.image.size
        x1, y1 = rng.randrange(max(1, width - 1)), rng.randrange(max(1, height - 1))
        x2, y2 = rng.randint(x1 + 1, max(x1 + 1, width)), rng.randint(y1 + 1, max(y1 + 1, height))
        return Region.from_box(x1, y1, x2, y2)


_JUNK = (
    "I think the answer is probably somewhere in the picture.",
    "<answer>unterminated",
    "<reason>no action here</reason>",
    "<text_search></text_search>",
    "<tool_call>{not json}</tool_call>",
    "",
    "<<<>>>",
)


def _junk(rng: random.Random, dialect: Dialect) -> str:
    """Text that is rarely a legal action: the env must turn it into Invalid, never crash."""
    if rng.random() < 0.5:
        return rng.choice(_JUNK)
    alphabet = "abcdefghijklmnopqrstuvwxyz <>/{}[]\"'0123456789"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


# ---------------------------------------------------------------------------------------------
# Building policies from a spec string
# ---------------------------------------------------------------------------------------------

_SCRIPTED: dict[str, type[ScriptedPolicy]] = {
    "direct": DirectPolicy, "rag": RAGPolicy, "oracle": OraclePolicy, "random": RandomPolicy,
}


@dataclass(frozen=True)
class PolicyEntry:
    """A policy family named by a spec prefix (``PREFIX:ARGUMENT``); ``target`` is ``"module:attribute"``
    (a class, ``Class.method`` or a function) imported only when a spec asks for it, so the core never
    imports an integration; called as ``target(argument, tasks=, dialect=, seed=, **kwargs)`` unless
    ``call`` adapts it."""

    target: str
    example: str
    """A spec of this family, for error messages."""
    extra: str | None = None
    """The optional extra whose packages the target imports (``pip install 'mmsearch-gym[EXTRA]'``)."""
    call: Callable[..., Policy] | None = None
    """``call(target, argument, tasks, dialect, seed, kwargs)``, or None."""

    def resolve(self, prefix: str) -> Callable[..., Any]:
        """The target object; ConfigError naming the extra to install when a dependency is missing."""
        module_name, _, attribute = self.target.partition(":")
        with self._missing_extra(prefix):
            obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ConfigError(f"policy {prefix}: target {self.target!r} does not exist")
        return obj

    def build(self, prefix: str, argument: str, *, tasks: TaskSet | None, dialect: str | Dialect, seed: int,
              kwargs: Mapping[str, Any]) -> Policy:
        """The policy of ``PREFIX:ARGUMENT``; ConfigError for a missing argument, option or extra."""
        if not argument:
            raise ConfigError(f"{prefix}: needs an argument, e.g. {self.example}")
        target = self.resolve(prefix)
        with self._missing_extra(prefix):  # model loaders import their heavy packages on use
            if self.call is not None:
                return self.call(target, argument, tasks, dialect, seed, dict(kwargs))
            return target(argument, tasks=tasks, dialect=dialect, seed=seed, **kwargs)

    @contextlib.contextmanager
    def _missing_extra(self, prefix: str) -> Iterator[None]:
        try:
            yield
        except TypeError as err:  # options the target does not take
            raise ConfigError(f"policy {prefix}: {err}") from None
        except ModuleNotFoundError as err:
            missing = (err.name or "a dependency").split(".")[0]
            hint = f"pip install 'mmsearch-gym[{self.extra}]'" if self.extra else f"pip install {missing}"
            raise ConfigError(f"policy {prefix}: needs {missing}, which is not installed; {hint}") from None


def _with_seed(target: Any, argument: str, tasks: Any, dialect: Any, seed: int, kwargs: dict) -> Policy:
    return target(argument, seed=seed, **kwargs)


POLICY_REGISTRY: dict[str, PolicyEntry] = {  # spec prefix -> family; register_policy() adds one
    "transformers": PolicyEntry(
        "mmsearch_gym.integrations.transformers_policy:TransformersPolicy.from_pretrained",
        "transformers:./runs/sft/final", extra="trl", call=_with_seed),
    "openai": PolicyEntry("mmsearch_gym.openai_policy:OpenAIPolicy.from_spec", "openai:URL#model", call=_with_seed),
    "sb3": PolicyEntry("mmsearch_gym.integrations.sb3:SB3Policy.load", "sb3:runs/ppo/model.zip", extra="sb3",
                       call=lambda target, argument, tasks, dialect, seed, kwargs: target(
                           argument, tasks=tasks, dialect=dialect, **kwargs)),
}


def register_policy(prefix: str, entry: PolicyEntry) -> None:
    """Let ``make_policy("PREFIX:ARGUMENT")`` build policies of another family (e.g. a plug-in's)."""
    if not prefix or ":" in prefix or prefix in _SCRIPTED:
        raise ConfigError(f"a policy prefix must be a non-empty name without ':' that is not {sorted(_SCRIPTED)}")
    POLICY_REGISTRY[prefix] = entry


POLICY_SPECS: tuple[str, ...] = (
    "direct", "rag", "oracle", "random", "transformers:PATH", "openai:BASE_URL[#model]", "sb3:PATH")
"""The forms ``make_policy`` accepts out of the box."""


def make_policy(spec: str, *, tasks: TaskSet | None = None, dialect: str | Dialect = "mmsearch-r1",
                seed: int = 0, **kwargs: Any) -> Policy:
    """Build a policy from a spec string.

    ``spec`` is one of ``direct``, ``rag``, ``oracle``, ``random`` (scripted; ``tasks`` gives
    them scene annotations and oracle plans, ``reader=`` overrides the evidence reader), or
    ``PREFIX:ARGUMENT`` for a family of :data:`POLICY_REGISTRY`: ``transformers:PATH`` (a local
    Hugging Face model directory; kwargs go to ``TransformersPolicy.from_pretrained``; extra
    ``trl``), ``openai:BASE_URL[#model]`` (an OpenAI-compatible server; kwargs go to
    ``OpenAIPolicy``) or ``sb3:PATH`` (a Stable-Baselines3 decision policy; extra ``sb3``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a policy spec must be a non-empty string; choose one of {list(POLICY_SPECS)}")
    spec = spec.strip()
    get_dialect(dialect)  # fail early on a bad dialect name
    kind, sep, rest = spec.partition(":")
    if not sep and kind in _SCRIPTED:
        try:
            return _SCRIPTED[kind](tasks, seed=seed, **kwargs)
        except TypeError as err:
            raise ConfigError(f"policy {kind!r}: {err}") from None
    if sep and kind in POLICY_REGISTRY:
        return POLICY_REGISTRY[kind].build(kind, rest, tasks=tasks, dialect=dialect, seed=seed, kwargs=kwargs)
    raise ConfigError(f"unknown policy spec {spec!r}; choose one of {list(POLICY_SPECS)}")
