"""The real-world path end to end, against loopback fakes of SerpApi and an OpenAI-compatible server.

``eval --tasks fvqa:FILE --backend serpapi:URL --judge openai:URL#m --summarizer openai:URL#m
--policy openai:URL#m`` records a run; the same command in replay mode, with the fakes shut
down, reproduces it byte for byte (judge verdicts included); ``rescore --judge`` works offline
from the recording; no key appears in any output, cache, trajectory or log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from search.webfake import FakeWebServer

from mmsearch_gym.cli import main

from .fakes import LLM_KEY, SERP_KEY, chat_handler, serpapi_handler, write_fvqa

pytest.importorskip("pyarrow")


def _command(fvqa: Path, serp_url: str, llm_url: str, cache: Path, mode: str, out: Path) -> list[str]:
    llm = f"openai:{llm_url}/v1"
    cache_block = json.dumps({"mode": mode, "dir": str(cache)})
    return ["eval", "--tasks", f"fvqa:{fvqa}", "--backend", f"serpapi:{serp_url}/search.json",
            "--judge", f"{llm}#judge-model", "--summarizer", f"{llm}#summary-model",
            "--policy", f"{llm}#policy-model", "--policy-set", f"cache={cache_block}",
            "--set", f"cache={cache_block}", "--no-progress", "--per-episode",
            "--json", str(out / "results.json"), "--trajectories", str(out / "run.jsonl")]


def _without_timing(path: Path) -> list[dict]:
    """Trajectories minus wall-clock timings and the cache mode (the one thing a replay changes)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row.pop("timing", None)
        row["env"]["kwargs"]["cache"].pop("mode")
        row["env"]["cache"].pop("mode")
        for turn in row["turns"]:
            turn.pop("timing", None)
        rows.append(row)
    return rows


