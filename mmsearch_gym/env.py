"""MMSearchEnv: multimodal web search as a Gymnasium environment.

An action is the model's raw text for one assistant turn. The env parses it with the dialect,
runs the tool through the search backend, and returns the task image plus the text of the
tool result (or of the feedback on an invalid turn). The reward is 0 until the episode ends and
then the papers' episode reward over all assistant turns (``mmsearch_gym.reward``), so the
return of an episode is exactly the paper's reward.
"""

from __future__ import annotations

import io
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from mmsearch_gym.actions import (
    THUMBNAIL_MARKER,
    Action,
    Answer,
    Dialect,
    ImageSearch,
    Invalid,
    TextSearch,
    clamp_box,
    get_dialect,
    safe_text,
)
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.reward import RewardBreakdown, RewardSpec, score_episode
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend, SearchError
from mmsearch_gym.spaces import UnicodeText
from mmsearch_gym.tasks import Box, Task, TaskSet, image_digest

if TYPE_CHECKING:
    from mmsearch_gym.grounding import Grounder

Observation = dict[str, Any]
INFO_MESSAGES = ("full", "delta", "off")
"""The values of MMSearchEnv's ``info_messages`` option."""
_IMAGE_CACHE_SIZE = 64
_MAX_ERROR_CHARS = 1000
"""A tool-error message is cut to this many characters in the observation."""
_log = logging.getLogger(__name__)


@dataclass
class _TaskView:
    """What the env keeps per task between resets (GRPO resets the same task many times)."""

    image: Image.Image
    digest: str
    observation: np.ndarray
    scale: float
    offset: tuple[int, int]


@dataclass
class _Outcome:
    """What one turn did, computed before ``step`` changes any state."""

    action: Action
    box: Box | None = None
    hits: list[Hit] = field(default_factory=list)
    thumbnails: list[Image.Image] = field(default_factory=list)
    error: str | None = None
    result: str = ""
    searched: Literal["image", "text"] | None = None
    """Which search counter this turn raises (a search that was attempted, even if it failed)."""
    terminated: bool = False
    truncated: bool = False


