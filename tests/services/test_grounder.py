"""VLMGrounder: boxes parsed in any common form, mapped back to original pixels, clamped, recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from search.webfake import FakeWebServer, Reply

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.services.grounder import VLMGrounder, parse_box, to_original_box
from mmsearch_gym.tasks import Task

from .fakes import completion, png


@pytest.mark.parametrize("reply, box", [
    ("[10, 20, 30, 40]", (10, 20, 30, 40)), ('{"bbox_2d": [1.5, 2, 3, 4]}', (1.5, 2, 3, 4)),
    ("The box is (5,6),(7,8).", (5, 6, 7, 8)), ("none", None), ("[1, 2, 3]", None)])
def test_parse_box(reply: str, box: tuple | None) -> None:
    assert parse_box(reply) == box


def test_to_original_box_scales_orders_and_clamps() -> None:
    assert to_original_box((10, 10, 20, 20), "pixels", (50, 50), (100, 200)) == (20, 40, 40, 80)
    assert to_original_box((500, 0, 1000, 500), "norm1000", (1, 1), (200, 100)) == (100, 0, 200, 50)
    assert to_original_box((0.5, 0.5, 0.25, 0.25), "norm1", (1, 1), (100, 100)) == (25, 25, 50, 50)
    assert to_original_box((-50, -50, 500, 500), "pixels", (100, 100), (100, 100)) == (0, 0, 100, 100)
    assert to_original_box((150, 150, 200, 200), "pixels", (100, 100), (100, 100)) is None


@given(st.tuples(*[st.floats(-1e4, 1e4)] * 4), st.integers(1, 2000), st.integers(1, 2000))
def test_a_returned_box_always_lies_inside_the_original_image(box, width, height) -> None:
    out = to_original_box(box, "pixels", (width, height), (width, height))
    if out is not None:
        left, top, right, bottom = out
        assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_grounds_in_original_pixels_and_replays_offline(tmp_path: Path) -> None:
    task = Task("t", "what food?", ("rice",), image_bytes=png((10, 200, 10)))  # 64x48
    with FakeWebServer([Reply(200, completion("[0, 0, 500, 500]"))]) as server:
        grounder = VLMGrounder({"url": server.url + "/v1#vlm", "coords": "norm1000", "trust_env": False},
                               cache_dir=tmp_path)
        assert grounder.ground("the food on the plate", task) == (0, 0, 32, 24)
        body = server.requests[0].json()
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "the food on the plate" in parts[1]["text"]
    offline = VLMGrounder({"url": "http://127.0.0.1:9/v1#vlm", "coords": "norm1000"}, cache_dir=tmp_path,
                          cache_mode="replay")
    assert offline.ground("the  food on the plate", task) == (0, 0, 32, 24)  # whitespace folded


def test_nothing_found_is_none_and_bad_coords_are_a_config_error(tmp_path: Path) -> None:
    task = Task("t", "q", ("a",), image_bytes=png((1, 2, 3)))
    with FakeWebServer([Reply(200, completion("none"))]) as server:
        grounder = VLMGrounder({"url": server.url + "/v1#vlm", "trust_env": False}, cache_dir=tmp_path)
        assert grounder.ground("a unicorn", task) is None
    with pytest.raises(ConfigError, match="coords"):
        VLMGrounder({"url": "http://h/v1#vlm", "coords": "inches"})
