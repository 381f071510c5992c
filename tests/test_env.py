"""MMSearchEnv: Gymnasium compliance, determinism, limits, crops, failures."""

from __future__ import annotations

import pytest
from gymnasium.utils.env_checker import check_env

from mmsearch_gym.actions import Answer, ImageSearch, Invalid, Region, TextSearch, get_dialect
from mmsearch_gym.env import MMSearchEnv, letterbox
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.reward import RewardSpec
from mmsearch_gym.search.base import SearchError

R1 = get_dialect("mmsearch-r1")


def make(tiny_tasks, memory_backend, **kw) -> MMSearchEnv:
    return MMSearchEnv(tiny_tasks, memory_backend, **kw)


def test_check_env_passes(tiny_tasks, memory_backend) -> None:
    for dialect in ("mmsearch-r1", "deepmmsearch-r1", "tool-json"):
        check_env(make(tiny_tasks, memory_backend, dialect=dialect), skip_render_check=False)


def test_full_episode_and_reward(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend)
    obs, info = env.reset(options={"task_id": "t1"})
    assert obs["text"] == tiny_tasks.by_id("t1").question and obs["image"].shape == (224, 224, 3)
    assert info["original_size"] == (320, 240)
    obs, r, term, trunc, info = env.step(R1.format(ImageSearch(), "flag?"))
    assert (r, term, trunc) == (0.0, False, False)
    assert "Flag of France" in obs["text"] and obs["text"].startswith("<information>")
    assert info["hits"][0].title == "Flag of France" and info["image_searches"] == 1
    obs, r, term, trunc, info = env.step(R1.format(TextSearch("France  capital"), "which city"))
    assert "Capital: Paris" in obs["text"] and info["text_searches"] == 1
    obs, r, term, trunc, info = env.step(R1.format(Answer("Paris"), "done"))
    assert term and not trunc
    assert r == pytest.approx(0.91) and info["reward_breakdown"].searches == 2
    roles = [m["role"] for m in info["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    images = [c for m in info["messages"] for c in m["content"] if c["type"] == "image"]
    assert len(images) == 2  # the task image and one result thumbnail
    result = info["messages"][3]["content"]  # the image-search result turn
    assert [c["type"] for c in result] == ["text", "image", "text"]
    assert result[0]["text"].endswith("1. ") and result[2]["text"].startswith(" Flag of France")
    assert "[image]" not in "".join(c.get("text", "") for c in result)
    with pytest.raises(ConfigError, match="reset"):
        env.step("<answer>x</answer>")


def test_same_seed_same_trajectory(tiny_tasks, memory_backend) -> None:
    def run(seed):
        env = make(tiny_tasks, memory_backend)
        env.action_space.seed(seed)
        obs, info = env.reset(seed=seed)
        out = [info["task_id"], obs["text"]]
        for _ in range(3):
            obs, r, term, trunc, info = env.step(env.action_space.sample())
            out += [obs["text"], r, term, trunc]
            if term or trunc:
                break
        return out

    for seed in range(5):
        assert run(seed) == run(seed)
    assert len({run(s)[0] for s in range(20)}) > 1  # seeds really pick different tasks


def test_random_strings_never_raise_and_stay_in_space(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend, dialect="deepmmsearch-r1")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    for i in range(1000):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and 0.0 <= r <= 1.0
        if term or trunc:
            obs, _ = env.reset(seed=i)
            assert env.observation_space.contains(obs)


def test_invalid_feedback_and_terminate(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend)
    env.reset(options={"task_index": 0})
    obs, r, term, trunc, info = env.step("I think it is France")
    assert isinstance(info["action"], Invalid) and not term and "invalid" in obs["text"]
    env = make(tiny_tasks, memory_backend, on_invalid="terminate")
    env.reset(options={"task_index": 0})
    _, r, term, _, info = env.step("I think it is France")
    assert term and r == 0.0 and info["reward_breakdown"].format == 0.0


def test_budgets_truncate(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend, max_turns=5)
    env.reset(options={"task_index": 1})
    env.step(R1.format(ImageSearch()))
    _, r, term, trunc, info = env.step(R1.format(ImageSearch()))
    assert trunc and not term and "budget" in info["messages"][-1]["content"][0]["text"]
    env.reset(options={"task_index": 1})
    env.step(R1.format(TextSearch("a")))
    env.step(R1.format(TextSearch("b")))
    _, _, _, trunc, _ = env.step(R1.format(TextSearch("c")))
    assert trunc
    env = make(tiny_tasks, memory_backend)
    env.reset(options={"task_index": 1})
    for action in (ImageSearch(), TextSearch("a")):
        assert not any(env.step(R1.format(action))[2:4])
    _, r, term, trunc, _ = env.step(R1.format(TextSearch("b")))
    assert trunc and r == 0.0  # three turns used, no answer


def test_crops_are_clamped_and_searched(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend, render_mode="rgb_array")
    env.reset(options={"task_id": "t0"})
    _, _, _, _, info = env.step(R1.format(ImageSearch(Region.from_box(250, -10, 400, 5))))
    assert info["box"] == (250, 0, 320, 28)
    assert memory_backend.calls[-1] == ("image", (250, 0, 320, 28))
    frame = env.render()
    assert frame.shape == (240, 320, 3) and tuple(frame[0, 250]) == (255, 0, 0)
    env.reset(options={"task_id": "t0"})
    _, _, _, _, info = env.step(R1.format(ImageSearch(Region.from_box(1000, 1000, 1200, 1200))))
    assert isinstance(info["action"], Invalid) and "overlap" in info["action"].reason


class _Grounder:
    def ground(self, expression, task):
        return next((o.box for o in task.objects if o.attributes.get("position") in expression), None)


def test_referring_expression_needs_and_uses_a_grounder(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend, dialect="deepmmsearch-r1")
    env.reset(options={"task_id": "t0"})
    text = "<reason>r</reason><img_search>the flag at the top right</img_search>"
    assert isinstance(env.step(text)[4]["action"], Invalid)
    env = make(tiny_tasks, memory_backend, dialect="deepmmsearch-r1", grounder=_Grounder())
    env.reset(options={"task_id": "t0"})
    info = env.step(text)[4]
    assert isinstance(info["action"], ImageSearch) and info["box"] == (200, 20, 300, 90)
    info = env.step("<reason>r</reason><img_search>the dog</img_search>")[4]
    assert isinstance(info["action"], Invalid) and "nothing in the image" in info["action"].reason


class _Failing:
    name, version = "failing", "1"

    def __init__(self, exc):
        self.exc = exc

    def text_search(self, query, k):
        raise self.exc

    def image_search(self, image, k):
        raise self.exc


def test_search_failure_is_an_observation_but_user_errors_raise(tiny_tasks) -> None:
    env = MMSearchEnv(tiny_tasks, _Failing(SearchError("HTTP 503 from the API")))
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(R1.format(TextSearch("x")))
    assert "search failed: HTTP 503" in obs["text"] and not (term or trunc)
    assert info["search_error"] == "HTTP 503 from the API"
    env = MMSearchEnv(tiny_tasks, _Failing(MMSearchError("strict replay miss")))
    env.reset(seed=0)
    with pytest.raises(MMSearchError, match="strict replay"):
        env.step(R1.format(TextSearch("x")))


def test_reward_spec_and_dialect_defaults(tiny_tasks, memory_backend) -> None:
    assert make(tiny_tasks, memory_backend, dialect="deepmmsearch-r1").reward_spec.name == "deepmmsearch-r1"
    assert make(tiny_tasks, memory_backend).max_turns == 3
    env = make(tiny_tasks, memory_backend, reward=RewardSpec.mmsearch_r1(search_penalty=0.0))
    env.reset(options={"task_id": "t1"})
    env.step(R1.format(ImageSearch()))
    assert env.step(R1.format(Answer("Paris")))[1] == pytest.approx(1.0)


def test_bad_configuration_raises_config_errors(tiny_tasks, memory_backend) -> None:
    with pytest.raises(ConfigError):
        MMSearchEnv([1, 2], memory_backend)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        MMSearchEnv(tiny_tasks, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        make(tiny_tasks, memory_backend, on_invalid="ignore")
    env = make(tiny_tasks, memory_backend)
    with pytest.raises(ConfigError, match="no task"):
        env.reset(options={"task_id": "nope"})


def test_letterbox_keeps_aspect() -> None:
    from PIL import Image
    arr, scale, offset = letterbox(Image.new("RGB", (400, 200), (255, 255, 255)), (100, 100))
    assert arr.shape == (100, 100, 3) and scale == 0.25 and offset == (0, 25)
    assert arr[0, 0].sum() == 0 and arr[50, 50].sum() == 765


def test_ansi_render_is_a_transcript(tiny_tasks, memory_backend) -> None:
    env = make(tiny_tasks, memory_backend, render_mode="ansi")
    env.reset(options={"task_id": "t1"})
    env.step(R1.format(TextSearch("france capital")))
    assert "Capital: Paris" in env.render()


def test_undecodable_thumbnails_are_dropped_not_fatal(tiny_tasks) -> None:
    from mmsearch_gym.search.base import Hit, MemoryBackend
    bad = Hit("Broken", "https://example.org/broken", "snippet", 1.0, thumbnail=b"not an image")
    env = MMSearchEnv(tiny_tasks, MemoryBackend(default_image_hits=[bad]))
    env.reset(seed=0)
    obs, _, _, _, info = env.step(R1.format(ImageSearch()))
    assert info["hits"][0].thumbnail is None and "Broken" in obs["text"] and "[image]" not in obs["text"]


def test_async_vector_env_keeps_unicode_text_in_shared_memory(tiny_tasks, memory_backend) -> None:
    import functools

    import gymnasium as gym
    envs = gym.vector.AsyncVectorEnv([functools.partial(MMSearchEnv, tiny_tasks, memory_backend)] * 2,
                                     shared_memory=True, context="spawn")
    try:
        obs, _ = envs.reset(seed=[0, 1], options={"task_id": "t1"})
        assert list(obs["text"]) == [tiny_tasks.by_id("t1").question] * 2
        obs, *_ = envs.step(["<reason>é中🙂</reason><text_search>France capital</text_search>", "été 中文"])
        assert "Capital: Paris" in obs["text"][0] and "invalid" in obs["text"][1]
    finally:
        envs.close()


def test_system_prompt_can_be_replaced(tiny_tasks, memory_backend) -> None:
    """A model trained on a short system prompt is evaluated on that same prompt."""
    default = make(tiny_tasks, memory_backend)
    _, info = default.reset(seed=0)
    assert info["messages"][0]["content"][0]["text"] == default.dialect.system_prompt()
    short = make(tiny_tasks, memory_backend, system_prompt="Answer briefly.")
    _, info = short.reset(seed=0)
    assert info["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}
    with pytest.raises(ConfigError, match="system_prompt"):
        make(tiny_tasks, memory_backend, system_prompt=["not", "text"])
