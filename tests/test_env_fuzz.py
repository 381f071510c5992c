"""The step contract: ``env.step(any str)`` never raises and leaves the env consistent.

Hypothesis drives hostile model text (lone surrogates, control and bidi characters, huge and
non-finite numbers, deep JSON, tag soup, long inputs) through every dialect, over a real
``SearchCache`` (whose keys must encode the text); failing backends and grounders raise
arbitrary exceptions mid-step. After every step the invariants below must hold, and a later
correct answer must still be scored exactly as ``score_episode`` scores the recorded turns.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixture_world import france_backend, planned, scene_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsearch_gym.actions import MAX_COORDINATE, Answer, ImageSearch, Invalid, TextSearch, get_dialect, safe_text
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.registration import make_env
from mmsearch_gym.replay import replay
from mmsearch_gym.reward import RewardBreakdown, RewardSpec, score_episode
from mmsearch_gym.search.base import Hit, MemoryBackend, SearchError
from mmsearch_gym.search.cache import SearchCache
from mmsearch_gym.tasks import SceneObject, Task, TaskSet
from mmsearch_gym.trajectories import ImageRecord, Trajectory, TrajectoryWriter, Turn, read_trajectories

DIALECTS = ("mmsearch-r1", "deepmmsearch-r1", "tool-json")
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# A world and one env per dialect (module level: hypothesis reruns the test body many times)
# ---------------------------------------------------------------------------------------------


def _tasks() -> TaskSet:
    flag = (SceneObject("flag", (200, 20, 300, 90), entity="fr", attributes={"position": "top right"}),)
    return TaskSet([
        Task("t0", "Which country's flag is shown?", ("France",), category="crop",
             image_bytes=scene_png((10, 120, 30)), objects=flag),
        Task("t1", "What is the capital?", ("Paris",), category="image_then_text",
             image_bytes=scene_png((200, 10, 10))),
    ], name="fuzz")


class _PositionGrounder:
    def ground(self, expression: str, task: Task) -> Any:
        return next((o.box for o in task.objects if o.attributes.get("position", "?") in expression), None)


@functools.cache
def _env(dialect: str) -> MMSearchEnv:
    cache = SearchCache(france_backend(), Path(tempfile.mkdtemp(prefix="fuzz-cache-")))
    return MMSearchEnv(_tasks(), cache, dialect=dialect, grounder=_PositionGrounder(), max_text_length=4096)


# ---------------------------------------------------------------------------------------------
# Hostile text
# ---------------------------------------------------------------------------------------------

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
CONTROL = st.characters(categories=("Cc", "Cf", "Zl", "Zp"))
BIDI = st.sampled_from(["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                        "\u2069", "\u200e", "\u200f", "\u061c"])
HOSTILE_CHAR = st.one_of(SURROGATE, CONTROL, BIDI, st.characters(), st.sampled_from(["\x00", "\ufffd", "\ufeff"]))
hostile_text = st.lists(HOSTILE_CHAR, max_size=30).map("".join)

NUMBER = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(20, 5000).map(lambda n: "9" * n),  # up to past Python's 4300-digit int limit
    st.integers(1, 400).map(lambda n: "-" + "1" * n),
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e308", "4.9e-324", "1e6",
                     "1000001", "0.5", "-0", "1_000", "٣", "nan", "inf"]),
    st.floats().map(repr),
)
box_text = st.lists(NUMBER, min_size=3, max_size=5).map(",".join)
TAGS = ["<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
        "<search><img></search>", "<crop>", "</crop>", "<img_search>", "</img_search>", "<img>",
        "<tool_call>", "</tool_call>", "{", "}", "[", "]", '"', ",", ":", '"name"', '"arguments"',
        '"text_search"', '"image_search"', '"query"', '"bbox_2d"', '"\\ud800"', '"\\udc00\\ud800"']
tag_soup = st.lists(st.one_of(st.sampled_from(TAGS), hostile_text, NUMBER), max_size=40).map("".join)


def _call(name: str, arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def _raw_call(name: str, arguments_json: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments_json}}}</tool_call>'


shaped = st.one_of(
    hostile_text.map(lambda q: f"<reason>r</reason><text_search>{q}</text_search>"),
    hostile_text.map(lambda e: f"<reason>r</reason><img_search>{e}</img_search>"),
    box_text.map(lambda b: f"<reason>r</reason><crop>{b}</crop><search><img></search>"),
    box_text.map(lambda b: f"<reason>r</reason><crop>{b}</crop><img_search><img></img_search>"),
    box_text.map(lambda b: f"<img_search>{b}</img_search>"),
    hostile_text.map(lambda q: _call("text_search", {"query": q})),  # json.dumps escapes surrogates
    box_text.map(lambda b: _raw_call("image_search", f'{{"bbox_2d": [{b}]}}')),
    box_text.map(lambda b: _raw_call("image_search", json.dumps(json.dumps({"bbox_2d": f"[{b}]"})))),
    st.integers(1, 60_000).map(lambda n: _raw_call("text_search", "[" * n + "]" * n)),
    st.integers(1, 20_000).map(lambda n: '<tool_call>{"name": "x", "arguments": ' + '{"a":' * n + "</tool_call>"),
    hostile_text.map(lambda a: _call("answer", {"answer": a})),
    hostile_text.map(lambda a: f"<reason>r</reason><answer>{a}</answer>"),
)
long_text = st.tuples(st.sampled_from(TAGS + ["x", "é", "\ud800", "\u202e", "the ", "a—"]),
                      st.integers(1_000, 30_000)).map(lambda p: p[0] * p[1])
ACTION = st.one_of(shaped, tag_soup, hostile_text, long_text)


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_step(env: MMSearchEnv, before: dict[str, int], result: tuple, number: int) -> None:
    obs, reward, terminated, truncated, info = result
    assert env.observation_space.contains(obs) and _encodable(obs["text"])
    assert info["turn"] == number == len(env.turns)
    assert all(_encodable(t) for t in env.turns)
    for message in info["messages"]:
        assert all(_encodable(c["text"]) for c in message["content"] if c["type"] == "text")
    action = info["action"]
    assert isinstance(action, (TextSearch, ImageSearch, Answer, Invalid))
    if isinstance(action, ImageSearch) and action.region.box is not None:
        assert all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in action.region.box)
    grew = {k: info[k] - before[k] for k in before}
    assert grew["invalid_turns"] == isinstance(action, Invalid)
    budget_hit = truncated and "budget" in obs["text"]
    assert grew["text_searches"] == (isinstance(action, TextSearch) and not budget_hit)
    assert grew["image_searches"] == (isinstance(action, ImageSearch) and not budget_hit
                                      and not (info["search_error"] or "").startswith("the grounder"))
    assert info["text_searches"] <= env.text_search_budget and info["image_searches"] <= env.image_search_budget
    assert terminated == isinstance(action, Answer)
    assert ("reward_breakdown" in info) == (terminated or truncated)
    if terminated or truncated:
        task = env.task
        expected = score_episode(env.turns, task.answers, env.reward_spec, task.question)
        assert info["reward_breakdown"] == expected and reward == expected.reward
        with pytest.raises(ConfigError, match="reset"):
            env.step("<answer>x</answer>")
    else:
        assert reward == 0.0


def _counters(info: dict[str, Any]) -> dict[str, int]:
    return {k: info.get(k, 0) for k in ("image_searches", "text_searches", "invalid_turns")}


def _play(env: MMSearchEnv, actions: list[str], task_index: int) -> None:
    """Step ``actions``, checking every step; if the episode is still going, answer correctly."""
    env.reset(seed=0, options={"task_index": task_index})
    before = _counters({})
    for number, text in enumerate(actions, 1):
        result = env.step(text)
        _check_step(env, before, result, number)
        before = _counters(result[4])
        if result[2] or result[3]:
            return
    gold = env.task.answers[0]
    result = env.step(env.dialect.format(Answer(gold), "done"))
    _check_step(env, before, result, len(actions) + 1)
    assert result[2] and result[4]["reward_breakdown"].raw_score == 1.0


@pytest.mark.parametrize("dialect", DIALECTS)
@FUZZ
@given(actions=st.lists(ACTION, min_size=1, max_size=3), task_index=st.integers(0, 1))
def test_any_text_never_raises_and_keeps_the_env_consistent(dialect: str, actions: list[str],
                                                             task_index: int) -> None:
    _play(_env(dialect), actions, task_index)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("text", [
    "<text_search>\ud800</text_search>", "<img_search>\udc00 top right</img_search>",
    _raw_call("text_search", '{"query": "\\ud800"}'), _raw_call("answer", '{"answer": "\\udfff"}'),
    _raw_call("image_search", '{"bbox_2d": [1, 2, 3, %s]}' % ("9" * 400)),
    _raw_call("image_search", '{"bbox_2d": [1, 2, 3, %s]}' % ("9" * 5000)),
    _raw_call("image_search", '{"bbox_2d": [1, 2, 3, 1e999]}'),
    _raw_call("image_search", '{"bbox_2d": [1, 2, NaN, 4]}'),
    "<crop>1,2,3," + "9" * 190 + "</crop><search><img></search>",
    "<tool_call>" + "[" * 100_000 + "</tool_call>", "\x00" * 10, "\u202e<answer>x</answer>",
    "<reason>" + "x" * 1_100_000 + "</reason>", "<answer>" + "a—" * 300_000 + "</answer>",
])
def test_measured_failures_are_handled(dialect: str, text: str) -> None:
    """The inputs that raised before the step contract (issue 16), stepped then answered."""
    _play(_env(dialect), [text], 0)


def test_surrogates_become_replacement_characters_everywhere() -> None:
    env = _env("tool-json")
    env.reset(seed=0, options={"task_index": 1})
    obs, _, _, _, info = env.step(_raw_call("text_search", '{"query": "capital \\ud800"}'))
    assert info["action"] == TextSearch("capital \ufffd") and info["search_error"] is None
    env = _env("mmsearch-r1")
    env.reset(seed=0, options={"task_index": 1})
    env.step("<reason>\ud83d\ude00</reason><text_search>q\ud800</text_search>")
    assert env.turns == ["<reason>\ufffd\ufffd</reason><text_search>q\ufffd</text_search>"]
    assert safe_text(env.turns[0]) is env.turns[0]


def test_non_text_action_is_a_type_error_and_changes_nothing() -> None:
    env = _env("mmsearch-r1")
    env.reset(seed=0, options={"task_index": 0})
    for action in (b"<answer>x</answer>", None, 3, 2.5, ["<answer>x</answer>"]):
        with pytest.raises(TypeError, match="str"):
            env.step(action)  # type: ignore[arg-type]
    assert env.turns == [] and env.step("<answer>France</answer>")[2]


# ---------------------------------------------------------------------------------------------
# Failing tools
# ---------------------------------------------------------------------------------------------


class _Raising:
    """A backend that raises ``exc`` (or returns ``result``) on every search."""

    name, version = "raising", "1"

    def __init__(self, exc: BaseException | None = None, result: Any = None) -> None:
        self.exc, self.result = exc, result

    def text_search(self, query: str, k: int) -> Any:
        if self.exc is not None:
            raise self.exc
        return self.result() if callable(self.result) else self.result

    image_search = text_search  # type: ignore[assignment]


def _exploding_hits() -> Iterator[Hit]:
    yield Hit("t", "u", "s")
    raise ConnectionResetError("peer reset")


def _bad_results() -> Iterator[Any]:
    yield None
    yield [1, 2]
    yield [Hit("t", "u", "s", float("nan"))]
    yield [Hit(None, "u", "s")]  # type: ignore[arg-type]
    yield [Hit("t", "u", "s", "high")]  # type: ignore[arg-type]
    yield [Hit("t", "u", "s", thumbnail="not bytes")]  # type: ignore[arg-type]
    yield _exploding_hits  # a generator that raises while the env lists it


FAILURES = [OSError(28, "No space left on device"), RuntimeError("boom"), RecursionError(), KeyError("k"),
            ValueError("Exceeds the limit (4300 digits)"), TypeError("x"), ZeroDivisionError(),
            UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), SearchError("HTTP 503")]


def _backend_id(backend: _Raising) -> str:
    if backend.exc is not None:
        return type(backend.exc).__name__
    return "returns-" + getattr(backend.result, "__name__", repr(backend.result)[:20])


@pytest.mark.parametrize("backend", [_Raising(exc) for exc in FAILURES] + [_Raising(result=r) for r in _bad_results()],
                         ids=_backend_id)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_failing_backend_is_a_tool_error_and_the_episode_goes_on(dialect: str, backend: _Raising,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    env = MMSearchEnv(_tasks(), backend, dialect=dialect, max_turns=5)
    d = get_dialect(dialect)
    env.reset(seed=0, options={"task_index": 1})
    for number, action in enumerate([ImageSearch(), TextSearch("capital")], 1):
        obs, reward, terminated, truncated, info = env.step(d.format(action))
        assert "search failed" in obs["text"] and info["search_error"] and info["hits"] == []
        assert not (terminated or truncated) and reward == 0.0 and len(env.turns) == number
        assert info["messages"][-1]["role"] == "user" and info["messages"][-2]["role"] == "assistant"
    assert (info["image_searches"], info["text_searches"], info["invalid_turns"]) == (1, 1, 0)
    _, reward, terminated, _, info = env.step(d.format(Answer("Paris")))
    assert terminated and info["reward_breakdown"].raw_score == 1.0
    assert info["reward_breakdown"] == score_episode(env.turns, ("Paris",), env.reward_spec, env.task.question)
    if backend.exc is not None and not isinstance(backend.exc, SearchError):
        assert info["messages"][3]["content"][0]["text"].count(type(backend.exc).__name__) == 1
        assert any(type(backend.exc).__name__ in r.getMessage() for r in caplog.records)


class _BrokenGrounder:
    def ground(self, expression: str, task: Task) -> Any:
        raise RuntimeError("the detector crashed")


def test_a_failing_grounder_is_a_tool_error_without_a_search() -> None:
    env = MMSearchEnv(_tasks(), france_backend(), dialect="deepmmsearch-r1", grounder=_BrokenGrounder())
    env.reset(seed=0, options={"task_index": 0})
    obs, _, terminated, truncated, info = env.step("<reason>r</reason><img_search>the flag</img_search>")
    assert info["search_error"] == "the grounder raised RuntimeError" and "search failed" in obs["text"]
    assert (info["image_searches"], info["invalid_turns"], len(env.turns)) == (0, 0, 1)
    assert not (terminated or truncated)
    assert env.step("<reason>r</reason><img_search><img></img_search>")[4]["image_searches"] == 1


class _OnceUserError(_Raising):
    """Raises a user error (MMSearchError, e.g. a strict-replay miss) once, then answers."""

    def text_search(self, query: str, k: int) -> Any:
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        return [Hit("France", "https://example.org/fr", "Capital: Paris.", 1.0)]

    image_search = text_search  # type: ignore[assignment]


def test_user_errors_propagate_and_leave_the_env_exactly_as_before() -> None:
    backend = _OnceUserError()
    env = MMSearchEnv(_tasks(), backend)
    env.reset(seed=0, options={"task_index": 1})
    env.step("<reason>r</reason><search><img></search>")
    backend.exc = MMSearchError("strict replay miss")
    state = (env.turns, env.transcript(), env.score())
    with pytest.raises(MMSearchError, match="strict replay"):
        env.step("<reason>r</reason><text_search>capital</text_search>")
    assert (env.turns, env.transcript(), env.score()) == state
    _, _, _, _, info = env.step("<reason>r</reason><text_search>capital</text_search>")  # the retry works
    assert (info["turn"], info["text_searches"], info["image_searches"]) == (2, 1, 1)


def test_a_raising_judge_leaves_the_episode_open() -> None:
    calls = []

    def judge(prediction: str, answers: Any, question: str) -> float:
        calls.append(prediction)
        if len(calls) == 1:
            raise RuntimeError("judge endpoint down")
        return 1.0

    env = MMSearchEnv(_tasks(), france_backend(), reward=RewardSpec(scorer=judge))
    env.reset(seed=0, options={"task_index": 0})
    with pytest.raises(RuntimeError, match="judge"):
        env.step("<reason>r</reason><answer>France</answer>")
    assert env.turns == []
    _, reward, terminated, _, _ = env.step("<reason>r</reason><answer>France</answer>")
    assert terminated and reward == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Trajectories hold what the env saw
# ---------------------------------------------------------------------------------------------


def test_writer_replaces_surrogates_like_the_env(tmp_path: Path) -> None:
    text = "<answer>\ud800 Paris \udfff</answer>"
    counts = {"image_searches": 0, "text_searches": 0, "invalid_turns": 0}
    turn = Turn(text=text, action={"kind": "answer", "text": "\ud800 Paris \udfff"}, observation="",
                reward=0.1, terminated=True, counts=counts)
    breakdown = RewardBreakdown(0.1, 0.0, 0.0, 1.0, 0, 0, 0, 0.0, "\ud800 Paris \udfff")
    traj = Trajectory(0, "t1", "crop", "q\ud800", ["Paris"], 0, "p", {"id": None}, ImageRecord("f" * 64, 3, 4),
                      [turn], breakdown, True, False)
    with TrajectoryWriter(tmp_path / "t.jsonl") as writer:
        writer.write(traj)
    (back,) = read_trajectories(tmp_path / "t.jsonl")
    assert back.turns[0].text == safe_text(text) == "<answer>\ufffd Paris \ufffd</answer>"
    assert back.reward.answer == "\ufffd Paris \ufffd" and back.question == "q\ufffd"


class _SurrogatePolicy:
    """Searches with a lone surrogate in the query, then answers with one in the answer."""

    name = "surrogates"

    def act(self, episodes: Any) -> list[str]:
        return ["<reason>\ud800</reason><text_search>france capital\udc00</text_search>" if not e.steps
                else "<reason>r</reason><answer>Paris\ud800</answer>" for e in episodes]


def test_surrogate_episodes_record_and_replay_bit_for_bit(tmp_path: Path) -> None:
    tasks = planned(_tiny())
    cache = {"mode": "readthrough", "dir": str(tmp_path / "cache")}
    make = functools.partial(make_env, tasks=tasks, backend=france_backend(), cache=cache)
    evaluate(make, _SurrogatePolicy(), trajectories=tmp_path / "run.jsonl", progress=False)
    trajs = read_trajectories(tmp_path / "run.jsonl")
    assert trajs and all(_encodable(t.turns[0].text) for t in trajs)
    replay_env = functools.partial(make_env, tasks=tasks, backend=MemoryBackend(),
                                   cache={"mode": "replay", "dir": str(tmp_path / "cache")})
    report = replay(tmp_path / "run.jsonl", env=replay_env)
    assert report.ok, report.summary()


def _tiny() -> TaskSet:
    objects = (SceneObject("flag", (200, 20, 300, 90), entity="fr", attributes={"position": "top right"}),)
    return TaskSet([
        Task("t0", "Which country's flag is shown at the top right?", ("France",), category="crop",
             image_bytes=scene_png((10, 120, 30)), objects=objects),
        Task("t1", "What is the capital of the country whose flag is shown?", ("Paris",),
             category="image_then_text", image_bytes=scene_png((200, 10, 10))),
        Task("t2", "How many flags are in this picture?", ("1",), category="search_free",
             image_bytes=scene_png((0, 0, 200), (200, 300)), objects=objects),
    ], name="tiny")