class MMSearchEnv(gym.Env[Observation, str]):
    """A search episode over one task: search turns, then an answer.

    Args:
        tasks: the questions; ``reset`` picks one with the env's own RNG, or by
            ``options={"task_id": ...}`` / ``{"task_index": ...}``.
        backend: where searches go (usually a ``SearchCache`` around a real backend).
        dialect: grammar of actions and prompts: ``mmsearch-r1``, ``deepmmsearch-r1`` or
            ``tool-json`` (or a Dialect instance).
        reward: a RewardSpec or preset name; default: the preset matching the dialect.
        grounder: resolves referring-expression crops (deepmmsearch-r1) to boxes.
        max_turns / image_search_budget / text_search_budget: episode limits; ``None`` takes the
            dialect's paper defaults (mmsearch-r1: 3 turns, 1 image search, 2 text searches).
            Exceeding a budget truncates the episode.
        top_k: results per search.
        on_invalid: ``"feedback"`` (tell the model and go on, as Search-R1) or ``"terminate"``
            (end the episode, as MMSearch-R1).
        image_size: ``(height, width)`` of the letterboxed observation image (policies that want
            full resolution read the original image from ``info["messages"]``). Each
            observation is a fresh copy, as Gymnasium requires, so its size costs step time.
        min_crop_side: crops smaller than this many pixels are grown around their centre.
        max_text_length: observation text longer than this is cut (the space's bound).
        system_prompt: replaces the dialect's system prompt (e.g. the short one a tiny model
            was trained with), so that evaluation shows a model the prompt it learned on.
        info_messages: what ``info["messages"]`` holds: ``"full"`` (default) the whole chat so
            far, ``"delta"`` only the messages added by this reset or step (the caller keeps
            the chat; what a vector env should pickle), ``"off"`` no ``messages`` key at all.

    Info keys after a step: ``task_id``, ``category``, ``action`` (the parsed Action), ``box``,
    ``hits``, ``search_error``, ``turn``, the counters ``image_searches``, ``text_searches`` and
    ``invalid_turns`` (searches the env ran, invalid turns), ``search_log`` (the kinds of
    searches run so far, in order: ``"image"``, ``"crop"``, ``"text"``), ``messages`` (see
    ``info_messages``) and, on the step that ends the episode, ``reward_breakdown``. The
    numbers an episode reports come from these through
    :meth:`mmsearch_gym.metrics.EpisodeResult.from_info`.

    ``close()`` closes what the env holds: its search backend (a SearchCache flushes its lifetime
    hit/miss counters and closes its database) and its grounder, when they have ``close()``.

    Step contract:
        ``step(text)`` never raises for any ``str``; an RL run may feed it whatever a model
        emits. Lone surrogates (U+D800..U+DFFF, which no UTF-8 file, cache key or HTTP request
        can hold) are replaced by U+FFFD first (``actions.safe_text``); NUL, control and bidi
        characters are kept verbatim. The replaced text is what ``turns``, the messages, the
        reward and trajectories see. Malformed text, and every out-of-bounds number in it
        (crop coordinates beyond 1e6 pixels, non-finite numbers, integers of more than 32
        digits, tool calls over 64 KiB), is an ``Invalid`` action. A failing tool (the backend,
        the cache or the grounder raising ``SearchError`` or any other exception that is not
        an ``MMSearchError``, or returning something that is not a list of Hits) is a tool-error
        observation: the turn is recorded with ``info["search_error"]``, the attempted search
        counts against its budget, and the episode goes on. The env changes only after the
        turn's result exists, so the only exceptions leave it exactly as before the call:
        ``TypeError`` for a non-``str`` action, ``ConfigError`` for stepping an ended episode,
        and the user errors a tool or judge raises (an ``MMSearchError`` such as a
        strict-replay ``CacheMiss``), after which the step may be retried.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 1}

    def __init__(
        self,
        tasks: TaskSet,
        backend: SearchBackend,
        *,
        dialect: str | Dialect = "mmsearch-r1",
        reward: RewardSpec | str | None = None,
        grounder: Grounder | None = None,
        max_turns: int | None = None,
        image_search_budget: int | None = None,
        text_search_budget: int | None = None,
        top_k: int = 5,
        on_invalid: Literal["feedback", "terminate"] = "feedback",
        image_size: tuple[int, int] = (224, 224),
        min_crop_side: int = 28,
        max_text_length: int = 32_768,
        render_mode: str | None = None,
        system_prompt: str | None = None,
        info_messages: Literal["full", "delta", "off"] = "full",
    ) -> None:
        if not isinstance(tasks, TaskSet):
            raise ConfigError(f"tasks must be a TaskSet, got {type(tasks).__name__}")
        if not isinstance(backend, SearchBackend):
            raise ConfigError("backend must implement text_search(query, k) and image_search(image, k)")
        if on_invalid not in ("feedback", "terminate"):
            raise ConfigError(f"on_invalid must be 'feedback' or 'terminate', got {on_invalid!r}")
        if info_messages not in INFO_MESSAGES:
            raise ConfigError(f"info_messages must be one of {INFO_MESSAGES}, got {info_messages!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.tasks = tasks
        self.backend = backend
        self.dialect = get_dialect(dialect)
        if reward is None:
            reward = RewardSpec.from_name(self.dialect.name) if self.dialect.name != "tool-json" \
                else RewardSpec.mmsearch_r1(dialect="tool-json", name="tool-json")
        self.reward_spec = RewardSpec.from_name(reward) if isinstance(reward, str) else reward
        self.grounder = grounder
        limits = self.dialect.limits
        self.max_turns = max_turns if max_turns is not None else limits.max_turns
        self.image_search_budget = (image_search_budget if image_search_budget is not None
                                    else limits.image_searches)
        self.text_search_budget = (text_search_budget if text_search_budget is not None
                                   else limits.text_searches if limits.text_searches is not None
                                   else self.max_turns)
        if self.max_turns < 1 or top_k < 1 or self.image_search_budget < 0 or self.text_search_budget < 0:
            raise ConfigError("max_turns and top_k must be >= 1 and budgets >= 0")
        self.top_k = top_k
        self.on_invalid = on_invalid
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.min_crop_side = min_crop_side
        self.max_text_length = max_text_length
        self.render_mode = render_mode
        self.info_messages = info_messages
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ConfigError(f"system_prompt must be a string or None, got {type(system_prompt).__name__}")
        self.system_prompt = system_prompt if system_prompt is not None else self.dialect.system_prompt()

        height, width = self.image_size
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8),
            "text": UnicodeText(max_text_length),
        })
        self.action_space = UnicodeText(max_text_length)

        self._views: OrderedDict[str, _TaskView] = OrderedDict()
        self._task: Task | None = None
        self._view: _TaskView | None = None
        self._turns: list[str] = []
        self._messages: list[dict[str, Any]] = []
        self._image_searches = 0
        self._text_searches = 0
        self._invalid = 0
        self._boxes: list[Box] = []
        self._search_log: list[str] = []
        self._sent_messages = 0
        self._done = True

    # ------------------------------------------------------------------ episode control --
    @property
    def task(self) -> Task:
        """The current task (after ``reset``)."""
        if self._task is None:
            raise ConfigError("call reset() before using the env")
        return self._task

    @property
    def turns(self) -> list[str]:
        """The assistant turns of the current episode so far (a copy)."""
        return list(self._turns)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Observation, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            task = self.tasks.by_id(str(options["task_id"]))
        elif "task_index" in options:
            index = int(options["task_index"])
            if not 0 <= index < len(self.tasks):
                raise ConfigError(f"task_index {index} is outside 0..{len(self.tasks) - 1}")
            task = self.tasks[index]
        else:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self._task = task
        self._view = self._task_view(task)
        self._turns = []
        self._image_searches = self._text_searches = self._invalid = 0
        self._search_log = []
        self._boxes = []
        self._done = False
        width, height = self._view.image.size
        self._messages = [
            {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
            {"role": "user", "content": [
                {"type": "image", "image": self._view.image},
                {"type": "text", "text": self.dialect.user_prompt(task.question)
                 + f"\n(The image is {width}x{height} pixels.)"},
            ]},
        ]
        obs = {"image": self._view.observation.copy(), "text": self._clip(task.question)}
        info = {
            "task_id": task.id,
            "category": task.category,
            "question": task.question,
            "original_size": (width, height),
            "scale": self._view.scale,
            "offset": self._view.offset,
        }
        self._sent_messages = 0
        self._add_messages(info)
        return obs, info

    def step(self, action: str) -> tuple[Observation, SupportsFloat, bool, bool, dict[str, Any]]:
        """One assistant turn; never raises for a ``str`` (see "Step contract" in the class doc)."""
        if self._done or self._task is None:
            raise ConfigError("the episode is over: call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"env.step takes the model's text as a str, got {type(action).__name__}; "
                            "decode or format it first")
        text = safe_text(action)
        out = self._outcome(self.dialect.parse(text))
        if not (out.terminated or out.truncated) and len(self._turns) + 1 >= self.max_turns:
            out.truncated = True
        breakdown = None
        if out.terminated or out.truncated:  # scored before anything changes: a judge may raise
            breakdown = self._score([*self._turns, text])

        # Commit: the tool result exists, so the state changes all at once.
        self._turns.append(text)
        self._messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        if out.result:
            self._messages.append({"role": "user", "content": self._result_content(out)})
        self._image_searches += out.searched == "image"
        self._text_searches += out.searched == "text"
        self._invalid += isinstance(out.action, Invalid)
        if out.searched == "image" and out.box is not None:
            self._boxes.append(out.box)
        if out.searched is not None:
            self._search_log.append("text" if out.searched == "text" else "image" if out.box is None else "crop")
        self._done = breakdown is not None
        info: dict[str, Any] = {
            "task_id": self._task.id,
            "category": self._task.category,
            "action": out.action,
            "box": out.box,
            "hits": out.hits,
            "search_error": out.error,
            "turn": len(self._turns),
            "image_searches": self._image_searches,
            "text_searches": self._text_searches,
            "invalid_turns": self._invalid,
            "search_log": tuple(self._search_log),
        }
        self._add_messages(info)
        reward = 0.0
        if breakdown is not None:
            reward = breakdown.reward
            info["reward_breakdown"] = breakdown
        obs = {"image": self._view.observation.copy(), "text": self._clip(out.result)}  # type: ignore[union-attr]
        return obs, reward, out.terminated, out.truncated, info

    def score(self) -> RewardBreakdown:
        """The reward breakdown of the turns so far (what the episode earns if it ends now)."""
        return self._score(self._turns)

    def _score(self, turns: Sequence[str]) -> RewardBreakdown:
        task = self.task
        return score_episode(turns, task.answers, self.reward_spec, task.question)

    def close(self) -> None:
        """Close the search backend and the grounder (whatever of them has ``close()``).

        A SearchCache writes its lifetime hit/miss counters here (``mmsearch-gym cache stats``).
        Sibling envs may share one backend; closing it twice is harmless (it reopens on use).
        """
        for part in (self.backend, self.grounder):
            close = getattr(part, "close", None)
            if callable(close):
                close()
        super().close()

    # ------------------------------------------------------------------ internals --------
    def _add_messages(self, info: dict[str, Any]) -> None:
        """Put the chat into ``info["messages"]`` as ``info_messages`` asks."""
        if self.info_messages == "full":
            info["messages"] = list(self._messages)
        elif self.info_messages == "delta":
            info["messages"] = self._messages[self._sent_messages:]
        self._sent_messages = len(self._messages)

    def _outcome(self, parsed: Action) -> _Outcome:
        """What a parsed action does, computed without changing the env (``step`` commits it).

        A failing tool (backend, cache, grounder: ``SearchError`` or any exception that is not
        an ``MMSearchError``) becomes a tool-error result; a user error (an ``MMSearchError``
        such as a strict-replay ``CacheMiss``) propagates with the env unchanged.
        """
        out = _Outcome(parsed)
        if isinstance(parsed, ImageSearch):
            try:
                out.action, out.box = self._resolve_region(parsed)
            except Exception as err:  # noqa: BLE001 - a failing grounder is a failing tool
                return self._failed(out, "the grounder", err)
        action = out.action
        if isinstance(action, Answer):
            out.terminated = True
        elif isinstance(action, Invalid):
            out.result = self.dialect.format_feedback(action)
            out.terminated = self.on_invalid == "terminate"
        elif isinstance(action, TextSearch) and self._text_searches >= self.text_search_budget:
            out.result, out.truncated = "The text search budget of this episode is used up.", True
        elif isinstance(action, ImageSearch) and self._image_searches >= self.image_search_budget:
            out.result, out.truncated = "The image search budget of this episode is used up.", True
        else:
            out.searched = "text" if isinstance(action, TextSearch) else "image"
            try:
                out.hits, out.thumbnails = self._search(action, out.box)
                out.result = self.dialect.format_results(action, out.hits)
            except Exception as err:  # noqa: BLE001 - see the docstring
                return self._failed(out, "the search backend", err)
        return out

    def _failed(self, out: _Outcome, tool: str, err: Exception) -> _Outcome:
        """``out`` as a tool error; re-raises user errors (MMSearchError other than SearchError)."""
        if isinstance(err, SearchError):
            message = str(err)
        elif isinstance(err, MMSearchError):
            raise err
        else:  # a bug or an unwrapped failure in the tool: say what, log the traceback
            _log.warning("%s raised %s during env.step; the turn gets a tool error", tool,
                         type(err).__name__, exc_info=err)
            message = f"{tool} raised {type(err).__name__}"
        message = safe_text(message)
        if len(message) > _MAX_ERROR_CHARS:
            message = message[:_MAX_ERROR_CHARS] + "..."
        out.hits, out.thumbnails, out.error = [], [], message
        out.result = self.dialect.format_error(message)
        return out

    def _resolve_region(self, action: ImageSearch) -> tuple[Action, Box | None]:
        region = action.region
        if region.kind == "whole":
            return action, None
        image = self._view.image  # type: ignore[union-attr]
        if region.kind == "expression":
            if self.grounder is None:
                return Invalid("this environment has no grounder for described crops; give a pixel box"), None
            found = self.grounder.ground(region.expression or "", self.task)
            if found is None:
                return Invalid(f"nothing in the image matches {region.expression[:80]!r}"), None  # type: ignore[index]
            raw: Sequence[float] = found
        else:
            raw = region.box  # type: ignore[assignment]
        box = clamp_box(raw, image.width, image.height, self.min_crop_side)
        if box is None:
            return Invalid(f"the crop box does not overlap the {image.width}x{image.height} image"), None
        return action, box

    def _search(self, action: Action, box: Box | None) -> tuple[list[Hit], list[Image.Image]]:
        """The checked hits of one search and, for image searches, their opened thumbnails."""
        if isinstance(action, TextSearch):
            return _checked_hits(self.backend.text_search(action.query, self.top_k)), []
        view = self._view
        query = ImageQuery(view.image, box=box,  # type: ignore[union-attr]
                           url=self.task.image_url if box is None else None, digest=view.digest)  # type: ignore[union-attr]
        return _with_thumbnails(_checked_hits(self.backend.image_search(query, self.top_k)))

    @staticmethod
    def _result_content(out: _Outcome) -> list[dict[str, Any]]:
        """Chat content of a tool-result turn: text with each thumbnail's image block at its marker.

        The dialect writes one THUMBNAIL_MARKER per hit that has a thumbnail, so splitting the
        text at the markers pairs every image with its numbered result, in order.
        """
        text, thumbnails = out.result, out.thumbnails
        pieces = text.split(THUMBNAIL_MARKER) if thumbnails else [text]
        if len(pieces) != len(thumbnails) + 1:  # a snippet quoting the marker: keep text whole
            pieces = [text]
        content: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            if i:
                content.append({"type": "image", "image": thumbnails[i - 1]})
            if piece:
                content.append({"type": "text", "text": piece})
        if len(pieces) == 1:
            content += [{"type": "image", "image": image} for image in thumbnails]
        return content

    def _clip(self, text: str) -> str:
        return text if len(text) <= self.max_text_length else text[: self.max_text_length]

    def _task_view(self, task: Task) -> _TaskView:
        view = self._views.get(task.id)
        if view is not None:
            self._views.move_to_end(task.id)
            return view
        image = task.load_image()
        observation, scale, offset = letterbox(image, self.image_size)
        view = _TaskView(image, image_digest(image), observation, scale, offset)
        self._views[task.id] = view
        if len(self._views) > _IMAGE_CACHE_SIZE:
            self._views.popitem(last=False)
        return view

    # ------------------------------------------------------------------ rendering --------
    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self.transcript()
        if self.render_mode == "rgb_array":
            if self._view is None:
                return np.zeros((*self.image_size, 3), dtype=np.uint8)
            image = self._view.image.copy()
            draw = ImageDraw.Draw(image)
            for box in self._boxes:
                draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 0, 0), width=3)
            return np.asarray(image, dtype=np.uint8)
        return None

    def transcript(self) -> str:
        """The episode so far as plain text (question, turns, tool results)."""
        lines = [f"[task {self._task.id}] {self._task.question}" if self._task else "[no task]"]
        for message in self._messages[2:]:
            texts = [c["text"] for c in message["content"] if c["type"] == "text"]
            lines.append(f"{message['role']}: " + "\n".join(texts))
        return "\n".join(lines)


def _checked_hits(hits: Iterable[Hit]) -> list[Hit]:
    """A backend's hits, checked so that nothing it returns can break a step, a cache or a file.

    Raises TypeError/ValueError (a tool error for the step) for a result that is not a Hit with
    text fields and a finite score; lone surrogates in the text are replaced (``safe_text``).
    """
    checked = list(hits)
    for i, hit in enumerate(checked):
        if not isinstance(hit, Hit):
            raise TypeError(f"result {i + 1} is a {type(hit).__name__}, not a Hit")
        texts = (hit.title, hit.url, hit.snippet, hit.source)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"result {i + 1} has a title, url, snippet or source that is not text")
        try:
            finite = math.isfinite(hit.score)
        except TypeError:
            finite = False
        if not finite:
            raise ValueError(f"result {i + 1} has a score that is not a finite number")
        if hit.thumbnail is not None and not isinstance(hit.thumbnail, (bytes, bytearray, memoryview)):
            raise TypeError(f"result {i + 1} has a thumbnail that is not bytes")
        if not all(t.isascii() for t in texts):
            title, url, snippet, source = (safe_text(t) for t in texts)
            if (title, url, snippet, source) != texts:
                checked[i] = replace(hit, title=title, url=url, snippet=snippet, source=source)
    return checked


def _with_thumbnails(hits: Sequence[Hit]) -> tuple[list[Hit], list[Image.Image]]:
    """The hits and their thumbnails, each opened once (lazily: PIL decodes pixels only when a
    model reads them) for the chat messages; undecodable thumbnail bytes are dropped, the hit kept."""
    checked: list[Hit] = []
    thumbnails: list[Image.Image] = []
    for hit in hits:
        if hit.thumbnail is not None:
            try:
                thumbnails.append(Image.open(io.BytesIO(hit.thumbnail)))
            except Exception:  # any payload PIL cannot identify: the result stays, its picture goes
                hit = replace(hit, thumbnail=None)
        checked.append(hit)
    return checked, thumbnails


def letterbox(image: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``image`` to fit ``(height, width)`` keeping its aspect, centred on black.

    Returns the uint8 array, the scale (observation pixels per original pixel) and the
    ``(x, y)`` offset of the image inside the observation.
    """
    height, width = size
    scale = min(width / image.width, height / image.height)
    new_w = max(1, min(width, round(image.width * scale)))
    new_h = max(1, min(height, round(image.height * scale)))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    canvas[y0:y0 + new_h, x0:x0 + new_w] = np.asarray(resized, dtype=np.uint8)
    canvas.setflags(write=False)
    return canvas, scale, (x0, y0)
