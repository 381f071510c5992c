"""Reward: the papers' formulas, proven against an independent regex transcription of
MMSearch-R1's scorer (as PROTOCOLS.md states it) on generated turn sequences."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.reward import (
    RewardSpec,
    episode_reward,
    exact_match,
    normalize_answer,
    score_episode,
    substring_exact_match,
    token_f1,
)


# ---- independent reference: a literal, regex-based transcription of the paper's rule ---------
def _ref_norm(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _ref_is_answer(r):
    return (re.match(r"^<reason>.*</reason>.*<answer>.*</answer>$", r, re.DOTALL) is not None
            and r.count("<reason>") == 1 and r.count("</reason>") == 1
            and r.count("<answer>") == 1 and r.count("</answer>") == 1
            and "<search><img></search>" not in r and "<text_search>" not in r and "</text_search>" not in r)


def _ref_is_image(r):
    return (re.match(r"^<reason>.*</reason>.*<search><img></search>$", r, re.DOTALL) is not None
            and r.count("<reason>") == 1 and r.count("</reason>") == 1
            and r.count("<search><img></search>") == 1
            and "<answer>" not in r and "</answer>" not in r and "<text_search>" not in r and "</text_search>" not in r)


def _ref_is_text(r):
    return (re.match(r"^<reason>.*</reason>.*<text_search>.*</text_search>$", r, re.DOTALL) is not None
            and r.count("<reason>") == 1 and r.count("</reason>") == 1
            and r.count("<text_search>") == 1 and r.count("</text_search>") == 1
            and "<answer>" not in r and "</answer>" not in r and "<search><img></search>" not in r)


def reference_score(turns, answers, p=0.1, f=0.1, per_search=False, mode="EM"):
    t = [x.strip() for x in turns]
    counted = t if len(t) == 1 else t[:-1]
    # a turn counts at most once, even when it holds both an image-search and a text-search tag
    searches = sum(1 for r in counted
                   if "<search><img></search>" in r or ("<text_search>" in r and "</text_search>" in r))
    if len(t) == 1:
        fmt = int(_ref_is_answer(t[0]))
    elif len(t) == 2:
        fmt = int(_ref_is_answer(t[1]) and (_ref_is_image(t[0]) or _ref_is_text(t[0])))
    else:
        fmt = int(_ref_is_image(t[0]) and _ref_is_text(t[1]) and _ref_is_answer(t[2]))
    matches = list(re.finditer(r"<answer>(.*?)</answer>", turns[-1], re.DOTALL))
    score = 0
    if matches:
        pred = _ref_norm(matches[-1].group(1).strip())
        gold = [_ref_norm(a) for a in answers]
        score = int(pred in gold) if mode == "EM" else int(any(g in pred for g in gold))
    if searches > 0 and score > 0.99:
        for _ in range(searches if per_search else 1):
            score *= 1 - p
    return (1 - f) * score + f * fmt


PIECES = ["<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
          "<search><img></search>", "<crop>1,2,3,4</crop>", "Paris", "paris.", "The Paris", "x",
          " ", "\n", "<search>", "London"]
turn = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    st.builds(lambda r, a: f"<reason>{r}</reason>{a}", st.sampled_from(["", "think", "a<b"]),
              st.sampled_from(["<search><img></search>", "<text_search>Paris capital</text_search>",
                               "<answer>Paris</answer>", "<answer>the paris</answer>", "<answer>Lyon</answer>",
                               "<crop>1,2,30,40</crop><search><img></search>", " <answer>Paris</answer>\n"])),
)
episodes = st.lists(turn, min_size=1, max_size=3)
both_tags_turn = st.builds(
    lambda r, first, second, tail: f"<reason>{r}</reason>{first}{second}{tail}", st.sampled_from(["", "think"]),
    st.sampled_from(["<search><img></search>", "<text_search>q</text_search>", "<text_search>", ""]),
    st.sampled_from(["<text_search>Paris capital</text_search>", "<search><img></search>", "</text_search>"]),
    st.sampled_from(["", "<answer>Paris</answer>", "<search><img></search>"]))
mixed_episodes = st.lists(st.one_of(both_tags_turn, turn), min_size=1, max_size=3)


@settings(max_examples=1500, deadline=None)
@given(episodes, st.booleans())
def test_mmsearch_r1_preset_equals_the_papers_scorer(turns, per_search) -> None:
    spec = RewardSpec.mmsearch_r1(penalty_per_search=per_search)
    assert episode_reward(turns, ["Paris"], spec) == reference_score(turns, ["Paris"], per_search=per_search)


@settings(max_examples=1500, deadline=None)
@given(mixed_episodes, st.booleans())
def test_turns_holding_both_search_tags_count_once_as_in_the_papers_scorer(turns, per_search) -> None:
    spec = RewardSpec.mmsearch_r1(penalty_per_search=per_search)
    assert episode_reward(turns, ["Paris"], spec) == reference_score(turns, ["Paris"], per_search=per_search)
    assert score_episode(turns, ["Paris"], spec).searches <= max(1, len(turns) - 1)


def test_a_turn_with_both_tags_is_one_search_with_per_search_penalty() -> None:
    turns = ["<reason>r</reason><search><img></search><text_search>q</text_search>",
             "<reason>r</reason><answer>Paris</answer>"]
    b = score_episode(turns, ["Paris"], RewardSpec.mmsearch_r1(penalty_per_search=True))
    assert b.searches == 1 and b.score == pytest.approx(0.9)
    assert b.reward == pytest.approx(0.9 * 0.9)  # format 0: two action tags in one turn


@settings(max_examples=500, deadline=None)
@given(episodes)
def test_subem_mode_equals_the_papers_scorer(turns) -> None:
    spec = RewardSpec.mmsearch_r1(scorer="subem")
    assert episode_reward(turns, ["Paris"], spec) == reference_score(turns, ["Paris"], mode="SubEM")


@pytest.mark.parametrize("turns,expected", [
    (["<reason>r</reason><answer>Paris</answer>"], 1.0),
    (["<reason>r</reason><search><img></search>", "<reason>r</reason><answer>Paris</answer>"], 0.9 * 0.9 + 0.1),
    (["<reason>r</reason><search><img></search>", "<reason>r</reason><text_search>q</text_search>",
      "<reason>r</reason><answer>Paris</answer>"], 0.9 * 0.9 + 0.1),
    (["<reason>r</reason><text_search>q</text_search>", "<reason>r</reason><text_search>q</text_search>",
      "<reason>r</reason><answer>Paris</answer>"], 0.9 * 0.9),  # two text searches: format 0
    (["<reason>r</reason><answer>Lyon</answer>"], 0.1),
    (["<answer>Paris</answer>"], 0.9),
    (["<reason>r</reason><search><img></search>"], 0.0),
])
def test_known_values(turns, expected) -> None:
    assert episode_reward(turns, ["Paris"]) == pytest.approx(expected)


def test_cropped_search_counts_as_an_image_search_for_the_paper() -> None:
    turns = ["<reason>r</reason><crop>1,2,3,4</crop><search><img></search>", "<reason>r</reason><answer>Paris</answer>"]
    b = score_episode(turns, ["Paris"])
    assert (b.image_searches, b.format, b.reward) == (1, 1.0, pytest.approx(0.91))


@settings(max_examples=400, deadline=None)
@given(episodes, st.floats(0, 1), st.floats(0, 1), st.sampled_from(["em", "subem", "f1"]))
def test_reward_is_bounded_and_penalty_never_raises(turns, f, p, scorer) -> None:
    with_penalty = score_episode(turns, ["Paris"], RewardSpec(scorer=scorer, format_weight=f, search_penalty=p))
    without = score_episode(turns, ["Paris"], RewardSpec(scorer=scorer, format_weight=f, search_penalty=0.0))
    assert 0.0 <= with_penalty.reward <= 1.0
    assert with_penalty.reward <= without.reward + 1e-12
    assert with_penalty.penalty >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(turn, max_size=2), st.sampled_from(["", "<reason>r</reason>"]),
       st.sampled_from(["mmsearch_r1", "deepmmsearch_r1"]))
def test_correct_is_never_worse_than_wrong(prefix, head, preset) -> None:
    spec = getattr(RewardSpec, preset)()
    right = prefix + [f"{head}<answer>Paris</answer>"]
    wrong = prefix + [f"{head}<answer>Lyon</answer>"]
    assert episode_reward(right, ["Paris"], spec) >= episode_reward(wrong, ["Paris"], spec)


@settings(max_examples=300, deadline=None)
@given(episodes)
def test_format_weight_zero_makes_format_irrelevant(turns) -> None:
    spec = RewardSpec.mmsearch_r1(format_weight=0.0)
    b = score_episode(turns, ["Paris"], spec)
    assert b.reward == b.score


def test_deepmmsearch_r1_preset_has_no_search_penalty_and_uses_its_format() -> None:
    spec = RewardSpec.deepmmsearch_r1()
    turns = ["<reason>r</reason><img_search>the flag at the top right</img_search>",
             "<reason>r</reason><text_search>a</text_search>", "<reason>r</reason><text_search>b</text_search>",
             "<reason>r</reason><answer>It is Paris</answer>"]
    b = score_episode(turns, ["Paris"], spec)
    assert (b.format, b.searches, b.penalty, b.reward) == (1.0, 3, 0.0, pytest.approx(1.0))
    two_images = ["<reason>r</reason><img_search><img></img_search>"] * 2 + turns[-1:]
    assert score_episode(two_images, ["Paris"], spec).format == 0.0


def test_judge_hook_receives_prediction_answers_and_question() -> None:
    seen = []

    def judge(prediction, answers, question):
        seen.append((prediction, tuple(answers), question))
        return 1.0 if "paris" in prediction.lower() else 0.0

    spec = RewardSpec.deepmmsearch_r1(judge=judge)
    assert episode_reward(["<reason>r</reason><answer>Paris, France</answer>"], ["Paris"], spec, "Capital?") == 1.0
    assert seen == [("Paris, France", ("Paris",), "Capital?")]
    with pytest.raises(ConfigError, match="judge returned"):
        episode_reward(["<answer>x</answer>"], ["y"], RewardSpec(scorer=lambda *a: 2.0))


def test_scorers() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the paris", ["Paris"]) == 1.0
    assert substring_exact_match("it is paris, france", ["Paris"]) == 1.0
    assert token_f1("new york city", ["New York"]) == pytest.approx(0.8)
    assert token_f1("", ["x"]) == 0.0


def test_bad_specs_raise() -> None:
    with pytest.raises(ConfigError):
        RewardSpec(scorer="bleu")
    with pytest.raises(ConfigError):
        RewardSpec(format_weight=1.5)
    with pytest.raises(ConfigError):
        RewardSpec.from_name("search-r1")
    with pytest.raises(ConfigError):
        score_episode("<answer>x</answer>", ["x"])  # type: ignore[arg-type]
