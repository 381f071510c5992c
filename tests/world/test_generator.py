"""The world's task generator: deterministic recipes and pixels, disjoint splits, sound tasks."""

from __future__ import annotations

import json
import re
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.grounding import AnnotationGrounder, position_name
from mmsearch_gym.tasks import SEARCH_FREE, TaskSet
from mmsearch_gym.world import generator as gen
from mmsearch_gym.world.generator import (
    CATEGORIES,
    CORE_CATEGORIES,
    MULTI_HOP,
    TaskGenerator,
    entity_split,
    render_scene,
    task_from_recipe,
)
from mmsearch_gym.world.knowledge import FACT_LABELS, load_knowledge, read_fact
from mmsearch_gym.world.splits import TEST_SPLIT_PATH, TEST_SPLIT_SEED, load_tasks, read_recipes


@pytest.fixture(scope="module")
def generator() -> TaskGenerator:
    return TaskGenerator()


@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    return read_recipes(TEST_SPLIT_PATH)


@pytest.fixture(scope="module")
def train_recipes(generator: TaskGenerator) -> list[dict]:
    return generator.recipes("train", 400, seed=3)


def _fold(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(re.findall(r"[a-z0-9]+", plain.lower()))


def _entities(recipe: dict) -> set[str]:
    ids = {o["entity"] for o in recipe["objects"] if o.get("entity")}
    ids |= {f["entity"] for f in recipe["scene"].get("flags", [])}
    if "target" in recipe:
        ids.add(recipe["target"]["entity"])
    return ids


# --- the shipped test split -----------------------------------------------------------------

def test_shipped_split_is_balanced_and_loads(shipped: list[dict]) -> None:
    tasks = load_tasks("test")
    assert isinstance(tasks, TaskSet) and len(tasks) == len(shipped) == 1200
    counts = {c: sum(1 for t in tasks if t.category == c) for c in CATEGORIES}
    assert counts == {c: 200 for c in CATEGORIES}
    assert [t.id for t in tasks[:3]] == ["test-000000", "test-000001", "test-000002"]
    assert all(t.split == "test" for t in tasks)
    assert len(load_tasks("test", n=25)) == 25


def test_load_tasks_by_category() -> None:
    """``categories`` keeps those categories; ``n`` then counts them, and the tasks (ids and
    recipes) are exactly those of the unfiltered set."""
    two = ["image_search", "crop"]
    test = load_tasks("test", n=7, categories=two)
    assert len(test) == 7 and {t.category for t in test} == set(two) and test.name == "world-test[image_search,crop]"
    assert [t.id for t in test] == [t.id for t in load_tasks("test") if t.category in two][:7]
    train = load_tasks("train", n=6, seed=3, categories=["search_free"])
    assert [t.id for t in train] == [t.id for t in load_tasks("train", n=30, seed=3) if t.category == "search_free"]
    for bad in (["monuments"], []):
        with pytest.raises(ConfigError, match="categories"):
            load_tasks("test", categories=bad)


def test_shipped_split_matches_the_generator(generator: TaskGenerator, shipped: list[dict]) -> None:
    """The shipped file is what the generator makes from the current world (else regenerate
    it with `python -m mmsearch_gym.world.splits --write-test-split`)."""
    for index in list(range(0, 1000, 37)) + [999]:
        assert generator.recipe("test", TEST_SPLIT_SEED, index) == shipped[index], (
            "splits/test.jsonl is stale: run `python -m mmsearch_gym.world.splits --write-test-split`")
    for index in (0, 57, 199):
        assert generator.recipe("test", TEST_SPLIT_SEED, index, MULTI_HOP) == shipped[1000 + index]


def test_core_tasks_unchanged_by_multi_hop(shipped: list[dict]) -> None:
    """Adding multi_hop shifted no core task: the first 1,000 lines are the five core
    categories cycling as before, and multi_hop tasks have their own ids after them."""
    assert [r["category"] for r in shipped[:10]] == list(CORE_CATEGORIES) * 2
    assert all(r["id"] == f"test-{i:06d}" for i, r in enumerate(shipped[:1000]))
    assert all(r["category"] == MULTI_HOP and r["id"] == f"test-mh-{i:06d}" for i, r in enumerate(shipped[1000:]))
    assert [t.id for t in load_tasks("train", n=10, seed=1)] == [
        t.id for t in load_tasks("train", n=10, seed=1, categories=CORE_CATEGORIES)]
    train = load_tasks("train", n=12, seed=1, categories=CATEGORIES)
    assert [t.category for t in train] == list(CATEGORIES) * 2
    assert [t.id for t in train if t.category != MULTI_HOP] == [t.id for t in load_tasks("train", n=10, seed=1)]


def test_multi_hop_needs_a_refined_second_query(generator: TaskGenerator) -> None:
    """The bridge query's passage names the country but lacks the asked fact; the reader's
    second query is written from that passage, and two searches answer the question."""
    from mmsearch_gym.world.engine import WorldSearchEngine
    from mmsearch_gym.world.reader import EvidenceReader

    engine, reader = WorldSearchEngine.load(), EvidenceReader()
    for index in range(12):
        task = task_from_recipe(generator.recipe("train", 4, index, MULTI_HOP))
        first_query = reader.build_query(task.question, [])
        assert first_query == task.meta["oracle_plan"][0]["query"]
        first = engine.text_search(first_query, 5)
        assert reader.answer(task.question, first) is None
        second_query = reader.build_query(task.question, first)
        assert second_query == task.meta["oracle_plan"][1]["query"] != first_query
        answer = reader.answer(task.question, first + engine.text_search(second_query, 5))
        assert answer is not None and answer.casefold() in {a.casefold() for a in task.answers}


def test_loading_does_not_render(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("rendered while loading")
    monkeypatch.setattr(gen, "render_scene", boom)
    tasks = load_tasks("test", n=50)
    with pytest.raises(AssertionError, match="rendered while loading"):
        tasks[7].load_image()


def test_task_meta_serialises(shipped: list[dict]) -> None:
    task = load_tasks("test", n=5)[3]
    meta = json.loads(json.dumps(task.meta))
    assert meta["recipe"] == shipped[3]
    assert meta["template"] == shipped[3]["template"]
    assert meta["oracle_plan"] == shipped[3]["oracle_plan"]
    assert task_from_recipe(meta["recipe"]).question == task.question


# --- determinism -------------------------------------------------------------------------------

def test_same_seed_same_tasks_and_pixels() -> None:
    a = TaskGenerator().recipes("train", 10, seed=11)
    b = TaskGenerator().recipes("train", 10, seed=11)
    assert a == b
    for ra, rb in zip(a[:5], b[:5], strict=False):
        ia, ib = render_scene(ra["scene"]), render_scene(rb["scene"])
        assert ia.size == ib.size and ia.tobytes() == ib.tobytes()
    assert TaskGenerator().recipes("train", 10, seed=12) != a


def test_prefix_stable_and_ids(generator: TaskGenerator) -> None:
    short, long = generator.recipes("train", 7, seed=5), generator.recipes("train", 15, seed=5)
    assert long[:7] == short
    assert [r["id"] for r in short[:2]] == ["train-s5-000000", "train-s5-000001"]


def test_load_image_is_cached_copy() -> None:
    task = load_tasks("test", n=4)[3]
    first, second = task.load_image(), task.load_image()
    assert first is not second and first.tobytes() == second.tobytes()
    first.paste((0, 0, 0), (0, 0, 50, 50))
    assert task.load_image().tobytes() == second.tobytes()


def test_train_split_generates_any_n() -> None:
    tasks = load_tasks("train", n=12, seed=1)
    assert len(tasks) == 12 and tasks[0].id == "train-s1-000000"
    assert {t.category for t in tasks} == set(CORE_CATEGORIES)  # multi_hop is opt-in for generated splits
    with pytest.raises(ConfigError, match="unknown split"):
        load_tasks("dev")
    with pytest.raises(ConfigError, match="positive int"):
        load_tasks("train", n=0)


# --- soundness -----------------------------------------------------------------------------------

def test_splits_are_entity_disjoint(shipped: list[dict], train_recipes: list[dict]) -> None:
    test_entities = set().union(*(_entities(r) for r in shipped))
    train_entities = set().union(*(_entities(r) for r in train_recipes))
    knowledge = load_knowledge()
    countries = {c.id for c in knowledge.countries()}
    assert test_entities and train_entities and not (test_entities & train_entities)
    assert all(entity_split(e) == "test" for e in test_entities & countries)
    assert all(entity_split(e) == "train" for e in train_entities & countries)
    share = sum(entity_split(c) == "train" for c in countries) / len(countries)
    assert 0.5 < share < 0.7


def _check_recipe(recipe: dict, grounder: AnnotationGrounder) -> None:
    knowledge = load_knowledge()
    question, answers = recipe["question"], recipe["answers"]
    assert answers and all(isinstance(a, str) and a for a in answers)
    folded_q = f" {_fold(question)} "
    for answer in answers:  # no question contains its answer
        assert f" {_fold(answer)} " not in folded_q, (question, answer)
    width, height = recipe["scene"]["size"]
    for obj in recipe["objects"]:  # boxes inside images, positions consistent
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert obj["attributes"]["position"] == position_name(tuple(obj["box"]), (width, height))
    plan = recipe["oracle_plan"]
    assert plan[-1] == {"tool": "answer"} and 1 <= len(plan) <= 3
    category = recipe["category"]
    tools = [step["tool"] for step in plan]
    assert tools == {SEARCH_FREE: ["answer"], "image_search": ["image_search", "answer"],
                     "image_then_text": ["image_search", "text_search", "answer"],
                     "crop": ["image_search", "answer"], "text_only": ["text_search", "answer"],
                     MULTI_HOP: ["text_search", "text_search", "answer"]}[category]
    if category == "crop":
        task = task_from_recipe(recipe)
        box = grounder.ground(recipe["target"]["expression"], task)
        assert box is not None and list(box) == plan[0]["box"]
        target = [o for o in recipe["objects"] if o["entity"] == recipe["target"]["entity"]]
        assert target and target[0]["box"] == plan[0]["box"]
        assert answers == list(knowledge.get(recipe["target"]["entity"]).answers)
    if category in ("image_search", "image_then_text"):
        assert len(recipe["objects"]) == 1 and plan[0]["box"] is None
    if category == "image_then_text":
        entity = knowledge.get(recipe["target"]["entity"])
        assert answers[0] == entity.facts[recipe["target"]["fact"]]
        assert plan[1]["query"] == f"{entity.name} {FACT_LABELS[recipe['target']['fact']]}"
    if category == "text_only":
        assert recipe["objects"] == [] and not recipe["scene"]["flags"]
        bridge = recipe["target"]["bridge"]
        value = re.search(r'"([^"]+)"', question).group(1)
        owners = [c.id for c in knowledge.countries() if _fold(c.facts.get(bridge, "")) == _fold(value)]
        assert owners == [recipe["target"]["entity"]], "the bridge fact must name exactly one country"
        passage = knowledge.get(owners[0]).fact_passage(bridge)
        asked = recipe["target"]["fact"]
        if asked is not None:  # the answer is in the same passage as the bridge
            assert read_fact(passage.text, FACT_LABELS[asked]) == answers[0]
    if category == MULTI_HOP:  # one country owns the bridge; its passage lacks the asked fact
        assert recipe["objects"] == [] and not recipe["scene"]["flags"]
        bridge, asked = recipe["target"]["bridge"], recipe["target"]["fact"]
        value = re.search(r'"([^"]+)"', question).group(1)
        owners = [c.id for c in knowledge.countries() if _fold(c.facts.get(bridge, "")) == _fold(value)]
        assert owners == [recipe["target"]["entity"]]
        entity = knowledge.get(owners[0])
        assert read_fact(entity.fact_passage(bridge).text, FACT_LABELS[asked]) is None
        assert read_fact(entity.fact_passage(asked).text, FACT_LABELS[asked]) == answers[0]
    if category == SEARCH_FREE:
        count = len(recipe["objects"])
        assert 1 <= count <= 4


def test_every_shipped_recipe_is_sound(shipped: list[dict]) -> None:
    grounder = AnnotationGrounder()
    for recipe in shipped:
        _check_recipe(recipe, grounder)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), index=st.integers(0, 10**6))
