"""image_feature / ImageIndex: shape, determinism, ranking rules and robustness on the real world."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageEnhance

from mmsearch_gym.search.image_features import FEATURE_DIM, ImageIndex, image_feature, image_features
from mmsearch_gym.world.knowledge import load_knowledge


def _tricolour(colours: list[tuple[int, int, int]], size: tuple[int, int] = (200, 150)) -> Image.Image:
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    band = size[0] / len(colours)
    for i, colour in enumerate(colours):
        draw.rectangle([round(i * band), 0, round((i + 1) * band), size[1]], fill=colour)
    return image


# -- the descriptor ------------------------------------------------------------------------


def test_feature_is_a_unit_float32_vector_of_fixed_length() -> None:
    for size in [(200, 150), (17, 300), (1, 1), (640, 480)]:
        feature = image_feature(_tricolour([(0, 0, 200), (255, 255, 255), (220, 0, 0)], size))
        assert feature.dtype == np.float32
        assert feature.shape == (FEATURE_DIM,)
        assert abs(float(np.linalg.norm(feature)) - 1.0) < 1e-5


def test_uniform_image_gets_a_finite_vector() -> None:
    feature = image_feature(Image.new("RGB", (50, 40), (90, 90, 90)))
    assert np.all(np.isfinite(feature))


def test_empty_image_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        image_feature(Image.new("RGB", (0, 10)))


def test_transparent_pixels_count_as_white() -> None:
    flag = _tricolour([(0, 150, 0), (255, 255, 255), (200, 0, 0)], (120, 80))
    rgba = Image.new("RGBA", (160, 120), (0, 0, 0, 0))
    rgba.paste(flag, (20, 20))
    on_white = Image.new("RGB", (160, 120), (255, 255, 255))
    on_white.paste(flag, (20, 20))
    assert np.array_equal(image_feature(rgba), image_feature(on_white))


def test_modes_are_converted() -> None:
    grey = Image.new("L", (64, 48), 128)
    ImageDraw.Draw(grey).rectangle([10, 10, 30, 30], fill=250)
    assert np.array_equal(image_feature(grey), image_feature(grey.convert("RGB")))


def test_feature_is_identical_in_a_fresh_process() -> None:
    image = _tricolour([(0, 85, 164), (255, 255, 255), (239, 65, 53)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    code = (
        "import io, json, sys; from PIL import Image;"
        "from mmsearch_gym.search.image_features import image_feature;"
        "im = Image.open(io.BytesIO(sys.stdin.buffer.read()));"
        "print(json.dumps(image_feature(im).tobytes().hex()))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=buf.getvalue(), capture_output=True,
                         check=True).stdout
    assert json.loads(out) == image_feature(image).tobytes().hex()


def test_colour_jitter_changes_little_and_a_different_flag_changes_a_lot() -> None:
    france = _tricolour([(0, 85, 164), (255, 255, 255), (239, 65, 53)])
    jittered = ImageEnhance.Color(ImageEnhance.Brightness(france).enhance(1.2)).enhance(0.8)
    italy = _tricolour([(0, 146, 70), (255, 255, 255), (206, 43, 55)])
    reference = image_feature(france)
    assert float(reference @ image_feature(jittered)) > 0.97
    assert float(reference @ image_feature(italy)) < float(reference @ image_feature(jittered)) - 0.05


def test_image_features_stacks_rows() -> None:
    images = [_tricolour([(i * 40, 0, 0), (255, 255, 255)]) for i in range(3)]
    matrix = image_features(images)
    assert matrix.shape == (3, FEATURE_DIM) and matrix.dtype == np.float32
    assert np.array_equal(matrix[1], image_feature(images[1]))
    assert image_features([]).shape == (0, FEATURE_DIM)


# -- the index -----------------------------------------------------------------------------


def test_index_ranks_by_cosine_with_ties_to_the_lower_index() -> None:
    features = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    index = ImageIndex(features)
    result = index.search(np.array([1.0, 0.0]), 4)
    assert [row for row, _ in result] == [1, 2, 3, 0]
    assert result[0][1] == pytest.approx(1.0) and result[2][1] == pytest.approx(0.6)
    assert index.search(np.array([1.0, 0.0]), 0) == []
    assert len(index.search(np.array([1.0, 0.0]), 99)) == 4


def test_index_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ImageIndex(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        ImageIndex(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="length"):
        ImageIndex(np.eye(3)).search(np.ones(4), 1)


def test_empty_index_returns_nothing() -> None:
    assert ImageIndex(np.zeros((0, 4))).search(np.ones(4), 3) == []


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(2, 6), st.integers(0, 2**31 - 1), st.integers(1, 15))
def test_index_search_is_sorted_complete_and_tie_stable(n: int, dim: int, seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    features = rng.integers(-2, 3, size=(n, dim)).astype(np.float64)  # small ints -> many ties
    query = rng.integers(-2, 3, size=dim).astype(np.float64)
    result = ImageIndex(features).search(query, k)
    assert len(result) == min(k, n)
    for (row_a, score_a), (row_b, score_b) in itertools.pairwise(result):
        assert score_a > score_b or (score_a == score_b and row_a < row_b)
    brute = ImageIndex(features).scores(query)
    assert [s for _, s in result] == sorted(brute.tolist(), reverse=True)[: len(result)]


# -- robustness over every reference picture of the world ----------------------------------


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _augment(name: str, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if name == "rescale":
        scale = rng.uniform(0.5, 2.0) * 150 / max(image.size)
        size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BILINEAR)
    if name == "jpeg":
        return _jpeg(image, int(rng.integers(40, 71)))
    if name == "rotate":
        return image.rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    if name == "colour":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
        return ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.2))
    if name == "occlude":
        w, h = image.size
        ow = min(w, round(np.sqrt(0.15 * w * h * rng.uniform(0.5, 2.0))))
        oh = min(h, round(0.15 * w * h / ow))
        x, y = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
        image = image.copy()
        image.paste(tuple(int(v) for v in rng.integers(0, 256, 3)), (x, y, x + ow, y + oh))
        return image
    raise KeyError(name)


@pytest.fixture(scope="module")
def world_index() -> tuple[list[str], list[str], list[Image.Image], ImageIndex]:
    knowledge = load_knowledge()
    ids = list(knowledge.entities)
    images = [knowledge.image(i) for i in ids]
    kinds = [knowledge.entities[i].kind for i in ids]
    return ids, kinds, images, ImageIndex(knowledge.features())


@pytest.mark.parametrize("augmentation", ["rescale", "jpeg", "rotate", "colour", "occlude"])
def test_every_flag_is_found_again_after_augmentation(world_index, augmentation: str) -> None:
    _, kinds, images, index = world_index
    rng = np.random.default_rng(7)
    found = {"country": [], "photo": []}
    for row, image in enumerate(images):
        query = _augment(augmentation, image, rng)
        found[kinds[row]].append(index.search(image_feature(query), 1)[0][0] == row)
    flag_rate = float(np.mean(found["country"]))
    assert len(found["country"]) >= 200
    assert flag_rate >= 0.95, f"{augmentation}: flags found at rank 1 in {flag_rate:.3f}"
    assert np.mean(found["photo"]) >= 0.75, f"{augmentation}: photos {found['photo']}"


def test_stored_features_match_the_stored_pictures(world_index) -> None:
    _, _, images, index = world_index
    for row in range(0, len(images), 23):
        assert index.search(image_feature(images[row]), 1)[0] == (row, pytest.approx(1.0, abs=1e-6))
