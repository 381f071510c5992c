"""The tiny models' tokenizer and copy pretraining batches (no training here)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmsearch_gym.errors import ConfigError  # noqa: E402
from mmsearch_gym.integrations.tiny_models import _copy_batch, build_tokenizer, load_tiny_model  # noqa: E402

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
CORPUS = ["1. [image] Flag of Venezuela\nFlag of Venezuela. three equal horizontal bands of yellow, blue and red",
          "<answer>Belgium</answer> the Flag of Belgium, black (left side), yellow and red"] * 20
_TOKENIZER: list[object] = []
_SAVED: list[object] = []


def tokenizer():  # type: ignore[no-untyped-def]
    if not _TOKENIZER:
        _TOKENIZER.append(build_tokenizer(CORPUS, chat_template=TEMPLATE, vocab_size=400))
    return _TOKENIZER[0]


def saved(folder: Path):  # type: ignore[no-untyped-def]
    """A saved tiny model's tokenizer as ``AutoTokenizer`` loads it (transformers makes it a Qwen2Tokenizer)."""
    if not _SAVED:
        from mmsearch_gym.integrations.tiny_models import save_tiny_model

        path = save_tiny_model(folder, chat_template=TEMPLATE, texts=CORPUS, vocab_size=400)
        _SAVED.append(load_tiny_model(path)[1])
    return _SAVED[0]


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(CORPUS[:2] + ["it's 320x240 px.\n\n  (a) Côte d'Ivoire's"]))
def test_every_text_decodes_back_exactly_built_and_loaded(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    """The tokenizer built in memory and the one loaded back (a Qwen2Tokenizer, what training and
    eval use) split digits differently, but both give back every text exactly."""
    for tok in (tokenizer(), saved(tmp_path_factory.mktemp("tok"))):
        ids = tok(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        assert tok.decode(ids) == text  # type: ignore[attr-defined]


def test_a_word_after_a_tag_is_other_tokens_than_after_a_space() -> None:
    """GPT-2's and Qwen's convention (why the copy proof writes ``<answer> Venezuela``)."""
    tok = saved(Path(tempfile.mkdtemp()))
    assert "ĠVenezuela" in tok.tokenize("Flag of Venezuela")  # type: ignore[attr-defined]
    assert "ĠVenezuela" not in tok.tokenize("<answer>Venezuela</answer>")  # type: ignore[attr-defined]
    assert "ĠVenezuela" in tok.tokenize("<answer> Venezuela</answer>")  # type: ignore[attr-defined]


@pytest.mark.parametrize("gap", [0, 40])
def test_copy_batch_repeats_one_string_and_labels_only_the_repeat(gap: int) -> None:
    pool = torch.arange(100, 600)
    ids, labels = _copy_batch(pool, 64, 12, gap, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (64, 24 + gap)
    offsets = set()
    for row, row_labels in zip(ids, labels, strict=True):
        scored = (row_labels != -100).nonzero().flatten()
        assert len(scored) == 11 and torch.equal(row_labels[scored], row[scored])
        second = int(scored[0]) - 1  # the repeat's first token is unscored
        first = next(p for p in range(second - 11) if torch.equal(row[p:p + 12], row[second:second + 12]))
        offsets.add(second - first)
    assert (offsets == {12}) if gap == 0 else (len(offsets) > 10)  # a fixed offset only without a gap
    assert all(12 <= o <= 12 + gap for o in offsets)


def test_pretrain_copying_rejects_a_negative_gap(tmp_path: Path) -> None:
    from mmsearch_gym.integrations.tiny_models import pretrain_copying

    model, tok = load_tiny_model(_tiny(tmp_path))
    with pytest.raises(ConfigError, match="gap"):
        pretrain_copying(model, tok, steps=1, gap=-1)


def _tiny(tmp_path: Path) -> Path:
    from mmsearch_gym.integrations.tiny_models import save_tiny_model

    return save_tiny_model(tmp_path / "lm", chat_template=TEMPLATE, texts=CORPUS, vocab_size=400)
