"""normalize_answer's fast paths equal the papers' one-line definition on any text."""

from __future__ import annotations

import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.reward import normalize_answer

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def papers_normalize(text: str) -> str:
    """MMSearch-R1 / SQuAD normalisation, verbatim."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


PIECES = st.sampled_from(list("aAnNtThHeE _-.,!'\u2019 \t\n\x00\x1f\u200b\u00a0\u3000\u00e9\u00c9\u0130\u212a"
                              "\ud800\ufffd1\u0663\u00bd") + ["the", "an", "a", "The", "AN", "\U0001f600", "\u2014"])


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.one_of(st.text(), st.lists(PIECES, max_size=40).map("".join)))
def test_normalize_answer_equals_the_papers_definition(text: str) -> None:
    assert normalize_answer(text) == papers_normalize(text)


def test_normalize_answer_examples() -> None:
    assert normalize_answer("The  Eiffel-Tower, an icon!") == "eiffeltower icon"
    assert normalize_answer("a\u2014the\u2014Caf\u00e9") == "\u2014 \u2014caf\u00e9"  # each article becomes a space
    assert normalize_answer("\u00c9t\u00e9 \ud800 a") == "\u00e9t\u00e9 \ud800"
