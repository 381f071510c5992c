"""EvidenceReader: answers from the evidence a policy gathered, never from gold answers."""

from __future__ import annotations

import pytest

from mmsearch_gym.search.base import Hit, ImageQuery
from mmsearch_gym.tasks import SceneObject
from mmsearch_gym.world.engine import WorldSearchEngine
from mmsearch_gym.world.reader import EvidenceReader, number_words, parse_question
from mmsearch_gym.world.splits import load_tasks

THUMB = b"\x89PNG fake thumbnail"


def image_hit(title: str) -> Hit:
    return Hit(title=title, url=f"https://img.example/{title}", snippet=title, thumbnail=THUMB)


def text_hit(country: str, section: str, text: str) -> Hit:
    return Hit(title=f"{country} - The World Factbook: {section}",
               url=f"https://f.example/{country}#{section}", snippet=text)


FRANCE_GOV = text_hit("France", "Government", "France. Government type: semi-presidential republic. "
                      "Capital: Paris. National symbol: Gallic rooster. National anthem: La Marseillaise. "
                      "National colors: blue, white, red.")
FRANCE_GEO = text_hit("France", "Geography", "France. Map references: Europe. Area: 643,801 sq km. "
                      "Highest point: Mont Blanc. Climate: generally cool.")
US_GOV = text_hit("United States", "Government", "United States. Capital: Washington, DC. Independence: 1776. "
                  "National symbol: bald eagle. National anthem: The Star-Spangled Banner.")
reader = EvidenceReader()


@pytest.mark.parametrize("question,kind,asked,bridge,value", [
    ("Which country's flag is this?", "country", None, None, None),
    ("This flag belongs to which country?", "country", None, None, None),
    ("Name the country whose flag is shown in the image.", "country", None, None, None),
    ("What is the capital of the country whose flag is shown?", "fact", "capital", None, None),
    ("This is the flag of a country. What is its capital city?", "fact", "capital", None, None),
    ("In which region of the world is the country whose flag is shown?", "fact", "region", None, None),
    ("In which year did the country whose flag is shown become independent?", "fact", "independence", None, None),
    ("What type of government does the country whose flag is shown have?", "fact", "government_type", None, None),
    ('What is the capital of the country whose national anthem is "La Marseillaise"?',
     "fact", "capital", "national_anthem", "La Marseillaise"),
    ('What is the national anthem of the country whose capital is "Paris"?',
     "fact", "national_anthem", "capital", "Paris"),
    ('Which country\'s highest point is "Mont Blanc"?', "country", None, "highest_point", "Mont Blanc"),
    ('Which country has "Gallic rooster" as its national symbol?', "country", None, "national_symbol",
     "Gallic rooster"),
    ("How many flags are in this picture?", "scene", None, None, None),
    ("What is the meaning of life?", "unknown", None, None, None),
])
def test_parse_question(question: str, kind: str, asked, bridge, value) -> None:
    parsed = parse_question(question)
    assert (parsed.kind, parsed.asked, parsed.bridge, parsed.bridge_value) == (kind, asked, bridge, value)


def test_identify() -> None:
    assert reader.identify([image_hit("Flag of France"), image_hit("Flag of Italy")]) == "France"
    assert reader.identify([image_hit("Chelsea the cat"), image_hit("Flag of France")]) is None
    assert reader.identify([FRANCE_GOV, image_hit("Flag of The Gambia")]) == "The Gambia"
    assert reader.identify([FRANCE_GOV]) is None
    assert reader.identify([]) is None


def test_build_query() -> None:
    flag = [image_hit("Flag of France")]
    assert reader.build_query("What is the capital of the country whose flag is shown?", flag) == "France Capital"
    assert reader.build_query("In which region of the world is the country whose flag is shown?", flag) \
        == "France Map references"
    assert reader.build_query('What is the capital of the country whose national anthem is "La Marseillaise"?',
                              []) == 'National anthem "La Marseillaise"'
    assert reader.build_query("Which country's flag is this?", flag) == "France"
    assert reader.build_query("  What is this?  ", []) == "What is this?"


