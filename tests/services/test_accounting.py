"""Accounting: per-process ledgers summed across spawned workers, price table overrides, cost estimate."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, MemoryBackend
from mmsearch_gym.services.accounting import (
    LEDGER,
    PRICES,
    AccountedRun,
    CountingBackend,
    accounting_report,
    load_prices,
)


def _worker_calls() -> None:
    LEDGER.add("serpapi", "live_calls", 2)
    LEDGER.add("judge", "cache_hits", 5)


def test_counts_of_spawned_workers_are_summed_with_this_process() -> None:
    backend = CountingBackend(MemoryBackend(text={"q": [Hit("t", "https://u", "s", 1.0, "m")]}))
    with AccountedRun() as run:
        backend.text_search("q", 1)
        proc = multiprocessing.get_context("spawn").Process(target=_worker_calls)
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
    assert run.counts == {"judge": {"live_calls": 0, "cache_hits": 5},
                          "memory": {"live_calls": 1, "cache_hits": 0},
                          "serpapi": {"live_calls": 2, "cache_hits": 0}}
    report = run.report(load_prices({"memory": 0.5}), {"text": 4, "image": 0})
    assert report["estimated_cost_usd"] == {"judge": 0.0, "memory": 0.5, "serpapi": 2 * PRICES["serpapi"]}
    assert report["search_cache_hits"] == 1 and report["unpriced"] == []


def test_price_overrides_from_json_text_or_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"judge": 0.001}))
    assert load_prices(str(path))["judge"] == 0.001
    assert load_prices('{"serpapi": 0.01}')["serpapi"] == 0.01
    assert load_prices(None) == PRICES
    for bad in ('{"serpapi": -1}', '{"serpapi": "cheap"}', "[1]", str(tmp_path / "missing.json")):
        with pytest.raises(ConfigError):
            load_prices(bad)
    assert accounting_report({"bing": {"live_calls": 3, "cache_hits": 0}}, PRICES)["unpriced"] == ["bing"]
