"""Rows as publishers ship them: local parquet / JSONL / JSON / CSV / Arrow files, or ``hf:``.

A benchmark loader (:mod:`mmsearch_gym.loaders.benchmarks`) maps one row (a dict) to a Task;
this module only gets the rows and turns the many ways an image is shipped (encoded bytes, a
``{"bytes", "path"}`` struct, a PIL image from ``datasets``, a base64 string, a file path or
id under an image folder, or a URL whose file was downloaded there) into Task image fields.

``hf:NAME[:CONFIG][:SPLIT]`` reads a Hugging Face dataset through ``datasets`` (extra
``hf``) strictly offline: only what is in the local datasets cache (or a local folder NAME)
is read, as with ``HF_DATASETS_OFFLINE=1``; a dataset that is not there raises a DataError
saying how to download it once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mmsearch_gym.errors import ConfigError, DataError

__all__ = ["ImageResolver", "Rows", "read_hf", "read_rows"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class Rows:
    """The rows of one source, with where they came from (for error messages)."""

    rows: list[dict[str, Any]]
    where: str
    folder: Path | None = None
    """The folder relative image paths are resolved against (the file's folder)."""
    split: str | None = None


def read_rows(path: str | Path) -> Rows:
    """Every row of a local file: ``.parquet``, ``.jsonl``, ``.json`` (a list, or an object
    holding one list), ``.csv`` / ``.tsv``, ``.arrow`` (one Arrow IPC file) or a folder written
    by ``datasets.Dataset.save_to_disk``."""
    path = Path(path)
    if path.is_dir():
        return Rows(_rows_of_dataset(_load_from_disk(path), str(path)), str(path), folder=path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    suffix = path.suffix.lower()
    readers = {".parquet": _parquet_rows, ".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows,
               ".tsv": _csv_rows, ".arrow": _arrow_rows}
    if suffix not in readers:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .parquet, .jsonl, .json, .csv, .tsv, "
                        ".arrow or a save_to_disk folder")
    rows = readers[suffix](path)
    if not rows:
        raise DataError(f"{path} has no rows")
    return Rows(rows, str(path), folder=path.parent)


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading parquet files needs pyarrow: pip install mmsearch-gym[parquet]") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable parquet file: {exc}") from None


def _arrow_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow as pa
    except ImportError:
        raise ConfigError("reading Arrow files needs pyarrow: pip install mmsearch-gym[parquet]") from None
    errors = []
    for opener in (pa.ipc.open_stream, pa.ipc.open_file):  # datasets writes the stream format
        try:
            with pa.memory_map(str(path)) as source:
                return opener(source).read_all().to_pylist()
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
    raise DataError(f"{path} is not a readable Arrow IPC file: {errors[-1]}")


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _json_rows(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):  # {"data": [...]}, {"questions": [...]} or {id: row, ...}
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:
            data = lists[0]
        elif data and all(isinstance(v, dict) for v in data.values()):
            data = [{"id": k, **v} if "id" not in v else v for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects (or an object holding one)")
    return data


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("r", encoding="utf-8", newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle, delimiter=delimiter)]


