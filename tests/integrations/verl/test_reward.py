"""compute_score: veRL's custom-reward signature over score_episode (needs no veRL, runs everywhere)."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.integrations.verl.reward import compute_score, spec_from_description
from mmsearch_gym.reward import RewardSpec, episode_reward, score_episode

TURNS = ["<reason>look</reason><search><img></search>", "<reason>it is</reason><answer>France</answer>"]


@pytest.mark.parametrize("answers", [["France"], ["Spain"]])
def test_turns_from_the_agent_loop_are_scored_by_score_episode(answers):
    spec = RewardSpec.mmsearch_r1()
    result = compute_score("mmsearch_gym/world", "ignored", np.array(answers, dtype=object),
                           {"mmsearch_turns": np.array(TURNS, dtype=object), "mmsearch_reward": spec.describe()})
    breakdown = score_episode(TURNS, answers, spec)
    assert result["score"] == episode_reward(TURNS, answers, spec) == breakdown.reward
    assert (result["format"], result["searches"], result["penalty"]) == (breakdown.format, 1.0, breakdown.penalty)


def test_without_turns_the_response_is_one_turn():
    solution = "<reason>I know it</reason><answer>Paris</answer>"
    result = compute_score("x", solution, "Paris", {"dialect": "mmsearch-r1"})
    assert result["score"] == episode_reward([solution], ["Paris"], RewardSpec.mmsearch_r1()) == 1.0


def test_spec_descriptions_and_judges():
    deep = RewardSpec.deepmmsearch_r1()
    assert spec_from_description(deep.describe()) == deep
    assert spec_from_description(None, "tool-json").dialect == "tool-json"
    judged = RewardSpec.deepmmsearch_r1(judge=lambda p, a, q: 1.0)
    with pytest.raises(ConfigError, match="judge"):
        spec_from_description(judged.describe())
    with pytest.raises(ConfigError, match="list of assistant turns"):
        compute_score("x", "", ["a"], {"mmsearch_turns": "one string"})