def test_generated_recipes_are_sound(generator: TaskGenerator, seed: int, index: int) -> None:
    recipe = generator.recipe("train", seed, index)
    assert recipe["category"] == CATEGORIES[index % 5]
    _check_recipe(recipe, AnnotationGrounder())
    assert all(entity_split(e) == "train" for e in _entities(recipe)
               if e in {c.id for c in generator.knowledge.countries()})


def test_identified_flags_are_never_confusable(generator: TaskGenerator, shipped: list[dict]) -> None:
    assert {"mc", "id"} <= generator.confusable  # Monaco and Indonesia share a flag design
    for recipe in shipped:
        if recipe["category"] in ("image_search", "image_then_text", "crop"):
            assert recipe["target"]["entity"] not in generator.confusable


def test_rendered_images_match_annotations() -> None:
    tasks = load_tasks("test", n=20)
    for task in tasks:
        image = task.load_image()
        assert list(image.size) == task.meta["image_size"] and image.mode == "RGB"
    for task in [t for t in tasks if t.objects][:8]:
        # Without the JPEG round trip, flags change pixels only inside their annotated boxes.
        scene = dict(task.meta["recipe"]["scene"], jpeg_quality=None)
        with_flags = np.asarray(render_scene(scene), dtype=np.int16)
        without = np.asarray(render_scene(dict(scene, flags=[])), dtype=np.int16)
        changed = np.abs(with_flags - without).sum(axis=2) > 0
        inside = np.zeros_like(changed)
        for obj in task.objects:
            x1, y1, x2, y2 = obj.box
            inside[max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1] = True
            assert changed[y1:y2, x1:x2].mean() > 0.5
        assert not (changed & ~inside).any()


def test_categories_cover_templates(shipped: list[dict]) -> None:
    templates = {r["template"] for r in shipped}
    assert {"search_free/count", "search_free/corner", "search_free/row_count"} <= templates
    assert {"crop/position", "crop/largest", "crop/smallest", "crop/extreme", "crop/ordinal"} <= templates
    assert "image_then_text/capital" in templates and "text_only/capital_by_national_anthem" in templates
    count_answers = [r["answers"] for r in shipped if r["template"] == "search_free/count"]
    assert all(a[0].isdigit() and len(a) >= 2 for a in count_answers)  # digits and words
