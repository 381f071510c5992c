"""The CIA World Factbook as text: cleaning its HTML fragments and extracting fact values.

Used only by :mod:`mmsearch_gym.world.build` (never at run time). Every extractor takes the
cleaned text of one Factbook field and returns a short value that a passage sentence
``"<label>: <value>."`` can carry and :func:`mmsearch_gym.world.knowledge.read_fact` can read
back, or None when the field has no such clean value.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

# Currency plurals the Factbook uses, mapped to their singular.
_CURRENCY_SINGULAR = {
    "kroner": "krone", "kronor": "krona", "kronur": "krona", "koruny": "koruna", "lei": "leu",
    "leva": "lev", "maloti": "loti", "emalangeni": "lilangeni", "quetzales": "quetzal",
    "colones": "colon", "zlotych": "zloty", "meticais": "metical", "soles": "sol",
    "guaranies": "guarani", "bolivares": "bolivar", "rupiahs": "rupiah", "pa'anga": "pa'anga",
}

_CFA_NAMES = {  # the Factbook spells out these franc zones; everyone says "CFA/CFP franc"
    "Communaute Financiere Africaine": "CFA franc",
    "Cooperation Financiere en Afrique Centrale": "CFA franc",
    "Comptoirs Francais du Pacifique": "CFP franc",
}

_REGIONS = (
    "Central America and the Caribbean", "Antarctic Region", "Arctic Region", "Southeast Asia",
    "Middle East", "North America", "South America", "Oceania", "Africa", "Europe", "Asia",
)
_FOLDER_REGIONS = {
    "africa": "Africa", "europe": "Europe", "middle-east": "Middle East",
    "north-america": "North America", "south-america": "South America",
    "central-america-n-caribbean": "Central America and the Caribbean",
    "australia-oceania": "Oceania", "east-n-southeast-asia": "Asia", "central-asia": "Asia",
    "south-asia": "Asia", "antarctica": "Antarctic Region",
}


# ----------------------------------------------------------------------------- text helpers

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """Factbook HTML fragment -> plain text (entities decoded, tags dropped, spaces collapsed)."""
    text = html.unescape(text).replace("\u00a0", " ")
    text = re.sub(r"<br\s*/?>", " ; ", text, flags=re.IGNORECASE)
    text = _TAG.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    text = re.sub(r"(\s*;\s*)+", "; ", text)
    return text.strip(" ;")


def ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def strip_parens(text: str) -> str:
    """Drop parenthetical notes, nested ones included."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\s*\([^()]*\)", "", text)
    return _SPACE.sub(" ", text).strip()


def split_top_level(text: str, separators: str = ",;") -> list[str]:
    """Split on separators that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch in separators and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _is_clean_value(value: str, max_len: int = 60) -> bool:
    """A fact value the passage reader can round-trip and an exact-match answer can use."""
    return (0 < len(value) <= max_len and ". " not in value and not value.endswith(".")
            and ":" not in value and value == value.strip() and "none" != value.lower())


def trim(text: str, limit: int) -> str:
    """Shorten free text to at most ``limit`` chars at a clause boundary (no dangling '...')."""
    text = text.strip().rstrip(".;, ")
    if len(text) <= limit:
        return text
    cut = text[:limit]
    for sep in (". ", "; ", ", "):
        pos = cut.rfind(sep)
        if pos > limit // 3:
            return cut[:pos].rstrip(".;, ")
    pos = cut.rfind(" ")
    return cut[:pos if pos > 0 else limit].rstrip(".;, ")


def squash_spaces(text: str) -> str:
    """Runs of whitespace -> one space, ends stripped."""
    return _SPACE.sub(" ", text).strip()


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", ascii_fold(name).lower().replace("'", "")).strip("-")


# ------------------------------------------------------------------------- Factbook access


def norm_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k).strip(): norm_keys(v) for k, v in node.items()}
    return node


def field_text(node: Any, *path: str) -> str | None:
    """The cleaned text at ``path`` inside a Factbook entry, or None."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, dict):
        node = node.get("text")
    if not isinstance(node, str):
        return None
    text = clean(node)
    return text or None


def extract_capital(raw: str | None) -> str | None:
    if not raw:
        return None
    first = split_top_level(raw, ";")[0]
    first = first.split(" note -")[0]
    if "(" in first:
        first = first[: first.index("(")]
    first = re.sub(r" in [A-Z][a-z]+$", "", first.strip(" ,"))  # "Chisinau in Romanian"
    first = first.replace("D.C.", "DC")
    if not first or first[0].islower():
        return None
    return first if _is_clean_value(first, 40) else None


