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

``make_policy(spec)`` builds any of them, or ``transformers:PATH``, ``openai:BASE_URL#model``
and ``sb3:PATH`` (their modules are imported only when asked for, so importing this module
never imports torch).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

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
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.search.base import Hit
from mmsearch_gym.stopping import cut_at_stop  # re-exported: the one stop-string rule
from mmsearch_gym.tasks import SEARCH_FREE, SceneObject, Task, TaskSet

__all__ = [
    "POLICY_SPECS",
    "RESULT_IMAGE_MARKER",
    "DirectPolicy",
    "EpisodeView",
    "EvidenceReaderLike",
    "OraclePolicy",
    "Policy",
    "PolicyError",
    "RAGPolicy",
    "RandomPolicy",
    "ScriptedPolicy",
    "Step",
    "cut_at_stop",
    "interleave_images",
    "make_policy",
    "text_only_content",
]

# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One finished assistant turn of an episode: what the policy said and what came back."""

    text: str
    """The raw action text the policy emitted."""
    action: Action
    """The action as the env parsed (and resolved) it; an unresolvable crop is ``Invalid``."""
    observation_text: str
    """The env's answer: tool results, feedback on an invalid turn, or "" after an answer."""
    hits: list[Hit] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    """The pixel box an image search looked at (None for whole-image searches and other actions)."""


@dataclass
class EpisodeView:
    """Everything a policy may look at for one running episode.

    Build one with :meth:`start` right after ``env.reset`` and call :meth:`record` after every
    ``env.step``; the view then always holds the latest observation and info (``messages`` is
    the full chat so far, ready for a chat template) plus one :class:`Step` per finished turn.
    """

    task_id: str
    question: str
    image: Image.Image
    """The original task image (full resolution, not the letterboxed observation)."""
    dialect: Dialect
    observation: dict[str, Any]
    """The latest env observation ``{"image": uint8 array, "text": str}``."""
    info: dict[str, Any]
    """The latest env info (``messages``, ``category``, counters ...)."""
    steps: list[Step] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat so far (system, user with the image, assistant turns, tool results)."""
        return self.info["messages"]

    @property
    def category(self) -> str | None:
        """The task's category as the env reports it (e.g. ``search_free``), if any."""
        return self.info.get("category")

    @property
    def hits(self) -> list[Hit]:
        """Every hit returned so far, in the order the searches ran."""
        return [hit for step in self.steps for hit in step.hits]

    @property
    def turn(self) -> int:
        """How many assistant turns the episode has finished."""
        return len(self.steps)

    @classmethod
    def start(cls, observation: Mapping[str, Any], info: Mapping[str, Any], *,
              dialect: str | Dialect, image: Image.Image | None = None) -> EpisodeView:
        """The view of an episode right after ``env.reset`` returned ``(observation, info)``.

        ``image`` defaults to the first image of the chat (the env puts the original task image
        in the first user message), so callers normally pass only the dialect (``env.dialect``).
        """
        if "task_id" not in info or "question" not in info or "messages" not in info:
            raise ConfigError("EpisodeView.start needs the info dict that env.reset() returned "
                              "(with task_id, question and messages)")
        if image is None:
            image = first_image(info["messages"])
            if image is None:
                raise ConfigError("the reset info has no image in its messages; pass image=")
        return cls(task_id=str(info["task_id"]), question=str(info["question"]), image=image,
                   dialect=get_dialect(dialect), observation=dict(observation), info=dict(info))

    def record(self, text: str, observation: Mapping[str, Any], info: Mapping[str, Any]) -> Step:
        """Add the turn ``text`` whose ``env.step`` returned ``(observation, info)``; returns its Step."""
        action = info.get("action")
        if action is None:
            action = self.dialect.parse(text)
        step = Step(text=text, action=action, observation_text=str(observation.get("text", "")),
                    hits=list(info.get("hits") or []), box=info.get("box"))
        self.steps.append(step)
        self.observation = dict(observation)
        self.info = dict(info)
        return step


RESULT_IMAGE_MARKER = "<image>"
"""A VLM image token that older recordings may carry in result text (the env now writes
``THUMBNAIL_MARKER`` and interleaves the thumbnails itself)."""


