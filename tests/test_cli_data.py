"""The data commands from the command line: label-search-need and make-sft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsearch_gym.cli import main


def test_label_search_need_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, balanced = tmp_path / "labels.jsonl", tmp_path / "balanced.jsonl"
    args = ["label-search-need", "--policy", "direct", "-k", "2", "--episodes", "15", "--out", str(out),
            "--balanced", str(balanced), "--no-progress"]
    assert main(args) == 0
    assert "15 tasks labelled" in capsys.readouterr().out
    rows = [json.loads(line) for line in balanced.read_text().splitlines()]
    assert len(rows) % 2 == 0 and sum(r["label"] == "search_free" for r in rows) == len(rows) // 2
    assert main(args) == 0 and len(out.read_text().splitlines()) == 15  # resumed: nothing added


def test_make_sft_command_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sft"
    assert main(["make-sft", "--episodes", "20", "--out", str(out), "--no-progress", "--no-hf"]) == 0
    text = capsys.readouterr().out
    assert "kept" in text and (out / "sft.jsonl").is_file() and not (out / "hf").exists()
    assert main(["make-sft", "--episodes", "5", "--tasks", "bogus:x", "--out", str(out), "--no-progress"]) == 2
    assert "unknown task source 'bogus'" in capsys.readouterr().err
    assert main(["label-search-need", "-k", "2", "--min-correct", "3", "--out", str(tmp_path / "l.jsonl")]) == 2


@pytest.mark.parametrize("verdict, kept", [("CORRECT", True), ("INCORRECT", False)])
def test_make_sft_keeps_what_the_llm_judge_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     verdict: str, kept: bool) -> None:
    """``--judge`` makes an LLM the reward's scorer, so it decides which teacher episodes are kept
    (DeepMMSearchVQA's correctness filter); its verdicts are recorded in the run's cache."""
    from search.webfake import FakeWebServer, Reply

    reply = {"id": "c", "object": "chat.completion", "model": "judge",
             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": verdict}}]}
    out = tmp_path / "sft"
    cache = json.dumps({"mode": "readthrough", "dir": str(tmp_path / "cache")})
    with FakeWebServer(lambda seen: Reply(200, reply), max_requests=40) as judge:
        code = main(["make-sft", "--episodes", "6", "--judge", f"openai:{judge.url}/v1#judge",
                     "--set", f"cache={cache}", "--out", str(out), "--no-progress", "--no-hf"])
        asked = len(judge.requests)
    assert asked == 6 and judge.unexpected == 0  # one verdict per teacher episode
    summary = json.loads((out / "summary.json").read_text())
    assert (code == 0) is kept and (sum(summary["kept"].values()) > 0) is kept
    capsys.readouterr()