def _all_text(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_record_then_replay_offline_bit_for_bit_and_rescore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SERPAPI_API_KEY", SERP_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", LLM_KEY)
    fvqa = write_fvqa(tmp_path / "fvqa_test.parquet")
    cache = tmp_path / "cache"
    live, replayed = tmp_path / "live", tmp_path / "replayed"
    with FakeWebServer(serpapi_handler, max_requests=50) as serp, FakeWebServer(chat_handler, max_requests=80) as llm:
        assert main(_command(fvqa, serp.url, llm.url, cache, "readthrough", live)) == 0
        serp_calls, llm_calls = len(serp.requests), len(llm.requests)
        assert serp.unexpected == 0 and llm.unexpected == 0
        serp_url, llm_url = serp.url, llm.url
    assert serp_calls == 3  # a Lens call per episode; the second episode's web search is a cache hit
    roles = {"judge": 2, "summary": 2, "policy": 6}  # 2 verdicts, 2 hits summarised once, 3 turns x 2
    assert llm_calls == sum(roles.values())

    recorded = json.loads((live / "results.json").read_text())
    assert [e["correct"] for e in recorded["per_episode"]] == [True, False]  # the judge's verdicts
    assert recorded["reward_spec"]["scorer"] == "judge:judge-model"
    trajectory = json.loads((live / "run.jsonl").read_text().splitlines()[0])
    assert "summary: " in trajectory["turns"][1]["observation"]  # text results were summarised

    # Replay: the fakes are gone and so are the keys; every search, summary, completion and verdict
    # comes from the cache.
    monkeypatch.delenv("SERPAPI_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(_command(fvqa, serp_url, llm_url, cache, "replay", replayed)) == 0
    again = json.loads((replayed / "results.json").read_text())
    live_calls, replay_calls = recorded.pop("accounting"), again.pop("accounting")
    assert again == recorded  # every number of the table, every episode, every verdict
    assert (replayed / "results.json").read_text().replace(json.dumps(replay_calls, indent=2, sort_keys=True)
                                                           .replace("\n", "\n  "), "") == \
        (live / "results.json").read_text().replace(json.dumps(live_calls, indent=2, sort_keys=True)
                                                    .replace("\n", "\n  "), "")  # byte for byte
    assert live_calls["calls"] == {"judge": {"live_calls": 2, "cache_hits": 0},
                                   "policy": {"live_calls": 6, "cache_hits": 0},
                                   "serpapi": {"live_calls": 3, "cache_hits": 0},
                                   "summarizer": {"live_calls": 2, "cache_hits": 0}}
    assert live_calls["search_cache_hits"] == 1 and live_calls["total_cost_usd"] == pytest.approx(3 * 0.015)
    assert all(c["live_calls"] == 0 for c in replay_calls["calls"].values())
    assert replay_calls["calls"]["judge"]["cache_hits"] == 2 and replay_calls["search_cache_hits"] == 4
    assert replay_calls["total_cost_usd"] == 0
    assert _without_timing(replayed / "run.jsonl") == _without_timing(live / "run.jsonl")

    # `mmsearch-gym replay` re-executes every recorded turn (searches, summaries, verdicts) offline.
    # The file names neither its task file nor its cache: the user does (issue 16).
    assert main(["replay", str(live / "run.jsonl"), "--all", "--no-progress"]) == 2
    assert main(["replay", str(live / "run.jsonl"), "--tasks", f"fvqa:{fvqa}", "--cache-dir", str(cache),
                 "--all", "--no-progress"]) == 0

    # Rescore offline with the judge: verdicts read back from the recording, no server.
    rescored = tmp_path / "rescored.json"
    assert main(["rescore", str(live / "run.jsonl"), "--reward", "deepmmsearch-r1", "--offline",
                 "--judge", f"openai:{llm_url}/v1#judge-model", "--json", str(rescored)]) == 0
    table_all = json.loads(rescored.read_text())["rescored"]
    table = table_all
    assert next(iter(table.values()))["accuracy"] == 0.5

    # Share the verdicts as a cassette; a fresh directory that imports it rescores offline too.
    cassette = tmp_path / "judge.jsonl"
    assert main(["cache", "export", str(cache / "services"), "--backend", "judge", "-o", str(cassette)]) == 0
    fresh = tmp_path / "fresh"
    assert main(["cache", "import", str(cassette), "--dir", str(fresh / "services")]) == 0
    again_path = tmp_path / "rescored-from-cassette.json"
    assert main(["rescore", str(live / "run.jsonl"), "--reward", "deepmmsearch-r1", "--offline", "--judge-cache",
                 str(fresh), "--judge", f"openai:{llm_url}/v1#judge-model", "--json", str(again_path)]) == 0
    assert json.loads(again_path.read_text())["rescored"] == table_all

    printed = capsys.readouterr()
    everything = _all_text(tmp_path) + printed.out.encode() + printed.err.encode() + caplog.text.encode()
    for key in (SERP_KEY, LLM_KEY):
        assert key.encode() not in everything


def test_a_missing_key_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MY_SERP_KEY", raising=False)
    fvqa = write_fvqa(tmp_path / "fvqa_test.parquet")
    backend = json.dumps({"name": "serpapi", "api_key_env": "MY_SERP_KEY"})
    assert main(["eval", "--tasks", f"fvqa:{fvqa}", "--backend", backend, "--policy", "direct",
                 "--no-progress"]) == 2
    assert "MY_SERP_KEY" in capsys.readouterr().err


def test_a_grounded_run_with_crops_uploaded_to_an_image_host_replays(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """deepmmsearch-r1: a VLM grounds the crop, the built-in image server hosts it for Google Lens."""
    monkeypatch.setenv("SERPAPI_API_KEY", SERP_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", LLM_KEY)
    fvqa = write_fvqa(tmp_path / "fvqa_test.parquet", with_urls=False)
    cache = tmp_path / "cache"

    def command(serp_url: str, llm_url: str, mode: str, out: Path) -> list[str]:
        block = json.dumps({"mode": mode, "dir": str(cache)})
        backend = json.dumps({"name": f"serpapi:{serp_url}/search.json", "image_host": "local"})
        return ["eval", "--tasks", f"fvqa:{fvqa}", "--dialect", "deepmmsearch-r1", "--backend", backend,
                "--grounder", f"openai:{llm_url}/v1#vlm", "--judge", f"openai:{llm_url}/v1#judge-model",
                "--policy", f"openai:{llm_url}/v1#policy-model", "--policy-set", f"cache={block}",
                "--set", f"cache={block}", "--no-progress", "--per-episode", "--json", str(out / "r.json"),
                "--trajectories", str(out / "run.jsonl")]

    with FakeWebServer(serpapi_handler, max_requests=50) as serp, FakeWebServer(chat_handler, max_requests=80) as llm:
        assert main(command(serp.url, llm.url, "readthrough", tmp_path / "live")) == 0
        lens_urls = [r.param("url") for r in serp.requests if r.param("engine") == "google_lens"]
        grounder_calls = sum("Locate " in r.body.decode() for r in llm.requests)
        urls = serp.url, llm.url
    assert len(lens_urls) == 2 and all(u.startswith("http://127.0.0.1:") and u.endswith(".png") for u in lens_urls)
    assert grounder_calls == 2
    first = json.loads((tmp_path / "live" / "run.jsonl").read_text().splitlines()[0])
    assert first["turns"][0]["box"] == [0, 0, 32, 28] and first["turns"][0]["hits"]  # grown to 28 px by the env
    monkeypatch.delenv("SERPAPI_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(command(*urls, "replay", tmp_path / "replayed")) == 0
    assert _without_timing(tmp_path / "replayed" / "run.jsonl") == _without_timing(tmp_path / "live" / "run.jsonl")
    from mmsearch_gym.search import hosting

    for server in hosting._LOCAL.values():  # the shared built-in image server of this process
        server.close()
    hosting._LOCAL.clear()
