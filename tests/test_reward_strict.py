"""strict_match: SubEM that listing candidates cannot game (the deepmmsearch-r1 preset's offline scorer)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import mmsearch_gym
from mmsearch_gym.reward import (
    STRICT_EXTRA_TOKENS,
    RewardSpec,
    episode_reward,
    normalize_answer,
    strict_match,
    substring_exact_match,
)

_ENTITIES = Path(mmsearch_gym.__file__).parent / "world" / "data" / "entities.json"
COUNTRIES = sorted({e["name"] for e in json.loads(_ENTITIES.read_text(encoding="utf-8"))["entities"]
                    if e["kind"] == "country" and not any(c in e["name"] for c in ",;/|")})
names = st.sampled_from(COUNTRIES)


def test_listing_79_country_names_scores_0_though_subem_gives_1() -> None:
    listed = ", ".join(COUNTRIES[:79])
    gold = [COUNTRIES[40]]
    assert substring_exact_match(listed, gold) == 1.0
    assert strict_match(listed, gold) == 0.0
    assert strict_match(" ".join(COUNTRIES[:79]), gold) == 0.0  # no separators: too long
    spec = RewardSpec.deepmmsearch_r1()
    assert spec.scorer == "strict"
    assert episode_reward([f"<reason>r</reason><answer>{listed}</answer>"], gold, spec) < 0.2


def test_documented_examples() -> None:
    assert strict_match("It is Paris", ["Paris"]) == 1.0
    assert strict_match("paris.", ["Paris"]) == 1.0
    assert strict_match("France, Germany", ["France"]) == 0.0
    assert strict_match("France or Germany", ["France"]) == 0.0
    assert strict_match("Paris, France", ["Paris, France"]) == 1.0
    assert strict_match("Parisian", ["Paris"]) == 0.0  # whole words only
    assert strict_match("", ["Paris"]) == 0.0


@settings(max_examples=80, deadline=None)
@given(st.lists(names, min_size=2, max_size=79, unique=True), st.sampled_from([", ", "; ", " or ", "\n", " / "]))
def test_a_list_of_two_or_more_distinct_candidates_is_wrong_whatever_the_gold(candidates, sep) -> None:
    prediction = sep.join(candidates)
    for gold in candidates:
        assert strict_match(prediction, [gold]) == 0.0


@settings(max_examples=80, deadline=None)
@given(names, st.lists(st.sampled_from(["it", "is", "answer", "country", "flag", "of"]), max_size=STRICT_EXTRA_TOKENS))
def test_a_single_candidate_with_a_few_extra_words_that_contains_the_gold_is_right(name, words) -> None:
    assert strict_match(" ".join([*words, name]), [name]) == 1.0


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200), st.lists(names, min_size=1, max_size=3))
def test_strict_never_exceeds_subem(prediction, golds) -> None:
    assert strict_match(prediction, golds) <= substring_exact_match(prediction, golds)
    if strict_match(prediction, golds):
        longest = max(len(normalize_answer(g).split()) for g in golds)
        assert len(normalize_answer(prediction).split()) <= longest + STRICT_EXTRA_TOKENS
