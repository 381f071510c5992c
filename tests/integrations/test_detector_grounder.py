"""DetectorGrounder with a tiny random-weight OWLv2 (no hub): boxes inside the image, thresholds, names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmsearch_gym.integrations.detector_grounder import DetectorGrounder
from mmsearch_gym.tasks import Task


def _tiny_tokenizer(directory: Path):
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"!": 0}  # as in CLIP: id 0 pads, and OWL masks text queries whose first id is 0
    for token in ["!</w>", ".</w>", *letters, *(f"{c}</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                                      pad_token="!")


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory: pytest.TempPathFactory) -> DetectorGrounder:
    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    config = transformers.Owlv2Config(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                     "vocab_size": len(tokenizer), "max_position_embeddings": 16, "pad_token_id": 0,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                       "num_hidden_layers": 1, "image_size": 64, "patch_size": 16},
        projection_dim=16)
    model = transformers.Owlv2ForObjectDetection(config)
    # Random box heads predict degenerate boxes; a zero last layer leaves OWL's grid prior (one box per patch).
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    image_processor = transformers.Owlv2ImageProcessor(size={"height": 64, "width": 64})
    processor = transformers.Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return DetectorGrounder(model, processor, threshold=0.0)


def _task(size: tuple[int, int]) -> Task:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, format="PNG")
    return Task("t", "q", ("a",), image_bytes=buf.getvalue())


@pytest.mark.parametrize("size", [(96, 64), (40, 120)])
def test_the_best_box_lies_inside_the_original_image(tiny_owl: DetectorGrounder, size: tuple[int, int]) -> None:
    box = tiny_owl.ground("the flag", _task(size))
    assert box is not None
    left, top, right, bottom = box
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    assert tiny_owl.ground("the flag", _task(size)) == box  # deterministic


def test_a_threshold_nothing_reaches_means_no_match(tiny_owl: DetectorGrounder) -> None:
    strict = DetectorGrounder(tiny_owl.model, tiny_owl.processor, threshold=1.0)
    assert strict.ground("the flag", _task((64, 64))) is None
    assert tiny_owl.ground("   ", _task((64, 64))) is None


def test_named_as_detector_in_specs(monkeypatch: pytest.MonkeyPatch, tiny_owl: DetectorGrounder) -> None:
    from mmsearch_gym.errors import ConfigError
    from mmsearch_gym.search.registry import build_grounder

    seen = {}

    def fake_from_pretrained(name, **kw):
        seen.update(name=name, **kw)
        return tiny_owl

    monkeypatch.setattr(DetectorGrounder, "from_pretrained", staticmethod(fake_from_pretrained))
    assert build_grounder({"name": "detector:some/dir", "threshold": 0.3}) is tiny_owl
    assert seen == {"name": "some/dir", "threshold": 0.3}
    with pytest.raises(ConfigError, match="model directory"):
        build_grounder("detector")
