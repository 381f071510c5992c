"""LLMJudge: the verdict parser, retries on unparseable replies, recorded verdicts replayed offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from search.webfake import FakeWebServer, Reply

from mmsearch_gym.reward import RewardSpec, episode_reward
from mmsearch_gym.search.cache import CacheMiss
from mmsearch_gym.services.client import ServiceError
from mmsearch_gym.services.judge import LLMJudge, parse_verdict

from .fakes import completion


@pytest.mark.parametrize("reply, verdict", [
    ("CORRECT", True), ("incorrect", False), ("Verdict: Correct.", True), ("The answer is not correct", False),
    ("<think>maybe incorrect?</think>CORRECT", True), ("yes", True), ("No.", False), ("1", True),
    ("I cannot tell", None), ("", None)])
def test_parse_verdict(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


@given(st.text(max_size=80))
def test_parse_verdict_never_raises(text: str) -> None:
    assert parse_verdict(text) in (True, False, None)


def _judge(url: str, directory: Path, mode: str = "readthrough") -> LLMJudge:
    return LLMJudge({"url": url + "/v1#judge-m", "trust_env": False, "base_delay": 0}, cache_dir=directory,
                    cache_mode=mode)


def test_asks_again_when_the_reply_states_no_verdict_then_records(tmp_path: Path) -> None:
    replies = [Reply(200, completion("Let me think about it")), Reply(200, completion("CORRECT"))]
    with FakeWebServer(replies) as server:
        judge = _judge(server.url, tmp_path)
        assert judge("It is Paris", ["Paris"], "Capital of France?") == 1.0
        retry = server.requests[1].json()["messages"]
        assert retry[-1]["content"].startswith("Reply with exactly one word")
        assert judge("It is Paris", ["Paris"], "Capital of France?") == 1.0  # recorded: no third request
        assert len(server.requests) == 2
    assert judge.recorder.stats() == {"live_calls": 1, "cache_hits": 1}
    offline = _judge("http://127.0.0.1:9", tmp_path, "replay")  # nothing listens there
    assert offline("It is Paris", ["Paris"], "Capital of France?") == 1.0
    with pytest.raises(CacheMiss):
        offline("Lyon", ["Paris"], "Capital of France?")


def test_no_verdict_after_max_tries_is_a_service_error_never_a_guess(tmp_path: Path) -> None:
    with FakeWebServer([Reply(200, completion("hmm"))] * 3) as server, \
            pytest.raises(ServiceError, match="no verdict"):
        _judge(server.url, tmp_path)("x", ["y"], "q")


def test_the_judge_is_the_rewards_scorer(tmp_path: Path) -> None:
    with FakeWebServer([Reply(200, completion("INCORRECT"))]) as server:
        judge = _judge(server.url, tmp_path)
        spec = RewardSpec.deepmmsearch_r1(judge=judge)
        assert spec.describe()["scorer"] == "judge:judge-m"
        assert episode_reward(["<reason>r</reason><answer>Lyon</answer>"], ["Paris"], spec, "q") == \
            pytest.approx(0.1)
    prompt = server.requests[0].json()["messages"]
    assert "QUESTION: q\nGOLD ANSWERS: Paris\nPREDICTION: Lyon" in prompt[1]["content"]
