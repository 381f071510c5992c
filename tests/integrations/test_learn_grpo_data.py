"""The copy proof's SFT data transforms (``benchmarks/learn_grpo.py``), checked against the tokenizer."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmsearch_gym.actions import Answer, get_dialect  # noqa: E402
from mmsearch_gym.integrations.tiny_models import load_tiny_model, save_tiny_model  # noqa: E402

DIALECT = get_dialect("mmsearch-r1")
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def learn_grpo() -> ModuleType:
    if "learn_grpo" not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "benchmarks" / "learn_grpo.py"
        spec = importlib.util.spec_from_file_location("learn_grpo", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["learn_grpo"] = module
        spec.loader.exec_module(module)
    return sys.modules["learn_grpo"]


def chat(name: str) -> dict[str, object]:
    return {"category": "image_search", "messages": [
        {"role": "user", "content": "Question: Which country's flag is this?"},
        {"role": "assistant", "content": "<reason>I should search the whole image.</reason><search><img></search>"},
        {"role": "user", "content": f"<information>\n1. [image] Flag of {name}\nFlag of {name}. red\n</information>"},
        {"role": "assistant", "content": DIALECT.format(Answer(name), "The search results contain the answer.")}]}


_TOKENIZER: list[object] = []


def tokenizer():  # type: ignore[no-untyped-def]
    """A tiny model's tokenizer as training and eval load it (``AutoTokenizer``: a Qwen2Tokenizer)."""
    if not _TOKENIZER:
        texts = [m["content"] for m in chat("Belgium")["messages"]] * 20  # type: ignore[index]
        path = save_tiny_model(Path(tempfile.mkdtemp()) / "lm", chat_template=TEMPLATE, texts=texts, vocab_size=400)
        _TOKENIZER.append(load_tiny_model(path)[1])
    return _TOKENIZER[0]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.from_regex(r"[A-Z][a-z]{1,9}", fullmatch=True), min_size=1, max_size=3).map(" ".join))
def test_a_spaced_answer_is_the_titles_tokens_and_parses_the_same(name: str) -> None:
    data = datasets.Dataset.from_list([chat(name)])
    spaced = learn_grpo().space_after_answer_tag(data, DIALECT)[0]["messages"]
    answer_turn = spaced[-1]["content"]
    assert DIALECT.parse(answer_turn) == Answer(name)
    assert spaced[:-1] == data[0]["messages"][:-1]  # only the assistant's answer changed
    tok = tokenizer()
    answer = tok.tokenize(answer_turn.split("<answer>")[1])  # type: ignore[attr-defined]
    assert answer[-1] == "</answer>"
    title = tok.tokenize(f"Flag of {name}\n")  # type: ignore[attr-defined]
    assert title[-1 - len(answer[:-1]):-1] == answer[:-1]  # the same pieces, space included
    unspaced = tok.tokenize(data[0]["messages"][-1]["content"].split("<answer>")[1])  # type: ignore[attr-defined]
    assert unspaced[0] != answer[0]  # without the space the first piece differs


def test_pseudo_name_swaps_replace_the_name_in_the_result_and_the_answer() -> None:
    data = datasets.Dataset.from_list([chat("Belgium"), chat("Chile")])
    out = learn_grpo().augment_for_copying(data, DIALECT, swaps=2, copy_chats=0, seed=0, pseudo_names=50)
    assert len(out) == 6
    for row in out:
        answer = DIALECT.parse(row["messages"][-1]["content"])
        assert isinstance(answer, Answer) and f"Flag of {answer.text}\n" in row["messages"][-2]["content"]
    made_up = {DIALECT.parse(row["messages"][-1]["content"]).text for row in out} - {"Belgium", "Chile"}
    assert len(made_up) == 4 and made_up <= set(learn_grpo().made_up_names(50, seed=0))
