"""Stop strings: where a generated turn ends (its first closing tag), found in linear time.

Every route that generates text (the TRL rollout, ``TransformersPolicy``, the OpenAI-compatible
policy, scripted cutting in :mod:`mmsearch_gym.policies`) ends a turn at the *earliest-ending*
stop sequence of its dialect (``</search>``, ``</text_search>``, ``</answer>`` ...). This module
is the one definition of that rule:

* :func:`first_stop_end` / :func:`cut_at_stop`: on text.
* :class:`StopScanner`: on text that arrives in pieces (token by token); each piece is searched
  together with only the last ``longest stop - 1`` characters before it, so the cost per piece
  does not grow with what came before.
* :func:`first_stop_token`: on token ids, given a ``decode`` function: the fewest tokens whose
  decoded text holds a stop. It decodes the whole turn once and then only short suffixes
  (galloping back from the end, where a stop usually sits because generation halts on it),
  and confirms the answer with two prefix decodes: a constant number of whole-turn decodes,
  instead of one decode of the growing prefix per token.

No torch, no transformers: tokenizers enter only as a ``decode`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["StopScanner", "cut_at_stop", "first_stop_end", "first_stop_token"]

Decode = Callable[[Sequence[int]], str]
"""Token ids -> text (for example ``lambda ids: tokenizer.decode(ids, skip_special_tokens=True)``)."""


def first_stop_end(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """End offset of the earliest-ending stop sequence found at or after ``start``, else None."""
    best: int | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop, start)
        if at != -1 and (best is None or at + len(stop) < best):
            best = at + len(stop)
    return best


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to and including the earliest-ending stop sequence (unchanged if none occurs).

    Generation stops only after a whole closing tag has been produced, and a batch keeps
    decoding until its last sequence is done, so a finished sequence may carry a few extra
    characters (or a tag completed inside a longer token); the action is what came before.
    """
    end = first_stop_end(text, stops)
    return text if end is None else text[:end]


class StopScanner:
    """Finds the first stop sequence in text fed piece by piece, in time linear in the text.

    ``feed(piece)`` returns the end offset (in the whole text fed so far) of the earliest-ending
    stop completed by this piece, or None; once a stop is found, it keeps returning it.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._keep = max((len(s) for s in self.stops), default=1) - 1
        self._tail = ""
        self._length = 0
        self.end: int | None = None

    def feed(self, piece: str) -> int | None:
        if self.end is not None or not piece:
            return self.end
        window = self._tail + piece
        found = first_stop_end(window, self.stops)
        if found is not None:
            self.end = self._length - len(self._tail) + found
        self._length += len(piece)
        self._tail = window[-self._keep:] if self._keep else ""
        return self.end


def first_stop_token(ids: Sequence[int], decode: Decode, stops: Sequence[str]) -> tuple[int, str] | None:
    """The fewest leading tokens of ``ids`` whose decoded text holds a stop, and that text.

    Returns ``(k, decode(ids[:k]))`` for the smallest such ``k``, or None when the whole turn
    holds no stop. Three decodes of (at most) the whole turn, plus decodes of suffixes no
    longer than twice the distance ``d`` from the stop to the end (``O(log d)`` of them; ``d``
    is a few tokens when generation halted on the stop). The suffix-based estimate assumes a
    prefix-stable decoder (decoding ``ids[:k]`` gives a prefix of decoding ``ids``, as
    byte-level BPE does); it is always checked, and if wrong the answer is found by bisection
    over prefixes (slower, still correct).
    """
    text = decode(ids)
    end = first_stop_end(text, stops)
    if end is None:
        return None
    surplus = len(text) - end  # characters after the stop, which the cut may drop
    n = len(ids)

    def fits(k: int) -> bool:  # dropping ids[k:] keeps the stop (estimated from the suffix)
        return k == n or len(decode(ids[k:])) <= surplus

    # gallop back from the end: fits(k) is monotone in k, fits(n) holds
    step, hi = 1, n
    lo = n - step
    while lo > 0 and fits(lo):
        hi, step = lo, step * 2
        lo = max(0, n - step)
    while hi - lo > 1:  # fits(hi); not fits(lo), or lo == 0 (the empty prefix never holds a stop)
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return _confirm(ids, decode, stops, max(hi, 1))


def _confirm(ids: Sequence[int], decode: Decode, stops: Sequence[str], k: int) -> tuple[int, str]:
    """Check the estimate ``k`` with two prefix decodes; bisect over prefixes when it is off."""
    prefix = decode(ids[:k])
    if first_stop_end(prefix, stops) is not None and (k == 1 or first_stop_end(decode(ids[:k - 1]), stops) is None):
        return k, prefix
    lo, hi = 0, len(ids)  # not holding at lo (empty prefix), holding at hi (the whole turn)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if first_stop_end(decode(ids[:mid]), stops) is not None:
            hi = mid
        else:
            lo = mid
    return hi, decode(ids[:hi])
