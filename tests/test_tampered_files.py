"""The tampered-file matrix: every damaged trajectory or cassette line is a one-line error.

Each case edits one field of a good file (huge integers, deep nesting, non-finite numbers, a
string or null where a number belongs, bad base64, negative sizes, lone surrogates, ...) and
reads it through every CLI command that reads that kind of file and through the Python API.
Each must give ``FILE line N: ...`` and exit code != 0, never a traceback.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from fixture_world import CapitalReader, france_backend, planned, scene_png
from PIL import Image

from mmsearch_gym.cli import main
from mmsearch_gym.errors import DataError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.policies import make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend
from mmsearch_gym.search.cache import SearchCache
from mmsearch_gym.search.cassette import import_cassette, verify_cassette
from mmsearch_gym.tasks import SceneObject, Task, TaskSet
from mmsearch_gym.trajectories import Trajectory, read_trajectories


class Raw:
    """A JSON text put verbatim in place of a value (for what json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


DEEP = Raw("[" * 100_000 + "]" * 100_000)


def _tampered(row: Any, path: list[Any], value: Any) -> str:
    """``row`` as a JSON line with the field at ``path`` replaced by ``value`` (Raw allowed)."""
    raws: list[str] = []

    def encode(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(v, list):
            return [encode(x) for x in v]
        return v

    copy = json.loads(json.dumps(row))
    if not path:
        copy = encode(value)
    else:
        node = copy
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = encode(value)
    line = json.dumps(copy, sort_keys=True, separators=(",", ":"))
    for i, text in enumerate(raws):
        line = line.replace(f'"@@RAW{i}@@"', text)
    return line


def _assert_one_line_error(code: int, err: str, expected_code: int, lineno: int) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err and f"line {lineno}:" in err, err
    assert err.strip().count("\n") == 0, err  # one line


# -- trajectories ------------------------------------------------------------------------------

HIT = ["turns", 0, "hits", 0]
TRAJECTORY_CASES: list[tuple[str, list[Any], Any]] = [
    ("5000-digit episode", ["episode"], Raw("9" * 5000)),
    ("5000-digit count", ["turns", 0, "counts", "image_searches"], Raw("1" * 5000)),
    ("5000-digit score", HIT + ["score"], Raw("7" * 5000)),
    ("25-digit seed", ["seed"], Raw("1" * 25)),
    ("100000-deep nesting", ["question"], DEEP),
    ("100000-deep nesting in env", ["env", "kwargs", "tasks"], DEEP),
    ("70-deep kwargs", ["env", "kwargs", "tasks"], Raw("[" * 70 + "]" * 70)),
    ("1e999 episode", ["episode"], Raw("1e999")),
    ("1e999 image width", ["image", "width"], Raw("1e999")),
    ("1e999 count", ["reward", "searches"], Raw("1e999")),
    ("1e999 turn reward", ["turns", 0, "reward"], Raw("1e999")),
    ("-1e999 breakdown", ["reward", "reward"], Raw("-1e999")),
    ("NaN reward", ["turns", 0, "reward"], Raw("NaN")),
    ("Infinity score", ["reward", "score"], Raw("Infinity")),
    ("string turn reward", ["turns", 0, "reward"], "abc"),
    ("null turn reward", ["turns", 0, "reward"], None),
    ("string breakdown count", ["reward", "searches"], "2"),
    ("null breakdown number", ["reward", "raw_score"], None),
    ("null image height", ["image", "height"], None),
    ("string episode", ["episode"], "0"),
    ("float episode", ["episode"], 1.5),
    ("boolean episode", ["episode"], True),
    ("string top_k", ["env", "limits", "top_k"], "abc"),
    ("array kwargs", ["env", "kwargs"], []),
    ("string tasks block", ["env", "tasks"], "world:test"),
    ("string format weight", ["env", "reward", "format_weight"], "x"),
    ("string cache block", ["env", "cache"], "/tmp/x"),
    ("string terminated", ["terminated"], "yes"),
    ("bad base64 task thumbnail", ["image", "thumbnail", "data"], "!!not base64!!"),
    ("bad base64 hit thumbnail", HIT + ["thumbnail", "data"], "%%%"),
    ("number as base64", ["image", "thumbnail", "data"], 12),
    ("short image digest", ["image", "digest"], "abc"),
    ("upper-case hit digest", HIT + ["thumbnail", "digest"], "F" * 64),
    ("null hit score", HIT + ["score"], None),
    ("string hit score", HIT + ["score"], "high"),
    ("negative image width", ["image", "width"], -5),
    ("negative thumbnail width", ["image", "thumbnail", "width"], -1),
    ("negative count", ["turns", 0, "counts", "text_searches"], -3),
    ("negative timing", ["turns", 0, "timing", "env_s"], -1.0),
    ("negative task-set size", ["env", "tasks", "size"], -1),
    ("empty task set", ["env", "tasks", "size"], 0),
    ("negative box", ["turns", 0, "box"], [-1, 0, 10, 10]),
    ("box of strings", ["turns", 0, "box"], ["a", "b", "c", "d"]),
    ("1e999 in a box", ["turns", 0, "box"], [Raw("1e999"), 0, 10, 10]),
    ("turns object", ["turns"], {}),
    ("no turns", ["turns"], []),
    ("numeric answers", ["answers"], [1]),
    ("no answers", ["answers"], []),
    ("lone surrogate", ["question"], Raw('"\\ud800"')),
    ("lone surrogate key", ["env", "kwargs"], Raw('{"\\udc00":1}')),
    ("action is a string", ["turns", 0, "action"], "answer"),
    ("action region junk", ["turns", 0, "action"], {"kind": "image_search", "region": {"kind": "crop", "box": "x"}}),
    ("line is an array", [], [1, 2]),
    ("line is a number", [], Raw("1e999")),
]


@pytest.fixture(scope="module")
def trajectory_row(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One recorded line (with an embedded task thumbnail, a hit thumbnail and a box)."""
    objects = (SceneObject("flag", (200, 20, 300, 90), entity="fr",
                           attributes={"position": "top right", "size_rank": "largest"}),)
    tasks = planned(TaskSet([Task("t0", "Which country's flag is shown at the top right?", ("France",),
                                  category="crop", image_bytes=scene_png((10, 120, 30)), objects=objects)],
                            name="tiny"))
    tmp = tmp_path_factory.mktemp("traj")
    make = functools.partial(make_env, tasks=tasks, backend=france_backend(),
                             cache={"mode": "readthrough", "dir": str(tmp / "cache")})
    evaluate(make, make_policy("oracle", tasks=tasks, reader=CapitalReader()), trajectories=tmp / "run.jsonl",
             progress=False, embed_images=True)
    row = json.loads((tmp / "run.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["turns"][0]["hits"][0]["thumbnail"]["data"] and row["turns"][0]["box"] is not None
    assert row["image"]["thumbnail"] is not None
    return row


def test_the_good_line_reads(trajectory_row: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text(_tampered(trajectory_row, ["episode"], 0) + "\n", encoding="utf-8")
    assert len(read_trajectories(path)) == 1
    assert main(["rescore", str(path), "--reward", "deepmmsearch-r1"]) == 0


@pytest.mark.parametrize(("name", "path", "value"), TRAJECTORY_CASES, ids=[c[0] for c in TRAJECTORY_CASES])
def test_tampered_trajectory(trajectory_row: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             name: str, path: list[Any], value: Any) -> None:
    good = _tampered(trajectory_row, ["episode"], 0)
    file = tmp_path / "t.jsonl"
    file.write_text(good + "\n" + _tampered(trajectory_row, path, value) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.jsonl line 2: bad trajectory line"):
        read_trajectories(file)
    with pytest.raises(DataError):
        Trajectory.from_line(_tampered(trajectory_row, path, value))
    capsys.readouterr()
    for argv in (["replay", str(file), "--no-progress"], ["rescore", str(file), "--reward", "mmsearch-r1"],
                 ["render", str(file), "-o", str(tmp_path / "r.html"), "--no-resolve"]):
        code = main(argv)
        _assert_one_line_error(code, capsys.readouterr().err, 2, 2)
    assert not (tmp_path / "r.html").exists()


def test_api_values_are_checked_like_parsed_ones(trajectory_row: dict[str, Any]) -> None:
    """``Trajectory.from_json`` on a dict built in Python: inf, NaN and huge ints are refused too."""
    for path, value in ((["turns", 0, "reward"], float("inf")), (["reward", "score"], float("nan")),
                        (["episode"], 10**40), (["question"], "\ud800")):
        row = json.loads(json.dumps(trajectory_row))
        node = row
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(DataError):
            Trajectory.from_json(row)


# -- cassettes -------------------------------------------------------------------------------

HITS = [Hit("Paris", "https://w.org/Paris", "Paris is the capital of France.", 2.0, "mem"),
        Hit("Lyon", "https://w.org/Lyon", "Lyon is a city in France.", 1.0, "mem", b"\x89PNG thumb")]


@pytest.fixture(scope="module")
def cassette_lines(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cassette")
    with SearchCache(MemoryBackend(default_text_hits=HITS, default_image_hits=HITS[1:]), tmp / "cache") as cache:
        cache.text_search("capital of france", 5)
        cache.image_search(ImageQuery(Image.new("RGB", (4, 4), "red"), box=(0, 0, 2, 2)), 3)
        cache.export_cassette(tmp / "c.jsonl")
    return [json.loads(line) for line in (tmp / "c.jsonl").read_text(encoding="utf-8").splitlines()]


def _line_of(lines: list[dict[str, Any]], what: str) -> int:
    """1-based number of the header, the blob, the text entry or the image entry."""
    if what == "header":
        return 1
    if what == "blob":
        return next(i for i, o in enumerate(lines, 1) if "blob" in o)
    return next(i for i, o in enumerate(lines, 1) if o.get("kind") == what)


CASSETTE_CASES: list[tuple[str, str, list[Any], Any]] = [
    ("5000-digit entries", "header", ["entries"], Raw("9" * 5000)),
    ("1e999 blobs", "header", ["blobs"], Raw("1e999")),
    ("string entries", "header", ["entries"], "3"),
    ("null entries", "header", ["entries"], None),
    ("negative entries", "header", ["entries"], -1),
    ("100000-deep cache params", "header", ["cache_params"], DEEP),
    ("bad base64 blob", "blob", ["data"], "!!!"),
    ("null blob data", "blob", ["data"], None),
    ("5000-digit k", "text", ["k"], Raw("5" * 5000)),
    ("1e999 k", "text", ["k"], Raw("1e999")),
    ("string k", "text", ["k"], "5"),
    ("null k", "text", ["k"], None),
    ("negative k", "text", ["k"], -1),
    ("1e999 score", "text", ["hits", 0, "score"], Raw("1e999")),
    ("-Infinity score", "text", ["hits", 0, "score"], Raw("-Infinity")),
    ("string score", "text", ["hits", 0, "score"], "high"),
    ("null score", "text", ["hits", 0, "score"], None),
    ("5000-digit score", "text", ["hits", 0, "score"], Raw("7" * 5000)),
    ("100000-deep title", "text", ["hits", 0, "title"], DEEP),
    ("lone surrogate title", "text", ["hits", 0, "title"], Raw('"\\udfff"')),
    ("NaN query", "text", ["query"], Raw("NaN")),
    ("1e999 in a box", "image", ["box"], [Raw("1e999"), 0, 2, 2]),
    ("string box", "image", ["box"], "0,0,2,2"),
    ("line is an array", "text", [], [1]),
]


@pytest.mark.parametrize(("name", "where", "path", "value"), CASSETTE_CASES, ids=[c[0] for c in CASSETTE_CASES])
def test_tampered_cassette(cassette_lines: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           name: str, where: str, path: list[Any], value: Any) -> None:
    lineno = _line_of(cassette_lines, where)
    lines = [json.dumps(o, sort_keys=True, separators=(",", ":")) for o in cassette_lines]
    lines[lineno - 1] = _tampered(cassette_lines[lineno - 1], path, value)
    file = tmp_path / "c.jsonl"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"line {lineno}:"):
        verify_cassette(file)
    with pytest.raises(DataError, match=f"line {lineno}:"):
        import_cassette(tmp_path / "api", file)
    capsys.readouterr()
    _assert_one_line_error(main(["cache", "verify", str(file)]), capsys.readouterr().err, 1, lineno)
    _assert_one_line_error(main(["cache", "import", str(file), "--dir", str(tmp_path / "cli")]),
                           capsys.readouterr().err, 2, lineno)
    assert not (tmp_path / "cli" / "cache.db").exists()
