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


def test_tool_route_adds_the_last_turn_as_the_response_ends_with_it():
    spec = RewardSpec.deepmmsearch_r1()
    stepped = ["<reason></reason><img_search><img></img_search>"]
    final = "<reason>r</reason><answer>Peru</answer>"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": []},
                {"role": "tool", "content": "<information>...</information>"},
                {"role": "assistant", "content": final + "<|im_end|>"}]  # kept with special tokens
    info = {"mmsearch_turns": stepped, "mmsearch_reward": spec.describe(), "mmsearch_messages": messages,
            "mmsearch_call_message": 1, "mmsearch_episode_over": False}
    response = "<tool_call>{}</tool_call>\nuser\n<information>...</information>\nassistant\n" + final
    assert compute_score("x", response, ["Peru"], info)["score"] == episode_reward([*stepped, final], ["Peru"], spec)
    cut = response[:-len("</answer>")]  # cut at response_length: the turn as the response has it
    assert compute_score("x", cut, ["Peru"], info)["score"] == episode_reward([*stepped, final[:-9]], ["Peru"], spec)
    over = {**info, "mmsearch_episode_over": True}  # the env ended the episode: later turns are not its
    assert compute_score("x", response, ["Peru"], over)["score"] == episode_reward(stepped, ["Peru"], spec)