# --- Hugging Face datasets -------------------------------------------------------------


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("hf: sources and Arrow folders need Hugging Face datasets: "
                          "pip install mmsearch-gym[hf]") from None
    return datasets


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_DATASETS_OFFLINE semantics for one call: the cache only, never the network."""
    datasets = _datasets()
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _load_from_disk(path: Path) -> Any:
    datasets = _datasets()
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError or its own errors
        raise DataError(f"{path} is not a datasets save_to_disk folder: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DataError(f"{path} holds the splits {sorted(data)}; name one folder ({path}/SPLIT)")
        data = next(iter(data.values()))
    return data


def _rows_of_dataset(data: Any, where: str) -> list[dict[str, Any]]:
    """Rows with images as raw ``{"bytes", "path"}`` (no decoding of every image up front)."""
    datasets = _datasets()
    features = getattr(data, "features", {}) or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            data = data.cast_column(name, datasets.Image(decode=False))
    rows = [dict(row) for row in data]
    if not rows:
        raise DataError(f"{where} has no rows")
    return rows


def read_hf(spec: str) -> Rows:
    """``NAME[:CONFIG][:SPLIT]`` read offline from the local datasets cache (or folder NAME).

    With two parts the second is a split when it looks like one (train, test, validation,
    val, dev, or contains ``[``), else a config; with no split the only split is taken.
    """
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(f"hf source needs hf:NAME[:CONFIG][:SPLIT], got hf:{spec}")
    name, config, split = parts[0], None, None
    if len(parts) == 3:
        config, split = parts[1] or None, parts[2] or None
    elif len(parts) == 2:
        looks_split = parts[1].split("[")[0] in ("train", "test", "validation", "val", "dev") or "[" in parts[1]
        config, split = (None, parts[1]) if looks_split else (parts[1], None)
    datasets = _datasets()
    try:
        with _offline():
            data = datasets.load_dataset(name, config, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise DataError(
            f"hf:{spec} is not in the local datasets cache ({type(exc).__name__}: {str(exc)[:200]}). "
            f"mmsearch-gym reads hf: sources offline; download it once with "
            f"`python -c \"import datasets; datasets.load_dataset({name!r}, {config!r})\"` (online), "
            "or point hf: at a local folder") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many error types for missing configs and files
        raise DataError(f"hf:{spec} could not be read offline: {type(exc).__name__}: {str(exc)[:300]}") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DataError(f"hf:{spec} has the splits {sorted(data)}; name one: hf:{name}:{config or ''}:SPLIT"
                            .replace("::", ":"))
        split, data = next(iter(data.items()))
    folder = Path(name) if Path(name).is_dir() else None
    return Rows(_rows_of_dataset(data, f"hf:{spec}"), f"hf:{spec}", folder=folder, split=split)


# --- images ----------------------------------------------------------------------------


@dataclass
class ImageResolver:
    """Turns a row's image value into ``(image_bytes, image_path, image_url)`` for a Task.

    ``image_dir`` is where benchmarks that ship image ids or URLs (InfoSeek's OVEN ids,
    Enc-VQA's iNaturalist / Landmarks ids, COCO ids) keep their downloaded files; a file is
    found by its name or by its stem anywhere below it (one index built on first use).
    """

    folder: Path | None = None
    image_dir: Path | None = None
    _index: dict[str, Path] | None = field(default=None, repr=False)

    def _find(self, name: str) -> Path | None:
        for base in (self.image_dir, self.folder):
            if base is None:
                continue
            direct = base / name
            if direct.is_file():
                return direct
            for suffix in _IMAGE_SUFFIXES:
                if (base / f"{name}{suffix}").is_file():
                    return base / f"{name}{suffix}"
        if self.image_dir is None:
            return None
        if self._index is None:
            self._index = {}
            for path in sorted(self.image_dir.rglob("*")):
                if path.is_file():
                    self._index.setdefault(path.name, path)
                    self._index.setdefault(path.stem, path)
        stem = Path(name).name
        return self._index.get(stem) or self._index.get(Path(stem).stem)

    def resolve(self, value: Any, where: str, *, url: str | None = None
                ) -> tuple[bytes | None, str | None, str | None]:
        """Bytes, a path or (for a URL) the downloaded file; a DataError says what is missing."""
        if isinstance(value, list):  # several images (Enc-VQA's up to 5 ids): the first one found
            candidates = [v for v in value if v not in (None, "", {})]
            for candidate in candidates[:-1]:
                try:
                    return self.resolve(candidate, where, url=url)
                except DataError:
                    continue
            value = candidates[-1] if candidates else None
        if hasattr(value, "save") and hasattr(value, "mode"):  # a decoded PIL image
            buf = io.BytesIO()
            value.convert("RGB").save(buf, format="PNG")
            return buf.getvalue(), None, url
        if isinstance(value, Mapping):
            data = value.get("bytes")
            if isinstance(data, (bytes, bytearray)) and data:
                return bytes(data), None, url
            value = value.get("path") or value.get("url")
        if isinstance(value, (bytes, bytearray)) and value:
            return bytes(value), None, url
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(int(value))
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: no image (expected bytes, a path, an id under --image-dir, or a URL)")
        value = value.strip()
        if value.startswith(("http://", "https://")):
            name = Path(urlparse(value).path).name
            found = self._find(name) if name else None
            if found is None:
                raise DataError(f"{where}: the image is only a URL ({value}); download the images into a folder "
                                "and pass it as image_dir (source option ?image_dir=DIR)")
            return None, str(found), url or value
        if value.startswith("data:image") or len(value) > 512:
            data = _b64(value)
            if data is not None:
                return data, None, url
        path = Path(value)
        if path.is_absolute() and path.is_file():
            return None, str(path), url
        found = self._find(value)
        if found is None:
            hint = f" under {self.image_dir}" if self.image_dir else "; pass the image folder as image_dir"
            raise DataError(f"{where}: image {value!r} not found{hint}")
        return None, str(found), url


def _b64(text: str) -> bytes | None:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None
