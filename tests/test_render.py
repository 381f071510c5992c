"""Tests of the HTML report: structure, escaping of hostile text, images, and a real browser."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.policies import EpisodeView, make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.render import render_report, write_report
from mmsearch_gym.search.base import Hit, MemoryBackend
from mmsearch_gym.tasks import Task, TaskSet
from mmsearch_gym.trajectories import read_trajectories

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'


class Page(HTMLParser):
    """Every start tag with its attributes, and all text, of a document."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]


class HostilePolicy:
    """Crops, then answers with text that would run script if it were not escaped."""

    name = "hostile"

    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        out = []
        for view in episodes:
            if not view.steps:
                out.append(f"<reason>{HOSTILE}</reason><crop>200,20,300,90</crop><search><img></search>")
            elif len(view.steps) == 1:
                out.append(f"<reason>then {HOSTILE}</reason><text_search>{HOSTILE}</text_search>")
            else:
                out.append(f"<reason>done</reason><answer>{HOSTILE}</answer>")
        return out


@pytest.fixture
def hostile_run(tiny_tasks: TaskSet, tmp_path: Path) -> Path:
    evil = Hit(f"Flag {HOSTILE}", "javascript:alert(1)", f"snippet {HOSTILE}", 1.0, "memory")
    flag = Hit("Flag of France", "https://example.org/flag/fr?a=1&b=\"2\"", "The flag.", 0.9, "memory",
               thumbnail=_png_bytes((0, 0, 255)))
    backend = MemoryBackend(default_text_hits=[evil], default_image_hits=[flag, evil])
    tasks = TaskSet([Task(t.id, HOSTILE + t.question, t.answers, category=t.category, objects=t.objects,
                          image_bytes=t.image_bytes) for t in tiny_tasks], name="hostile")
    make = functools.partial(make_env, tasks=tasks, backend=backend,
                             cache={"mode": "readthrough", "dir": str(tmp_path / "cache")})
    path = tmp_path / "hostile.jsonl"
    evaluate(make, HostilePolicy(), trajectories=path, progress=False, embed_images=True)
    return path


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format="PNG")
    return buf.getvalue()


def test_report_structure(hostile_run: Path) -> None:
    trajs = read_trajectories(hostile_run)
    html = render_report(trajs, title="Report <1>")
    page = Page(html)
    assert page.find("title") and "Report <1>" in "".join(page.text)
    assert len(page.find("section", "episode")) == 3
    assert len(page.find("table", "metrics")) == 1 and len(page.find("table", "episodes")) == 1
    assert len(page.find("svg", "scene")) == 3
    crops = page.find("rect", "crop")
    boxes = [turn.box for t in trajs for turn in t.turns if turn.box is not None]
    assert len(boxes) == 2  # task t2's image is 200 px wide: that crop is invalid and drawn nowhere
    assert len(crops) == 2 and crops[0]["x"] == "200" and crops[0]["width"] == "100"
    assert len(page.find("li", "invalid")) == 1
    assert len(page.find("li", "turn")) == 9
    anchors = {a["id"] for _, a in page.tags if a.get("id")}
    assert all(link["href"][1:] in anchors for link in page.find("a") if (link.get("href") or "").startswith("#"))
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


def test_search_behaviour_table(hostile_run: Path) -> None:
    """Each episode crops then searches text then answers; task t2's crop is invalid (no search)."""
    page = Page(render_report(read_trajectories(hostile_run)))
    assert len(page.find("table", "behaviour")) == 1
    text = "".join(page.text)
    for heading in ("crop searches / ep", "whole-image searches / ep", "refined queries / ep",
                    "answered without search %", "answered after image search %", "answered after text search %"):
        assert heading in text
    html = render_report(read_trajectories(hostile_run))
    table = html[html.index("<table class=behaviour>"):]
    first_row = table[table.index("<tr class=overall>"):table.index("</tr>", table.index("<tr class=overall>"))]
    cells = [c.split("<")[0] for c in first_row.split("<td class=num>")[1:]]
    # 3 episodes; crops 2/3; whole 0; text 1; refined 0; answered after a text search: all
    assert cells == ["3", "0.67", "0.00", "1.00", "0.00", "0.0", "0.0", "100.0", "0.0"]


