"""A small, deterministic BM25 ranker on numpy.

The built-in world's search engine and the offline replay fallback both rank passages with
it. It is our own (no ``bm25s``/``scipy``) so the core keeps its dependency list short, and it
is built for reproducibility first: float64 arithmetic, a sorted vocabulary, query terms
accumulated in sorted order and ties broken by document index, so the same corpus and query
give bit-identical rankings in every process, on every machine.

Speed comes from an inverted index: each vocabulary term owns two numpy arrays (the ids of
the documents containing it and its precomputed BM25 weight in each), so a query touches only
the postings of its own terms.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["STOPWORDS", "BM25Index", "tokenize"]

STOPWORDS: frozenset[str] = frozenset(
    """
    a an and are as at be been being but by can could did do does for from had has have he her
    his how i if in into is it its me my of on or our she should so than that the their them
    then there these they this those to was we were what when where which who whom whose why
    will with would you your s t
    """.split()
)
"""English function words dropped by :func:`tokenize` (``s``/``t`` are the leftovers of
``France's`` and ``don't`` once apostrophes split words)."""

_WORD = re.compile(r"[^\W_]+")
_KEEP_FINAL_S = ("ss", "us", "is")


def _stem(word: str) -> str:
    """Fold common English plurals onto their singular, deterministically and conservatively.

    ``cities -> city``, ``churches -> church``, ``boxes -> box``, ``glasses -> glass``,
    ``flags -> flag``, ``photos -> photo``; words ending in ``ss``/``us``/``is`` (``glass``,
    ``virus``, ``Paris``), words of three letters or fewer and tokens containing digits are
    never touched. The rule is the same for queries and documents, so an imperfect stem still
    matches itself.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(_KEEP_FINAL_S):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Split text into normalised word tokens for BM25.

    Steps: Unicode NFKC (so full-width letters and ligatures match their plain forms), case
    folding (``Straße`` -> ``strasse``), splitting on every non-letter/digit character
    (underscores and apostrophes included), dropping :data:`STOPWORDS`, then light plural
    stemming (see ``_stem``). Scripts other than Latin are kept as words of their own.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [_stem(w) for w in _WORD.findall(folded) if w not in STOPWORDS]


class BM25Index:
    """Okapi BM25 over a fixed list of documents.

    ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` (always positive), and a document's
    score is the sum over the query's distinct terms of
    ``qtf * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``.
    """

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1 = float(k1)
        self.b = float(b)
        self._n = len(docs)
        counts = [Counter(tokenize(doc)) for doc in docs]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        avgdl = float(lengths.mean()) if self._n and lengths.sum() > 0 else 1.0
        norm = self.k1 * (1.0 - self.b + self.b * lengths / avgdl)

        postings: dict[str, tuple[list[int], list[int]]] = {}
        for doc_id, counter in enumerate(counts):
            for term, count in counter.items():
                posting_ids, posting_tfs = postings.setdefault(term, ([], []))
                posting_ids.append(doc_id)
                posting_tfs.append(count)

        self.vocabulary: tuple[str, ...] = tuple(sorted(postings))
        self._term_index: dict[str, int] = {t: i for i, t in enumerate(self.vocabulary)}
        self._doc_ids: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        for term in self.vocabulary:
            id_list, tf_list = postings[term]
            ids = np.asarray(id_list, dtype=np.int64)  # ascending: docs were visited in order
            tf = np.asarray(tf_list, dtype=np.float64)
            df = float(len(ids))
            idf = math.log1p((self._n - df + 0.5) / (df + 0.5))
            self._doc_ids.append(ids)
            self._weights.append(idf * tf * (self.k1 + 1.0) / (tf + norm[ids]))

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"BM25Index({self._n} docs, {len(self.vocabulary)} terms, k1={self.k1}, b={self.b})"

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc index, score)`` pairs, best first; only scores above zero.

        Ties are broken by the lower document index, so rankings never depend on sort
        stability or hash order.
        """
        if k <= 0 or self._n == 0:
            return []
        query_terms = Counter(tokenize(query))
        scores: np.ndarray | None = None
        for term in sorted(query_terms):  # fixed accumulation order -> bit-identical sums
            idx = self._term_index.get(term)
            if idx is None:
                continue
            if scores is None:
                scores = np.zeros(self._n, dtype=np.float64)
            weights = self._weights[idx]
            qtf = query_terms[term]
            scores[self._doc_ids[idx]] += weights if qtf == 1 else qtf * weights
        if scores is None:
            return []
        candidates = np.flatnonzero(scores > 0.0)
        if candidates.size == 0:
            return []
        cand_scores = scores[candidates]
        if candidates.size > k:
            # Keep everything scoring at least the k-th best, so tied docs compete fairly.
            kth = np.partition(cand_scores, candidates.size - k)[candidates.size - k]
            keep = cand_scores >= kth
            candidates, cand_scores = candidates[keep], cand_scores[keep]
        order = np.lexsort((candidates, -cand_scores))[:k]
        return [(int(candidates[i]), float(cand_scores[i])) for i in order]
