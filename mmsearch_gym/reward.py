"""Scorers and RewardSpec: the papers' rewards, in one place.

``episode_reward(turns, answers, spec)`` scores a whole episode from the list of assistant turns,
exactly as the papers do: ``reward = (1 - f) * s + f * format`` where ``s`` is the correctness
score of the last turn's answer (times ``1 - p`` once, or once per search, when the episode
searched and the spec has a search penalty) and ``format`` is the dialect's 0/1 format rule.
The env scores every episode with it (so TRL rollouts, evaluation and replay all get their rewards
through the env), and ``trajectories.rescore`` scores recorded turns with it; nobody else
computes a reward.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from mmsearch_gym.actions import Dialect, get_dialect
from mmsearch_gym.errors import ConfigError

Judge = Callable[[str, Sequence[str], str], float]
"""Any callable ``(prediction, answers, question) -> score in [0, 1]``, e.g. an LLM judge."""

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_PUNCTUATION_BYTES = string.punctuation.encode("ascii")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ARTICLE_WORDS = frozenset(("a", "an", "the"))


def normalize_answer(text: str) -> str:
    """The papers' normalisation: lowercase, drop ASCII punctuation, drop a/an/the, fold spaces.

    Exactly ``" ".join(re.sub(r"\b(a|an|the)\b", " ", text.lower().translate(P)).split())``
    (a property test checks it), 2-3 times faster on long non-ASCII text: ASCII punctuation is
    deleted from the UTF-8 bytes (never part of a multi-byte character), and when every token
    is alphanumeric (``\b`` then falls only at token edges) articles are dropped as tokens.
    """
    text = text.lower()
    if text.isascii():
        text = text.translate(_PUNCTUATION)
    else:
        try:
            text = text.encode("utf-8").translate(None, _PUNCTUATION_BYTES).decode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            text = text.translate(_PUNCTUATION)
    tokens = text.split()
    if all(map(str.isalnum, tokens)):
        return " ".join([t for t in tokens if t not in _ARTICLE_WORDS])
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals one normalised gold answer."""
    pred = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(a) == pred for a in answers) else 0.0