def test_answers_from_evidence() -> None:
    flag = image_hit("Flag of France")
    q_capital = "What is the capital of the country whose flag is shown?"
    assert reader.answer(q_capital, [flag, US_GOV, FRANCE_GOV]) == "Paris"
    # The fact must belong to the identified country; another country's page is no answer.
    assert reader.answer(q_capital, [flag, US_GOV]) is None
    # Without an identified country, the best text hit stating the fact.
    assert reader.answer(q_capital, [US_GOV, FRANCE_GOV]) == "Washington, DC"
    assert reader.answer("What is the highest point of the country whose flag is shown?",
                         [flag, FRANCE_GOV, FRANCE_GEO]) == "Mont Blanc"
    assert reader.answer("Which country's flag is this?", [flag]) == "France"
    assert reader.answer("Which country's flag is this?", [image_hit("Brick wall")]) is None
    # Text-only: the bridge picks the passage, however it ranked.
    q = 'What is the capital of the country whose national anthem is "La Marseillaise"?'
    assert reader.answer(q, [US_GOV, FRANCE_GOV]) == "Paris"
    assert reader.answer(q, [US_GOV]) is None
    assert reader.answer('Which country\'s national symbol is "bald eagle"?', [FRANCE_GOV, US_GOV]) == "United States"
    assert reader.answer('What is the national anthem of the country whose capital is "Paris"?',
                         [FRANCE_GOV]) == "La Marseillaise"


def test_no_evidence_no_answer() -> None:
    for question in ["Which country's flag is this?", "What is the capital of the country whose flag is shown?",
                     'Which country\'s highest point is "Mont Blanc"?', "How many flags are in this picture?"]:
        assert reader.answer(question, []) is None


def test_answer_from_scene() -> None:
    objects = [SceneObject("flag", (10, 10, 90, 60), attributes={"position": "top left"}),
               SceneObject("flag", (500, 10, 600, 80), attributes={"position": "top right"}),
               SceneObject("flag", (250, 380, 350, 440), attributes={"position": "bottom"})]
    assert reader.answer_from_scene("How many flags are in this picture?", objects) == "3"
    assert reader.answer_from_scene("Is there a flag in the top left corner of the picture?", objects) == "yes"
    assert reader.answer_from_scene("Is there a flag in the bottom right corner of the picture?", objects) == "no"
    assert reader.answer_from_scene("How many flags are in the top row of the picture?", objects) == "2"
    assert reader.answer_from_scene("How many flags are in the middle row of the picture?", objects) == "0"
    assert reader.answer_from_scene("Which country's flag is this?", objects) is None
    # Without position attributes the layout comes from the boxes and the image size.
    bare = [SceneObject("flag", o.box) for o in objects]
    assert reader.answer_from_scene("How many flags are in the bottom row of the picture?", bare, (640, 480)) == "1"
    assert reader.answer_from_scene("How many flags are in the bottom row of the picture?", bare) is None
    assert number_words(0) == ("0", "zero", "none") and number_words(3) == ("3", "three")


@pytest.fixture(scope="module")
def engine() -> WorldSearchEngine:
    return WorldSearchEngine.load()


def test_reader_on_real_searches(engine: WorldSearchEngine) -> None:
    """Following the oracle plan, the reader answers shipped tasks of every search category."""
    tasks = [t for t in load_tasks("test", n=60) if t.search_required]
    correct = 0
    for task in tasks:
        hits: list[Hit] = []
        for step in task.meta["oracle_plan"]:
            if step["tool"] == "image_search":
                box = None if step["box"] is None else tuple(step["box"])
                hits += engine.image_search(ImageQuery(task.load_image(), box), 5)
            elif step["tool"] == "text_search":
                hits += engine.text_search(step["query"], 5)
        answer = reader.answer(task.question, hits)
        correct += answer is not None and answer.casefold() in {a.casefold() for a in task.answers}
        # Without evidence there is nothing to read.
        assert reader.answer(task.question, []) is None
    assert correct >= 0.9 * len(tasks)


def test_rag_query_finds_the_fact(engine: WorldSearchEngine) -> None:
    task = next(t for t in load_tasks("test") if t.meta["template"] == "image_then_text/capital")
    hits = engine.image_search(ImageQuery(task.load_image()), 5)
    query = reader.build_query(task.question, hits)
    assert query == task.meta["oracle_plan"][1]["query"]
    assert reader.answer(task.question, hits + engine.text_search(query, 5)) in task.answers
