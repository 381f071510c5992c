"""EvidenceReader: answers world questions from search results alone, deterministically.

Scripted baselines (the RAG workflow, the oracle) and the SB3 "when to search" wrapper need
something that turns retrieved evidence into an answer the way a competent model would. The
reader never sees gold answers or the knowledge base: it reads the question, the hits the
policy actually got (image hits name an entity, e.g. "Flag of France"; text hits state facts
as ``"<label>: <value>."``) and, for search-free questions, the scene layout a perception
model would see (object count and positions, not identities). So a policy that skips the
search it needed gets no answer, and the world measures the decision to search.

The question vocabulary here (:data:`FACT_NOUNS`, :func:`parse_question`) is also what the
task generator writes, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mmsearch_gym.grounding import position_name
from mmsearch_gym.search.base import Hit
from mmsearch_gym.tasks import SceneObject
from mmsearch_gym.world.knowledge import FACT_LABELS, read_fact

__all__ = ["FACT_NOUNS", "EvidenceReader", "Question", "number_words", "parse_question"]

FACT_NOUNS: dict[str, str] = {
    "capital": "capital",
    "region": "region of the world",
    "highest_point": "highest point",
    "national_symbol": "national symbol",
    "national_anthem": "national anthem",
    "currency": "currency",
    "independence": "year of independence",
    "government_type": "type of government",
}
"""How questions name each fact (the generator writes these words, the reader finds them)."""

_FACT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("national_anthem", re.compile(r"\banthem\b")),
    ("national_symbol", re.compile(r"\bnational symbol\b")),
    ("highest_point", re.compile(r"\bhighest (point|peak|mountain|elevation)\b")),
    ("independence", re.compile(r"\bindependen")),
    ("government_type", re.compile(r"\bgovernment\b")),
    ("currency", re.compile(r"\bcurrency\b|\bmoney\b")),
    ("capital", re.compile(r"\bcapital\b")),
    ("region", re.compile(r"\bregion\b|\bcontinent\b")),
)
_COUNTRY_QUESTION = re.compile(r"\b(which|what) (country|nation)\b|\bname the (country|nation)\b")
_FLAG_TITLE = re.compile(r"^Flag of (.+)$")
_TITLE_SUFFIX = " - The World Factbook"

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def number_words(n: int) -> tuple[str, ...]:
    """The accepted spellings of a small count: ("3", "three"); zero also as "none"."""
    words = (str(n), _WORDS[n]) if 0 <= n < len(_WORDS) else (str(n),)
    return words + (("none",) if n == 0 else ())


@dataclass(frozen=True)
class Question:
    """What a world question asks, as far as its words tell.

    ``kind`` is "country" (name the country), "fact" (a fact of a country) or "scene"
    (count / layout, answered from the picture); ``asked`` the fact key asked for;
    ``bridge``/``bridge_value`` the fact the question gives to identify the country in
    text-only questions (``'... whose national anthem is "La Marseillaise"?'``).
    """

    kind: Literal["country", "fact", "scene", "unknown"]
    asked: str | None = None
    bridge: str | None = None
    bridge_value: str | None = None


def _fact_in(text: str) -> str | None:
    """The fact key a piece of question text names (first match in priority order)."""
    for key, pattern in _FACT_PATTERNS:
        if pattern.search(text):
            return key
    return None


_SCENE_QUESTION = re.compile(r"^(how many flags|is there a flag|are there any flags)\b")


def parse_question(question: str) -> Question:
    """Read what ``question`` asks (see :class:`Question`); "unknown" when nothing fits."""
    text = " ".join(question.split())
    lower = text.lower()
    if _SCENE_QUESTION.search(lower):
        return Question("scene")
    quoted = re.search(r'"([^"]+)"', text)
    bridge = bridge_value = None
    if quoted:
        bridge_value = quoted.group(1)
        rest = (lower[:quoted.start()] + " \u2026 " + lower[quoted.end():])
        if " whose " in rest:
            head, tail = rest.split(" whose ", 1)
            bridge = _fact_in(tail)
            asked_part = head
        else:
            bridge = _fact_in(rest)
            asked_part = ""
        if _COUNTRY_QUESTION.search(rest):
            return Question("country", None, bridge, bridge_value)
        return Question("fact", _fact_in(asked_part), bridge, bridge_value)
    if _COUNTRY_QUESTION.search(lower):
        return Question("country")
    asked = _fact_in(lower.split(" whose ", 1)[0]) or _fact_in(lower)
    if asked is not None:
        return Question("fact", asked)
    return Question("unknown")


def _fold(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


def _subject(hit: Hit) -> str:
    """The entity a text hit is about: the title before " - The World Factbook", else the
    first sentence of the snippet."""
    if _TITLE_SUFFIX in hit.title:
        return hit.title.split(_TITLE_SUFFIX, 1)[0].strip()
    return hit.snippet.split(". ", 1)[0].strip()


def _is_image_hit(hit: Hit) -> bool:
    return hit.thumbnail is not None or hit.title.startswith("Flag of ")


class EvidenceReader:
    """Reads answers out of search hits (and scene layouts); never sees gold answers."""

    def identify(self, hits: Sequence[Hit]) -> str | None:
        """The country the top image hit shows ("Flag of France" -> "France"); None when the
        top image hit is a photo, or there is no image hit."""
        for hit in hits:
            if _is_image_hit(hit):
                match = _FLAG_TITLE.match(hit.title.strip())
                return match.group(1).strip() if match else None
        return None

    def build_query(self, question: str, hits: Sequence[Hit]) -> str:
        """A text-search query from the question and the evidence so far.

        Text-only questions search for their bridge fact (``National anthem "La
        Marseillaise"``), then, when the passage that matches it lacks the asked fact
        (multi_hop), refine to that passage's country and the asked fact's label
        (``France Highest point``); questions about a pictured country search for the
        identified country and the asked fact's label (``France Capital``); otherwise the
        question.
        """
        parsed = parse_question(question)
        if parsed.bridge is not None and parsed.bridge_value is not None:
            found = self._bridged([h for h in hits if not _is_image_hit(h)], parsed.bridge, parsed.bridge_value)
            asked = parsed.asked
            if found is not None and asked is not None and read_fact(found.snippet, FACT_LABELS[asked]) is None:
                # Second hop: the bridge passage named the country but lacks the asked fact.
                return f"{_subject(found)} {FACT_LABELS[asked]}"
            return f'{FACT_LABELS[parsed.bridge]} "{parsed.bridge_value}"'
        entity = self.identify(hits)
        if entity is not None and parsed.asked is not None:
            return f"{entity} {FACT_LABELS[parsed.asked]}"
        if entity is not None:
            return entity
        return " ".join(question.split())

    def answer(self, question: str, hits: Sequence[Hit]) -> str | None:
        """The answer the evidence supports, or None when it does not settle the question."""
        parsed = parse_question(question)
        text_hits = [h for h in hits if not _is_image_hit(h)]
        if parsed.bridge is not None and parsed.bridge_value is not None:
            passage = self._bridged(text_hits, parsed.bridge, parsed.bridge_value)
            if passage is None:
                return None
            if parsed.kind == "country":
                return _subject(passage)
            if parsed.asked is None:
                return None
            value = read_fact(passage.snippet, FACT_LABELS[parsed.asked])
            if value is None:  # multi-hop: the fact is in another passage about that country
                value = self._fact_of(_subject(passage), parsed.asked, text_hits)
            return value
        if parsed.kind == "country":
            return self.identify(hits)
        if parsed.kind == "fact" and parsed.asked is not None:
            return self._fact_of(self.identify(hits), parsed.asked, text_hits)
        return None

    def _bridged(self, text_hits: Sequence[Hit], bridge: str, value: str) -> Hit | None:
        """The first text hit whose bridge fact equals ``value`` (case and punctuation folded)."""
        want = _fold(value)
        for hit in text_hits:
            got = read_fact(hit.snippet, FACT_LABELS[bridge])
            if got is not None and _fold(got) == want:
                return hit
        return None

    def _fact_of(self, entity: str | None, key: str, text_hits: Sequence[Hit]) -> str | None:
        """The asked fact from the hits about ``entity`` (any hit when the entity is unknown)."""
        label = FACT_LABELS[key]
        fallback = None
        for hit in text_hits:
            value = read_fact(hit.snippet, label)
            if value is None:
                continue
            if entity is None or _fold(_subject(hit)) == _fold(entity):
                return value
            if fallback is None:
                fallback = value
        return fallback if entity is None else None

    # -- search-free questions ---------------------------------------------------------------

    def answer_from_scene(self, question: str, objects: Sequence[SceneObject],
                          image_size: tuple[int, int] | None = None) -> str | None:
        """Answer a count / layout question from what a perception model sees: how many
        objects there are and where (their boxes and ``position`` attributes), never who
        they are. ``image_size`` is needed only when objects lack a ``position``."""
        lower = " ".join(question.lower().split())
        if not _SCENE_QUESTION.search(lower):
            return None
        flags = [o for o in objects if "flag" in o.label.lower()]

        def where(obj: SceneObject) -> str | None:
            named = obj.attributes.get("position")
            if isinstance(named, str):
                return named
            return position_name(obj.box, image_size) if image_size else None

        corner = re.search(r"\b(top|bottom) (left|right) corner\b", lower)
        if lower.startswith("is there a flag") and corner:
            target = f"{corner.group(1)} {corner.group(2)}"
            return "yes" if any(where(o) == target for o in flags) else "no"
        row = re.search(r"\b(top|middle|bottom) row\b", lower)
        if lower.startswith("how many flags") and row:
            positions = [where(o) for o in flags]
            if any(p is None for p in positions):
                return None
            want = row.group(1)
            count = sum(1 for p in positions if p is not None and _row_of(p) == want)
            return str(count)
        if lower.startswith("how many flags"):
            return str(len(flags))
        return None


def _row_of(position: str) -> str:
    words = position.split()
    if "top" in words:
        return "top"
    if "bottom" in words:
        return "bottom"
    return "middle"
