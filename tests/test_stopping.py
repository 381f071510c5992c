"""The one stop-string rule: text, streamed pieces and token ids agree with the brute force."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.stopping import StopScanner, cut_at_stop, first_stop_end, first_stop_token

STOPS = ("</search>", "</answer>", "</text_search>")
PIECES = st.lists(st.sampled_from(["a", " b", "</", "search>", "</answer>", "</search>", "<answer>", "x", "</text",
                                   "_search>", ">", "é"]), max_size=16)


def brute_end(text: str) -> int | None:
    """The smallest prefix length holding a stop: the earliest-ending stop's end."""
    return next((i for i in range(len(text) + 1) if any(s in text[:i] for s in STOPS)), None)


@given(PIECES)
def test_first_stop_end_is_the_shortest_prefix_holding_a_stop(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert first_stop_end(text, STOPS) == brute_end(text)
    end = brute_end(text)
    assert cut_at_stop(text, STOPS) == (text if end is None else text[:end])


@given(PIECES)
def test_scanner_fed_in_pieces_finds_what_the_whole_text_holds(pieces: list[str]) -> None:
    scanner = StopScanner(STOPS)
    for piece in pieces:
        scanner.feed(piece)
    assert scanner.end == brute_end("".join(pieces))


@settings(max_examples=200)
@given(PIECES, st.sampled_from(["concat", "skip_empty"]))
def test_first_stop_token_is_the_fewest_tokens_holding_a_stop(pieces: list[str], kind: str) -> None:
    """Tokens are the pieces; decoding concatenates them (prefix-stable) or, for a decoder that
    is not, drops a leading space (as sentencepiece-style decoders do): still the exact answer."""
    def decode(ids: list[int]) -> str:
        text = "".join(pieces[i] for i in ids)
        return text.lstrip(" ") if kind == "skip_empty" else text

    ids = list(range(len(pieces)))
    brute = next((k for k in range(1, len(ids) + 1) if first_stop_end(decode(ids[:k]), STOPS) is not None), None)
    found = first_stop_token(ids, decode, STOPS)
    assert (found and found[0]) == brute
    if found is not None:
        assert found[1] == decode(ids[:found[0]])


def test_first_stop_token_decodes_a_constant_number_of_whole_turns() -> None:
    """Linear cost: a stop near the end of a long turn needs only short suffix decodes."""
    pieces = ["word "] * 1000 + ["</answer>", " x", " y"]
    decoded: list[int] = []

    def decode(ids: list[int]) -> str:
        decoded.append(len(ids))
        return "".join(pieces[i] for i in ids)

    found = first_stop_token(list(range(len(pieces))), decode, STOPS)
    assert found is not None and found[0] == 1001
    assert sum(decoded) <= 3 * len(pieces) + 64
