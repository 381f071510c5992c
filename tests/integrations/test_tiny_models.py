"""The tiny models' tokenizer options and copy pretraining batches (no training here)."""

from __future__ import annotations

import json
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
_TOKENIZERS: dict[str, object] = {}


def tokenizer(spaces: str):  # type: ignore[no-untyped-def]
    if spaces not in _TOKENIZERS:
        _TOKENIZERS[spaces] = build_tokenizer(CORPUS, chat_template=TEMPLATE, vocab_size=400, spaces=spaces)
    return _TOKENIZERS[spaces]


def pieces(spaces: str, text: str) -> list[str]:
    return tokenizer(spaces).tokenize(text)  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.from_regex(r"[A-Z][a-z]{1,9}", fullmatch=True), min_size=1, max_size=3).map(" ".join))
def test_separate_spaces_spell_a_name_alike_in_a_result_and_in_an_answer(name: str) -> None:
    """With ``spaces="separate"`` copying a name from a result title is copying its tokens."""
    in_result = pieces("separate", f"1. [image] Flag of {name}\nFlag of {name}. three bands")
    in_answer = pieces("separate", f"<answer>{name}</answer>")
    assert in_answer[0] == "<answer>" and in_answer[-1] == "</answer>"
    name_tokens = in_answer[1:-1]
    starts = [i for i in range(len(in_result)) if in_result[i:i + len(name_tokens)] == name_tokens]
    assert len(starts) >= 2  # in the title and in the snippet


def test_prefix_spaces_spell_the_first_word_differently_after_a_tag() -> None:
    """GPT-2's convention, the default: " Venezuela" in a sentence is not "Venezuela" after <answer>."""
    assert "ĠVenezuela" in pieces("prefix", "Flag of Venezuela")
    assert "ĠVenezuela" not in pieces("prefix", "<answer>Venezuela</answer>")


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=60), st.sampled_from(["prefix", "separate"]))
def test_every_text_decodes_back_exactly(text: str, spaces: str) -> None:
    tok = tokenizer(spaces)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # type: ignore[operator,attr-defined]


def test_unknown_spaces_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="spaces"):
        build_tokenizer(CORPUS, chat_template=TEMPLATE, spaces="middle")


_SAVED: dict[str, object] = {}


def saved(spaces: str, folder: Path):  # type: ignore[no-untyped-def]
    """A saved tiny model's tokenizer as ``AutoTokenizer`` loads it (transformers makes it a Qwen2Tokenizer)."""
    if spaces not in _SAVED:
        from mmsearch_gym.integrations.tiny_models import save_tiny_model

        path = save_tiny_model(folder / spaces, chat_template=TEMPLATE, texts=CORPUS, vocab_size=400, spaces=spaces)
        assert json.loads((path / "mmsearch_tiny.json").read_text())["spaces"] == spaces
        _SAVED[spaces] = load_tiny_model(path)[1]
    return _SAVED[spaces]


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(CORPUS[:2] + ["it's 320x240 px.\n\n  (a) Côte d'Ivoire's"]),
       st.sampled_from(["prefix", "separate"]))
def test_a_saved_tokenizer_loads_back_giving_the_same_tokens(tmp_path_factory, text: str,  # type: ignore[no-untyped-def]
                                                             spaces: str) -> None:
    """Training uses the built tokenizer's data, eval and TRL the loaded one: they must agree."""
    loaded = saved(spaces, tmp_path_factory.mktemp("tok"))
    assert loaded.tokenize(text) == pieces(spaces, text)  # type: ignore[attr-defined]


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
    assert offsets == {12} if gap == 0 else len(offsets) > 10  # a fixed offset only without a gap
    assert all(12 <= o <= 12 + gap for o in offsets)


def test_copy_batch_rejects_a_negative_gap(tmp_path: Path) -> None:
    from mmsearch_gym.integrations.tiny_models import pretrain_copying

    model, tok = load_tiny_model(_tiny(tmp_path))
    with pytest.raises(ConfigError, match="gap"):
        pretrain_copying(model, tok, steps=1, gap=-1)


def _tiny(tmp_path: Path) -> Path:
    from mmsearch_gym.integrations.tiny_models import save_tiny_model

    return save_tiny_model(tmp_path / "lm", chat_template=TEMPLATE, texts=CORPUS, vocab_size=400)
