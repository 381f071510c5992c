"""AnnotationGrounder: referring expressions resolve to the annotated box, deterministically."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmsearch_gym.grounding import AnnotationGrounder, Grounder, position_name
from mmsearch_gym.tasks import SceneObject, Task

W, H = 600, 450


def _png(width: int = W, height: int = H) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 60)).save(buf, format="PNG")
    return buf.getvalue()


def _task(boxes: dict[str, tuple[int, int, int, int]], *, with_size: bool = True,
          with_position: bool = True, label: str = "flag") -> Task:
    objects = []
    for name, box in boxes.items():
        attrs = {"position": position_name(box, (W, H))} if with_position else {}
        objects.append(SceneObject(label=label, box=box, entity=name, attributes=attrs))
    meta = {"image_size": [W, H]} if with_size else {}
    return Task(id="t", question="q", answers=("a",), objects=tuple(objects),
                image_bytes=_png(), meta=meta)


# Four corners plus a big centre flag and a small one at the middle right.
SCENE = {
    "TL": (20, 20, 110, 80),
    "TR": (480, 30, 580, 100),
    "BL": (30, 355, 120, 415),
    "BR": (470, 350, 590, 430),
    "C": (230, 170, 380, 280),
    "R": (520, 200, 570, 240),
}


@pytest.fixture(scope="module")
def grounder() -> AnnotationGrounder:
    return AnnotationGrounder()


def test_protocol() -> None:
    assert isinstance(AnnotationGrounder(), Grounder)


@pytest.mark.parametrize("with_position", [True, False])
@pytest.mark.parametrize("with_size", [True, False])
@pytest.mark.parametrize("expression,target", [
    ("the flag at the top right", "TR"),
    ("top-right flag", "TR"),
    ("the flag in the top right corner", "TR"),
    ("upper right corner", "TR"),
    ("Top Right", "TR"),
    ("topright", "TR"),
    ("the flag in the upper-left corner", "TL"),
    ("top left flag", "TL"),
    ("the flag at the bottom left", "BL"),
    ("lower left", "BL"),
    ("the bottom-right flag", "BR"),
    ("the flag in the lower right corner of the image", "BR"),
    ("the flag in the center", "C"),
    ("the centre flag", "C"),
    ("the flag in the middle of the picture", "C"),
    ("the flag on the middle right", "R"),
    ("the largest flag", "C"),
    ("the biggest one", "C"),
    ("the smallest flag", "R"),
    ("the tiniest one", "R"),
    ("the second largest flag", "BR"),
    ("second-smallest flag", "TL"),
    ("the leftmost flag", "TL"),
    ("the left-most flag", "TL"),
    ("the rightmost flag", "R"),
    ("the topmost flag", "TL"),
    ("the lowest flag", "BR"),
    ("the second flag from the left", "BL"),
    ("the third flag from the left", "C"),
    ("second from the right", "TR"),
    ("the first flag from the top", "TL"),
    ("the second flag from the bottom", "BL"),
    ("the last flag", "R"),
    ("crop the top right flag", "TR"),
])
def test_phrasings(grounder: AnnotationGrounder, expression: str, target: str,
                   with_size: bool, with_position: bool) -> None:
    task = _task(SCENE, with_size=with_size, with_position=with_position)
    assert grounder.ground(expression, task) == SCENE[target]


@pytest.mark.parametrize("expression", [
    "", "   ", "banana", "the flag", "the car", "!!!", "flags please",
])
def test_unresolvable_returns_none(grounder: AnnotationGrounder, expression: str) -> None:
    assert grounder.ground(expression, _task(SCENE)) is None


def test_unknown_label_word_with_position_still_grounds(grounder: AnnotationGrounder) -> None:
    # A word nobody annotated is tolerated when the position resolves (as a detector would).
    assert grounder.ground("the red flag in the top left", _task(SCENE)) == SCENE["TL"]
    assert grounder.ground("the banner on the bottom right", _task(SCENE)) == SCENE["BR"]


def test_single_object_by_label(grounder: AnnotationGrounder) -> None:
    task = _task({"X": (100, 100, 200, 180)})
    assert grounder.ground("the flag", task) == (100, 100, 200, 180)
    assert grounder.ground("flags", task) == (100, 100, 200, 180)
    assert grounder.ground("the boat", task) is None


def test_label_words_filter() -> None:
    objects = (
        SceneObject("flag", (20, 20, 110, 80), attributes={"position": "top left"}),
        SceneObject("dog", (300, 20, 400, 90), attributes={"position": "top"}),
    )
    task = Task(id="t", question="q", answers=("a",), objects=objects, image_bytes=_png(),
                meta={"image_size": [W, H]})
    g = AnnotationGrounder()
    assert g.ground("the dog", task) == (300, 20, 400, 90)
    assert g.ground("the flag", task) == (20, 20, 110, 80)
    assert g.ground("the leftmost dog", task) == (300, 20, 400, 90)
    assert g.ground("the rightmost flag", task) == (20, 20, 110, 80)


def test_no_object_in_named_cell(grounder: AnnotationGrounder) -> None:
    # Nothing at the bottom right, and no object is both lowest and rightmost.
    scene = {"A": (20, 20, 100, 80), "B": (480, 30, 580, 90), "C": (40, 350, 120, 420)}
    task = _task(scene)
    assert grounder.ground("the flag at the bottom right", task) is None
    # "top" alone: the topmost of the top row.
    assert grounder.ground("the flag at the top", task) == scene["A"]
    # No flag in the centre.
    assert grounder.ground("the flag in the center", task) is None


def test_ordinal_out_of_range(grounder: AnnotationGrounder) -> None:
    assert grounder.ground("the fifth flag from the left", _task({"A": (10, 10, 50, 50)})) is None


def test_no_objects(grounder: AnnotationGrounder) -> None:
    task = Task(id="t", question="q", answers=("a",), image_bytes=_png())
    assert grounder.ground("the top left flag", task) is None


def test_image_size_read_from_image_when_not_in_meta(grounder: AnnotationGrounder) -> None:
    task = _task(SCENE, with_size=False, with_position=False)
    assert grounder.ground("the bottom left flag", task) == SCENE["BL"]


def test_position_name_grid() -> None:
    assert position_name((0, 0, 10, 10), (300, 300)) == "top left"
    assert position_name((140, 0, 160, 10), (300, 300)) == "top"
    assert position_name((140, 140, 160, 160), (300, 300)) == "center"
    assert position_name((290, 140, 300, 160), (300, 300)) == "right"
    assert position_name((290, 290, 300, 300), (300, 300)) == "bottom right"


_CORNERS = {"top left": (0, 0), "top right": (2, 0), "bottom left": (0, 2), "bottom right": (2, 2),
            "center": (1, 1), "top": (1, 0), "left": (0, 1), "right": (2, 1), "bottom": (1, 2)}


@settings(max_examples=40, deadline=None)
@given(cells=st.lists(st.sampled_from(sorted(_CORNERS)), min_size=1, max_size=5, unique=True),
       jitter=st.integers(0, 30), data=st.data())
def test_every_named_cell_grounds_to_its_object(cells: list[str], jitter: int, data) -> None:
    """Objects in distinct grid cells: naming a cell always returns that cell's object."""
    cell_w, cell_h = W // 3, H // 3
    boxes = {}
    for name in cells:
        col, row = _CORNERS[name]
        x1 = col * cell_w + 20 + jitter
        y1 = row * cell_h + 15 + jitter // 2
        boxes[name] = (x1, y1, x1 + 90, y1 + 70)
    task = _task(boxes)
    target = data.draw(st.sampled_from(cells))
    phrase = target if target != "center" else "the middle"
    g = AnnotationGrounder()
    assert g.ground(f"the flag at the {phrase}", task) == boxes[target]
    assert g.ground(f"the flag at the {phrase}", task) == g.ground(f"the flag at the {phrase}", task)