def extract_region(raw: str | None, folder: str) -> str:
    if raw:
        text = re.sub(r"^[^:]*:\s*", "", raw) if raw.lower().startswith("metropolitan") else raw
        for region in _REGIONS:
            if text.startswith(region):
                return region
    return _FOLDER_REGIONS[folder]


def extract_first_symbol(raw: str | None) -> str | None:
    if not raw:
        return None
    first = strip_parens(split_top_level(raw)[0])
    first = re.sub(r"^(a|an|the) ", "", first)
    if first.startswith("no "):  # "no official symbol"
        return None
    return first if _is_clean_value(first, 50) else None


def other_symbols(raw: str | None) -> str | None:
    if not raw:
        return None
    rest = [strip_parens(p) for p in split_top_level(raw)[1:]]
    rest = [re.sub(r"^and ", "", p) for p in rest if p]
    return ", ".join(rest) if rest else None


def extract_anthem(raw: str | None) -> str | None:
    if not raw:
        return None
    text = raw.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    match = re.search(r'"([^"]+)"', text)
    if not match:
        return None
    title = match.group(1).strip().rstrip(",")
    return title if _is_clean_value(title, 70) else None


def extract_independence(raw: str | None) -> tuple[str | None, str | None]:
    """(year, from-whom) of the first independence date, when the Factbook gives one."""
    if not raw or raw.lower().startswith("none"):
        return None, None
    first = split_top_level(raw, ";")[0]
    year_match = re.search(r"\b(1\d{3}|20\d{2})\b", first)
    year = year_match.group(1) if year_match else None
    from_match = re.search(r"\(from (?:the )?([A-Z][^;()]*?)\)", first)
    source = from_match.group(1).strip() if from_match else None
    if source is not None and not (_is_clean_value(source, 40) and all(
            w[0].isupper() or w in ("and", "of", "the") for w in source.split())):
        source = None  # "French-administered UN trusteeship", "UK protectorate status"
    return year, source


def extract_highest_point(raw: str | None) -> str | None:
    if not raw:
        return None
    text = strip_parens(raw)
    text = re.sub(r"\s*-?[\d,.]+(\s*m\b.*)?$", "", text).strip(" ,;")
    if not text or not text[0].isupper() or " was" in text:
        return None
    return text if _is_clean_value(text, 50) else None


def extract_currency(raw: str | None) -> tuple[str | None, str | None]:
    if not raw:
        return None, None
    match = re.match(r"^(.+?) \(([A-Z]{3})\) per US dollar", raw)
    if not match:
        return None, None
    name, code = match.group(1).strip(), match.group(2)
    for prefix, common in _CFA_NAMES.items():
        if name.startswith(prefix):
            return common, code
    if " or " in name or "/" in name or len(name) > 40:
        return None, code
    words = name.split(" ")
    last = words[-1]
    if last in _CURRENCY_SINGULAR:
        last = _CURRENCY_SINGULAR[last]
    elif last.endswith("s") and not last.endswith("ss"):
        last = last[:-1]
    words[-1] = last
    return " ".join(words), code


def extract_government_type(raw: str | None) -> str | None:
    if not raw:
        return None
    first = strip_parens(split_top_level(raw, ";")[0])
    return first if _is_clean_value(first, 60) and first[0].islower() else None


def extract_demonym(raw: str | None) -> str | None:
    if not raw:
        return None
    first = strip_parens(split_top_level(raw, ",;")[0]).split(" or ")[0].strip()
    return first if _is_clean_value(first, 30) and first[0].isupper() else None


def flag_parts(raw: str | None) -> dict[str, str]:
    """The labelled parts ("description", "meaning", "history", "note") of the Factbook "Flag" field."""
    if not raw:
        return {}
    parts: dict[str, str] = {}
    pieces = re.split(r"(?:^|;\s*)(description|meaning|history|note(?: \d)?):\s*", raw)
    if len(pieces) == 1:
        return {"description": raw.strip(" ;")} if ":" not in raw[:40] else {}
    for label, value in zip(pieces[1::2], pieces[2::2], strict=False):
        key = label.split(" ")[0]
        if key not in parts and value.strip(" ;"):
            parts[key] = value.strip(" ;")
    return parts