def test_hostile_text_is_escaped(hostile_run: Path) -> None:
    html = render_report(read_trajectories(hostile_run))
    page = Page(html)
    assert not page.find("script")
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("href", "src"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith("javascript:"), (tag, attrs)
            if (tag, name) in (("img", "src"), ("image", "href")):
                assert value.startswith("data:image/png;base64,") or value.startswith("data:image/jpeg;base64,")
    text = "".join(page.text)
    assert HOSTILE in text  # shown verbatim as text
    assert text.count("javascript:alert(1)") >= 1  # the URL is shown, never linked
    external = [a["href"] for a in page.find("a") if not (a.get("href") or "").startswith("#")]
    assert external and all(h.startswith("https://") for h in external)
    assert len(page.find("img")) == 2  # the thumbnail of each image search that ran


def test_only_real_image_bytes_become_data_urls() -> None:
    from mmsearch_gym.render import _data_url

    assert _data_url(_png_bytes((1, 2, 3))).startswith("data:image/png;base64,")  # type: ignore[union-attr]
    for junk in (b"<svg onload=alert(1)>", b"", None, b"GIF", b"\xff\xd8"):
        assert _data_url(junk) is None


def test_images_resolved_from_the_cache_or_placeholder(tiny_tasks: TaskSet, memory_backend: MemoryBackend,
                                                       tmp_path: Path) -> None:
    make = functools.partial(make_env, tasks=tiny_tasks, backend=memory_backend,
                             cache={"mode": "readthrough", "dir": str(tmp_path / "cache")})
    path = tmp_path / "plain.jsonl"
    evaluate(make, make_policy("random", tasks=tiny_tasks, seed=5), trajectories=path, progress=False)
    trajs = read_trajectories(path)
    assert all(t.image.thumbnail is None for t in trajs)
    with_cache = Page(render_report(trajs))
    without = Page(render_report(trajs, resolve_images=False))
    image_searches = sum(1 for t in trajs for turn in t.turns if turn.hits and turn.action["kind"] == "image_search")
    assert len(with_cache.find("img")) == image_searches  # one flag thumbnail per image search, read back
    assert not without.find("img") and len(without.find("div", "placeholder")) == 3
    # the tasks are not reachable from the file (custom factory): a placeholder, never a wrong picture
    assert len(with_cache.find("div", "placeholder")) == 3
    out = write_report(path, tmp_path / "sub" / "r.html", max_episodes=1)
    assert len(Page(out.read_text(encoding="utf-8")).find("section", "episode")) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="headless check needs Chromium (Debian package `chromium`); "
                                              "apt-get install -y chromium")
def test_chromium_renders_a_non_blank_page(hostile_run: Path, tmp_path: Path) -> None:
    report = write_report(hostile_run, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           report.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if os.environ.get("MMSEARCH_GYM_KEEP_SCREENSHOT"):  # for looking at it by eye
        shutil.copy(shot, os.environ["MMSEARCH_GYM_KEEP_SCREENSHOT"])
    assert shot.exists(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    stats = ImageStat.Stat(image)
    assert max(stats.stddev) > 10  # not a blank page
    colors = image.resize((300, 500)).getcolors(maxcolors=1_000_000)
    assert colors is not None and len(colors) > 50
    # the yellow crop outline over the scene and the blue flag thumbnail are on the page
    pixels = np.asarray(image, dtype=np.int16).reshape(-1, 3)
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    assert np.any((r > 220) & (g > 200) & (b < 100))
    assert np.any((b > 200) & (r < 60) & (g < 60))