def substring_exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if one normalised gold answer is a substring of the normalised prediction."""
    pred = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(a) in pred for a in answers) else 0.0


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-level F1 between the prediction and any gold answer (SQuAD style)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not pred and not gold:
            best = 1.0
    return best


STRICT_EXTRA_TOKENS = 4
"""Words a strict-match prediction may have beyond the longest gold answer ("it is", "the city of")."""
_LIST_SEPARATORS = re.compile(r"[,;/|\n]|\bor\b|\band/or\b|\bvs\.?\b", re.IGNORECASE)


def strict_match(prediction: str, answers: Sequence[str]) -> float:
    """SubEM that cannot be gamed by listing candidates (the offline stand-in for a judge).

    1.0 only if all three hold, else 0.0:

    1. a normalised gold answer occurs in the normalised prediction as whole words;
    2. the prediction is not much longer than the gold: at most ``STRICT_EXTRA_TOKENS`` (4)
       more words than the longest gold answer;
    3. the prediction names no alternatives: split at list separators (``,`` ``;`` ``/`` ``|``,
       new lines, "or", "and/or", "vs"), it has no more parts than the gold answer it matched
       ("France, Germany" is wrong for "France"; "Paris, France" is right for "Paris, France").
    """
    pred = normalize_answer(prediction)
    if not pred:
        return 0.0
    padded = f" {pred} "
    parts = [p for p in _LIST_SEPARATORS.split(prediction) if normalize_answer(p)]
    longest = max((len(normalize_answer(a).split()) for a in answers), default=0)
    if len(pred.split()) > longest + STRICT_EXTRA_TOKENS:
        return 0.0
    for answer in answers:
        gold = normalize_answer(answer)
        if not gold or f" {gold} " not in padded:
            continue
        gold_parts = [p for p in _LIST_SEPARATORS.split(answer) if normalize_answer(p)]
        if len(parts) <= max(1, len(gold_parts)):
            return 1.0
    return 0.0


SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "em": exact_match,
    "subem": substring_exact_match,
    "f1": token_f1,
    "strict": strict_match,
}


@dataclass(frozen=True)
class RewardSpec:
    """How an episode is scored.

    ``scorer`` is "em", "subem", "f1" or a Judge callable. ``search_penalty`` multiplies a
    positive score by ``1 - p`` when the episode searched (once, or once per search with
    ``penalty_per_search``). ``format_weight`` is ``f`` in ``(1 - f) * s + f * format``.
    ``dialect`` names whose format rule and search counting apply.
    """

    scorer: str | Judge = "em"
    format_weight: float = 0.1
    search_penalty: float = 0.1
    penalty_per_search: bool = False
    dialect: str = "mmsearch-r1"
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.scorer, str) and self.scorer not in SCORERS:
            raise ConfigError(f"unknown scorer {self.scorer!r}; use one of {sorted(SCORERS)} or a judge callable")
        if not callable(self.scorer) and not isinstance(self.scorer, str):
            raise ConfigError("scorer must be a name or a callable (prediction, answers, question) -> float")
        for field_name in ("format_weight", "search_penalty"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{field_name} must be in [0, 1], got {value!r}")
        get_dialect(self.dialect)

    @classmethod
    def mmsearch_r1(cls, **overrides: Any) -> RewardSpec:
        """MMSearch-R1: exact match, search penalty 0.1 once, format weight 0.1."""
        return replace(cls(scorer="em", format_weight=0.1, search_penalty=0.1,
                           dialect="mmsearch-r1", name="mmsearch-r1"), **overrides)

    @classmethod
    def deepmmsearch_r1(cls, judge: Judge | None = None, **overrides: Any) -> RewardSpec:
        """DeepMMSearch-R1: no search penalty, format weight 0.1, a 0/1 judge verdict.

        The paper's judge is an LLM; pass one as ``judge`` (or name one: ``judge=`` of
        ``make_env``, ``--judge``). Without one the default is :func:`strict_match`: SubEM that
        a prediction listing candidates, or much longer than the gold, cannot pass.
        """
        return replace(cls(scorer=judge or "strict", format_weight=0.1, search_penalty=0.0,
                           dialect="deepmmsearch-r1", name="deepmmsearch-r1"), **overrides)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> RewardSpec:
        """``mmsearch-r1`` or ``deepmmsearch-r1`` (with optional field overrides)."""
        presets = {"mmsearch-r1": cls.mmsearch_r1, "deepmmsearch-r1": cls.deepmmsearch_r1}
        if name not in presets:
            raise ConfigError(f"unknown reward preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)

    def describe(self) -> dict[str, Any]:
        """JSON-safe description (for trajectories and reports)."""
        scorer = self.scorer if isinstance(self.scorer, str) else getattr(self.scorer, "__name__", "judge")
        return {"name": self.name, "scorer": scorer, "format_weight": self.format_weight,
                "search_penalty": self.search_penalty, "penalty_per_search": self.penalty_per_search,
                "dialect": self.dialect}


@dataclass(frozen=True)
class RewardBreakdown:
    """Everything that went into one episode's reward, for logging."""

    reward: float
    score: float
    """Correctness after the search penalty."""
    raw_score: float
    """Correctness before the search penalty."""
    format: float
    searches: int
    image_searches: int
    text_searches: int
    penalty: float
    """How much the search penalty took off the score (``raw_score - score``)."""
    answer: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _score(spec: RewardSpec, prediction: str, answers: Sequence[str], question: str) -> float:
    if isinstance(spec.scorer, str):
        return SCORERS[spec.scorer](prediction, answers)
    value = float(spec.scorer(prediction, answers, question))
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"the judge returned {value!r}; a judge must return a score in [0, 1]")
    return value


def score_episode(turns: Sequence[str], answers: Sequence[str],
                  spec: RewardSpec | None = None, question: str = "") -> RewardBreakdown:
    """Score a list of assistant turns against the gold answers; returns the full breakdown."""
    spec = spec or RewardSpec.mmsearch_r1()
    if isinstance(turns, str):
        raise ConfigError("turns must be a list of assistant turns, not one string")
    dialect: Dialect = get_dialect(spec.dialect)
    answer = dialect.final_answer(turns)
    raw = _score(spec, answer, answers, question) if answer is not None else 0.0
    counts = dialect.count_searches(turns)
    score = raw
    if raw > 0 and counts.total > 0 and spec.search_penalty > 0:
        for _ in range(counts.total if spec.penalty_per_search else 1):
            score *= 1.0 - spec.search_penalty  # repeated products, bit-identical to the paper's loop
    fmt = 1.0 if turns and dialect.format_valid(turns) else 0.0
    reward = (1.0 - spec.format_weight) * score + spec.format_weight * fmt
    return RewardBreakdown(reward=reward, score=score, raw_score=raw, format=fmt,
                           searches=counts.total, image_searches=counts.image,
                           text_searches=counts.text, penalty=raw - score, answer=answer)


def episode_reward(turns: Sequence[str], answers: Sequence[str],
                   spec: RewardSpec | None = None, question: str = "") -> float:
    """The scalar reward of an episode (see ``score_episode`` for the breakdown)."""
    return score_episode(turns, answers, spec, question).reward