def interleave_images(content: Sequence[Mapping[str, Any]],
                      marker: str = RESULT_IMAGE_MARKER) -> list[dict[str, Any]]:
    """A message's content blocks with each image moved to its marker in the text.

    The env writes an image-search result as one text block whose numbered items carry a
    ``<image>`` marker, followed by one image block per thumbnail. Models should see each
    thumbnail next to its title, and a literal ``<image>`` left in the text would be taken for
    an image placeholder by VLM processors (one more placeholder than images: the classic
    multi-image failure). When the markers and the images pair up, the text is split at the
    markers and the images put in between; otherwise the blocks are kept in order and stray
    markers become the plain words ``[image]``.
    """
    blocks = [dict(b) for b in content]
    texts = [b for b in blocks if b.get("type") == "text"]
    images = [b for b in blocks if b.get("type") == "image"]
    markers = sum(str(b.get("text", "")).count(marker) for b in texts)
    if not images or markers != len(images):
        for b in texts:
            b["text"] = str(b.get("text", "")).replace(marker, "[image]")
        return blocks
    pending = iter(images)
    out: list[dict[str, Any]] = []
    for block in blocks:
        if block.get("type") == "image":
            continue
        if block.get("type") != "text":
            out.append(block)
            continue
        pieces = str(block.get("text", "")).split(marker)
        for i, piece in enumerate(pieces):
            if i:
                out.append(next(pending))
            if piece:
                out.append({"type": "text", "text": piece})
    return out


def text_only_content(content: str | Sequence[Mapping[str, Any]], placeholder: str = "[image]") -> str:
    """A message's content as one string for a text-only model.

    Each image becomes ``placeholder`` at its place (a result thumbnail at its marker, the task
    image before the question), and pieces that would run together are joined by a newline.
    Evaluation (``TransformersPolicy``) and training (the TRL adapter) both render text-only
    chats with this, so a model is evaluated on exactly the text it was trained on.
    """
    if isinstance(content, str):
        return content
    out = ""
    for block in interleave_images(content):
        kind = block.get("type")
        piece = placeholder if kind == "image" else str(block.get("text") or "") if kind == "text" else ""
        if out and piece and not out[-1].isspace() and not piece[0].isspace():
            out += "\n"
        out += piece
    return out


def first_image(messages: Sequence[Mapping[str, Any]]) -> Image.Image | None:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") == "image" \
                        and isinstance(block.get("image"), Image.Image):
                    return block["image"]
    return None


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
            text = UNABLE_TO_ANSWER if rng.random() < 0.2 else " ".join(rng.sample(pool, min(len(pool), rng.randint(1, 3))))
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

POLICY_SPECS: tuple[str, ...] = ("direct", "rag", "oracle", "random", "transformers:PATH",
                                 "openai:BASE_URL[#model]", "sb3:PATH")
"""The forms ``make_policy`` accepts."""


def make_policy(spec: str, *, tasks: TaskSet | None = None, dialect: str | Dialect = "mmsearch-r1",
                seed: int = 0, **kwargs: Any) -> Policy:
    """Build a policy from a spec string.

    ``spec`` is one of ``direct``, ``rag``, ``oracle``, ``random`` (scripted; ``tasks`` gives
    them scene annotations and oracle plans, ``reader=`` overrides the evidence reader),
    ``transformers:PATH`` (a local Hugging Face model directory; kwargs go to
    ``TransformersPolicy.from_pretrained``), ``openai:BASE_URL[#model]`` (an OpenAI-compatible
    server; kwargs go to ``OpenAIPolicy``) or ``sb3:PATH`` (a Stable-Baselines3 decision policy).
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
    if sep and kind == "transformers":
        if not rest:
            raise ConfigError("transformers: needs a model directory, e.g. transformers:./runs/sft/final")
        from mmsearch_gym.integrations.transformers_policy import TransformersPolicy
        return TransformersPolicy.from_pretrained(rest, seed=seed, **kwargs)
    if sep and kind == "openai":
        base_url, _, model = rest.partition("#")
        if not base_url:
            raise ConfigError("openai: needs a base URL, e.g. openai:http://127.0.0.1:8000/v1#Qwen2.5-VL-7B")
        from mmsearch_gym.openai_policy import OpenAIPolicy
        return OpenAIPolicy(base_url, model=model or None, seed=seed, **kwargs)
    if sep and kind == "sb3":
        if not rest:
            raise ConfigError("sb3: needs the path of a saved SB3 policy, e.g. sb3:runs/ppo/model.zip")
        from mmsearch_gym.integrations.sb3 import SB3Policy
        return SB3Policy.load(rest, tasks=tasks, dialect=dialect, **kwargs)
    raise ConfigError(f"unknown policy spec {spec!r}; choose one of {list(POLICY_SPECS)}")
