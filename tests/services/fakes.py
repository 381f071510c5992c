"""Loopback fakes of SerpApi and of an OpenAI-compatible chat-completions server, and an FVQA file.

Built on ``tests/search/webfake.FakeWebServer`` (bounded, 127.0.0.1 only). The chat fake plays
three roles, told apart by the request: the judge (its system prompt), the summariser (its
system prompt) and the search policy (anything else; it answers by the number of turns so far).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from search.webfake import Reply, SeenRequest

from mmsearch_gym.services import judge as judge_module
from mmsearch_gym.services import summarizer as summarizer_module

SERP_KEY = "serp-secret-0123456789"
LLM_KEY = "sk-llm-secret-abcdef0123"

QUESTIONS = {  # question -> (gold, what the fake policy answers)
    "Which landmark is shown in the picture?": ("Eiffel Tower", "Eiffel Tower"),
    "In which city was this photo taken?": ("Paris", "Lyon"),
}


def completion(text: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def chat_handler(seen: SeenRequest) -> Reply:
    """The judge, the summariser or the policy, depending on the request."""
    if seen.header("Authorization") != f"Bearer {LLM_KEY}":
        return Reply(401, {"error": {"message": "bad key"}})
    if seen.path != "/v1/chat/completions":
        return Reply(404, {"error": {"message": "not found"}})
    body = seen.json()
    messages = body["messages"]
    first = _text(messages[0].get("content"))
    if first == judge_module.SYSTEM_PROMPT:
        user = _text(messages[1]["content"])
        gold = user.split("GOLD ANSWERS: ")[1].split("\n")[0].split(" | ")
        prediction = user.split("PREDICTION: ")[1].split("\n")[0]
        ok = any(g.lower() in prediction.lower() for g in gold)
        return Reply(200, completion("Verdict: CORRECT" if ok else "INCORRECT."))
    if first.startswith(summarizer_module.SYSTEM_PROMPT.split("{")[0][:40]):
        content = _text(messages[1]["content"]).split("CONTENT:\n", 1)[1]
        return Reply(200, completion("summary: " + " ".join(content.split())[:60]))
    if first.startswith("Locate "):  # the VLM grounder (its prompt is the user turn's text part)
        return Reply(200, completion("The box is [0, 0, 32, 24]."))
    question = next(q for q in QUESTIONS if any(q in _text(m.get("content")) for m in messages))
    turns = sum(1 for m in messages if m["role"] == "assistant")
    deep = "<img_search>" in first  # the deepmmsearch-r1 dialect's system prompt
    if turns == 0 and deep:
        return Reply(200, completion("<reason>crop it</reason><img_search>the tower on the left</img_search>"))
    if turns == 0:
        return Reply(200, completion("<reason>what is this?</reason><search><img></search>"))
    if turns == 1:
        return Reply(200, completion("<reason>read more</reason><text_search>famous iron tower</text_search>"))
    return Reply(200, completion(f"<reason>done</reason><answer>{QUESTIONS[question][1]}</answer>"))


def serpapi_handler(seen: SeenRequest) -> Reply:
    """Google web search and Google Lens in SerpApi's JSON shapes."""
    if seen.param("api_key") != SERP_KEY:
        return Reply(401, {"error": "Invalid API key."})
    if seen.param("engine") == "google":
        q = seen.param("q") or ""
        return Reply(200, {"search_metadata": {"status": "Success"}, "organic_results": [
            {"title": f"{q} - Wikipedia", "link": "https://en.wikipedia.org/wiki/Eiffel_Tower",
             "snippet": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."},
            {"title": "Visit Paris", "link": "https://paris.example/visit", "snippet": "Paris travel guide."}]})
    if seen.param("engine") == "google_lens":
        return Reply(200, {"search_metadata": {"status": "Success"}, "visual_matches": [
            {"title": "Eiffel Tower at night", "link": "https://photos.example/1", "source": "photos.example"},
            {"title": "Paris skyline", "link": "https://photos.example/2", "source": "photos.example"}]})
    return Reply(400, {"error": "unknown engine"})


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    return buf.getvalue()


def write_fvqa(path: Path, *, with_urls: bool = True) -> Path:
    """A two-row FVQA parquet file in MMSearch-R1's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, (question, (gold, _)) in enumerate(QUESTIONS.items()):
        rows.append({
            "data_source": "fvqa",
            "prompt": [{"role": "user", "content": f"<image>\nQuestion: {question}"}],
            "images": [{"bytes": png((40 * i, 90, 160)), "path": None}],
            "reward_model": {"candidate_answers": json.dumps([gold]), "ground_truth": gold, "style": "rule"},
            "image_urls": [f"https://images.example/{i}.jpg" if with_urls else None],
            "data_id": f"fvqa_{i}",
            "category": "search_required",
        })
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("reward_model", pa.struct([("candidate_answers", pa.string()), ("ground_truth", pa.string()),
                                    ("style", pa.string())])),
        ("image_urls", pa.list_(pa.string())),
        ("data_id", pa.string()),
        ("category", pa.string()),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path
