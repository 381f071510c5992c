"""Accounting: how many live calls each backend and service made, how many were cache hits, and
what the live calls cost, for ``eval --json``.

Every process counts into its own :class:`Ledger` (``LEDGER``): live backends through
:class:`CountingBackend` (the registry wraps every web backend it builds), services through
:class:`~mmsearch_gym.services.recorded.RecordedService`. A run that spans processes (env
workers) sets ``$MMSEARCH_GYM_LEDGER`` to a folder before starting them; each process writes its
counts there when it exits and :func:`collect` adds them up.

Prices are US dollars per live call, from :data:`PRICES` (list prices of late 2025, to be checked
against your plan): override any of them with ``eval --prices '{"serpapi": 0.01}'`` or a JSON
file. Self-hosted LLM services cost 0 unless priced; cache hits and replays always cost 0.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend

__all__ = ["LEDGER", "LEDGER_ENV", "PRICES", "CountingBackend", "Ledger", "accounting_report", "collect",
           "load_prices"]

LEDGER_ENV = "MMSEARCH_GYM_LEDGER"
PRICES: dict[str, float] = {
    "serpapi": 0.015,        # SerpApi Developer plan: $75 for 5,000 searches (web search or Google Lens)
    "google-vision": 0.0035,  # Cloud Vision WEB_DETECTION: $3.50 per 1,000 images (after the free 1,000/month)
    "searxng": 0.0,          # self-hosted
    "jina-reader": 0.0,      # free tier (token-priced beyond it)
    "world": 0.0,
    "judge": 0.0, "summarizer": 0.0, "grounder": 0.0, "policy": 0.0,  # self-hosted LLMs unless priced
}
"""Default US dollars per live call, by backend or service name."""


class Ledger:
    """Thread-safe counts ``{name: {"live_calls": n, "cache_hits": m}}`` of this process."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(name, field)] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (name, field), n in sorted(self._counts.items()):
                out.setdefault(name, {"live_calls": 0, "cache_hits": 0})[field] = n
            return out

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def flush(self, directory: str | Path | None = None) -> None:
        """Write this process's counts into the run's ledger folder (and forget them)."""
        folder = directory or os.environ.get(LEDGER_ENV)
        if not folder:
            return
        counts = self.snapshot()
        self.reset()
        if counts:
            path = Path(folder) / f"ledger-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
            path.write_text(json.dumps(counts, sort_keys=True), encoding="utf-8")


LEDGER = Ledger()
"""This process's ledger."""


def _flush_at_exit() -> None:
    try:
        LEDGER.flush()
    except OSError:  # the run's folder is gone: nothing left to report to
        pass


atexit.register(_flush_at_exit)
try:  # spawned multiprocessing workers skip atexit but run these finalizers
    from multiprocessing import util as _mp_util

    _mp_util.Finalize(None, _flush_at_exit, exitpriority=10)
except ImportError:  # pragma: no cover
    pass


def collect(directory: str | Path) -> dict[str, dict[str, int]]:
    """The summed counts of every process that wrote into ``directory`` (this one included)."""
    LEDGER.flush(directory)
    total: dict[str, Counter[str]] = {}
    for path in sorted(Path(directory).glob("ledger-*.json")):
        for name, fields in json.loads(path.read_text(encoding="utf-8")).items():
            total.setdefault(name, Counter()).update(fields)
    return {name: {"live_calls": int(c["live_calls"]), "cache_hits": int(c["cache_hits"])}
            for name, c in sorted(total.items())}


def load_prices(override: str | Mapping[str, Any] | None) -> dict[str, float]:
    """:data:`PRICES` updated from a mapping, a JSON object string or a JSON file path."""
    prices = dict(PRICES)
    if override is None:
        return prices
    data: Any = override
    if isinstance(override, str):
        text = override.strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"--prices {override!r} is neither a JSON object nor a file")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"prices are not valid JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError("prices must be a JSON object {name: US dollars per live call}")
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"the price of {name!r} must be a non-negative number, got {value!r}")
        prices[str(name)] = float(value)
    return prices


def accounting_report(counts: Mapping[str, Mapping[str, int]], prices: Mapping[str, float]) -> dict[str, Any]:
    """``{"calls": counts, "prices": used, "estimated_cost_usd": {name: $}, "total_cost_usd": $}``."""
    cost = {name: round(c["live_calls"] * float(prices.get(name, 0.0)), 6) for name, c in counts.items()}
    return {"calls": {k: dict(v) for k, v in counts.items()},
            "prices_usd_per_call": {k: prices[k] for k in sorted(prices) if k in counts},
            "estimated_cost_usd": cost, "total_cost_usd": round(sum(cost.values()), 6),
            "unpriced": sorted(k for k in counts if k not in prices)}


class CountingBackend:
    """A transparent wrapper that counts the live calls reaching a web backend (same name, version, params)."""

    def __init__(self, inner: SearchBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version

    def cache_params(self) -> dict[str, Any]:
        own = getattr(self.inner, "cache_params", None)
        return dict(own()) if callable(own) else {}

    def text_search(self, query: str, k: int) -> list[Hit]:
        LEDGER.add(self.name, "live_calls")
        return self.inner.text_search(query, k)

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        LEDGER.add(self.name, "live_calls")
        return self.inner.image_search(image, k)

    def __getattr__(self, name: str) -> Any:  # options of the wrapped backend (base_url, gl, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return repr(self.inner)


class AccountedRun:
    """Counts a run's calls across its processes: ``with AccountedRun() as run: ...; run.report(...)``.

    Sets ``$MMSEARCH_GYM_LEDGER`` to a fresh folder for the run (env workers started inside
    inherit it), starts this process's ledger from zero, and restores everything on exit.
    """

    def __init__(self) -> None:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="mmsearch-ledger-")
        self.directory = Path(self._tmp.name)
        self._previous: str | None = None
        self.counts: dict[str, dict[str, int]] = {}

    def __enter__(self) -> Self:
        self._previous = os.environ.get(LEDGER_ENV)
        os.environ[LEDGER_ENV] = str(self.directory)
        LEDGER.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.counts = collect(self.directory)
        finally:
            if self._previous is None:
                os.environ.pop(LEDGER_ENV, None)
            else:
                os.environ[LEDGER_ENV] = self._previous
            self._tmp.cleanup()

    def report(self, prices: Mapping[str, float], searches: Mapping[str, int]) -> dict[str, Any]:
        """The accounting block: calls per backend and service, search cache hits, estimated cost.

        ``searches`` are the searches the env ran (``{"text": n, "image": m}``); those that no
        live backend answered were cache hits (or failed before reaching a backend).
        """
        out = accounting_report(self.counts, prices)
        backend_live = sum(c["live_calls"] for name, c in self.counts.items() if name not in _SERVICES)
        out["searches"] = dict(searches)
        out["search_cache_hits"] = max(0, sum(searches.values()) - backend_live)
        return out


_SERVICES = ("judge", "summarizer", "grounder", "policy")
