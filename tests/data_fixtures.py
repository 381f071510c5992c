"""Shared helpers for the data-pipeline tests: a small JSONL task set and a fake teacher server."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from test_openai_policy import FakeServer, completion

__all__ = ["FakeServer", "knows_paris_server", "write_tasks"]

QUESTIONS = {
    "k1": ("What is the capital of France?", "Paris", "geography"),
    "k2": ("What is the capital of France, the country of this flag?", "Paris", "geography"),
    "u1": ("Who painted the picture on this wall?", "Ada Lovelace", "art"),
    "u2": ("Which team owns the stadium shown?", "Blue Falcons", "sports"),
    "u3": ("Who designed the building in this photo?", "Jane Doe", "art"),
}


def write_tasks(folder: Path) -> str:
    """A JSONL task set (real PNG images, categories unknown); returns its source string."""
    rows = []
    for i, (tid, (question, answer, topic)) in enumerate(QUESTIONS.items()):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (40 * i, 90, 200 - 30 * i)).save(buf, format="PNG")
        (folder / f"{tid}.png").write_bytes(buf.getvalue())
        rows.append({"id": tid, "image": f"{tid}.png", "question": question, "answers": [answer],
                     "taxonomy": topic})
    path = folder / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"jsonl:{path}"


def knows_paris_server(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A model that knows French capitals; for anything else it searches the image first, then
    answers with the gold answer it 'read' in the results (the fake's stand-in for evidence)."""
    messages = body["messages"]
    system = messages[0]["content"] if isinstance(messages[0]["content"], str) else json.dumps(messages[0])
    question = next(b["text"] for b in messages[1]["content"] if b.get("type") == "text")
    if "France" in question:
        return 200, completion("<reason>I know this.</reason><answer>Paris", stop_reason="</answer>")
    if "No search tool is available" in system or len(messages) == 2:
        return 200, completion("<reason>I need to look this up.</reason><search><img>", stop_reason="</search>")
    gold = next(a for q, a, _ in QUESTIONS.values() if q in question)
    return 200, completion(f"<reason>The results say so.</reason><answer>{gold}", stop_reason="</answer>")
