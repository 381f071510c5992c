"""A miniature world for policy, evaluation and trajectory tests: the tiny fixture tasks
(tests/conftest.py) with oracle plans, and an evidence reader that understands them."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.policies import EpisodeView, Policy
from mmsearch_gym.search.base import Hit, MemoryBackend
from mmsearch_gym.tasks import SceneObject, Task, TaskSet


def scene_png(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    """A solid image with one coloured 'flag' box at (200, 20, 300, 90), PNG-encoded."""
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle([200, 20, 300, 90], fill=(255 - color[0], 40, 90))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def thumb_png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format="PNG")
    return buf.getvalue()


PLANS = {
    "t0": [{"tool": "image_search", "box": [200, 20, 300, 90]}, {"tool": "answer"}],
    "t1": [{"tool": "image_search", "box": None}, {"tool": "text_search", "query": "France capital"},
           {"tool": "answer"}],
    "t2": [{"tool": "answer"}],
}


class CapitalReader:
    """Reads the tiny fixture world: flag hits -> country -> capital."""

    def identify(self, hits: Sequence[Hit]) -> str | None:
        return next((h.title[len("Flag of "):] for h in hits if h.title.startswith("Flag of ")), None)

    def build_query(self, question: str, hits: Sequence[Hit]) -> str:
        entity = self.identify(hits)
        return f"{entity} capital" if entity else question

    def answer(self, question: str, hits: Sequence[Hit]) -> str | None:
        for hit in hits:
            found = re.search(r"Capital: ([A-Z][a-z]+)", hit.snippet)
            if found and "capital" in question.lower():
                return found.group(1)
        return self.identify(hits) if "country" in question.lower() else None

    def answer_from_scene(self, question: str, objects: Sequence[SceneObject], *args: object,
                          **kwargs: object) -> str | None:
        return str(len(objects)) if question.lower().startswith("how many") else None


R = "<reason>r</reason>"
"""Turns of the fixture world in the mmsearch-r1 dialect (the metrics tests play them)."""
IMAGE = R + "<search><img></search>"
CROP = R + "<crop>200,20,300,90</crop><search><img></search>"
BAD_CROP = R + "<crop>5000,5000,6000,6000</crop><search><img></search>"
"""A crop outside the image: the env rejects it and runs no search; the scorer still counts one."""
TEXT = R + "<text_search>france capital</text_search>"
ANSWER = R + "<answer>Paris</answer>"


def france_backend() -> MemoryBackend:
    """Canned results: any image search finds the flag of France, "france capital" finds Paris."""
    flag = Hit("Flag of France", "https://example.org/flag/fr", "The flag of France.", 1.0, "memory",
               thumbnail=thumb_png((0, 0, 255)))
    return MemoryBackend(
        text={"france capital": [Hit("France", "https://example.org/fr", "France. Capital: Paris.", 2.0, "memory")]},
        default_text_hits=[Hit("Nothing", "https://example.org/none", "No match.", 0.1, "memory")],
        default_image_hits=[flag],
    )


def planned(tasks: TaskSet, copies: int = 1) -> TaskSet:
    """The fixture tasks with oracle plans; ``copies > 1`` repeats them under fresh ids."""
    def task_id(task: Task, copy: int) -> str:
        return task.id if copies == 1 else f"{task.id}-{copy}"
    return TaskSet([Task(task_id(t, c), t.question, t.answers, category=t.category, objects=t.objects,
                         image_bytes=t.image_bytes, meta={"oracle_plan": PLANS[t.id]})
                    for c in range(copies) for t in tasks], name="planned")


def start_episode(env: MMSearchEnv, index: int, seed: int | None = None) -> EpisodeView:
    """Reset ``env`` on task ``index`` and open the policy's view of the episode."""
    obs, info = env.reset(seed=seed, options={"task_index": index})
    return EpisodeView.start(obs, info, dialect=env.dialect)


def play_policy(env: MMSearchEnv, policy: Policy, index: int,
                seed: int | None = None) -> tuple[EpisodeView, float, dict]:
    """Play one episode of task ``index`` with ``policy``: ``(view, final reward, final info)``."""
    view = start_episode(env, index, seed)
    while True:
        [text] = policy.act([view])
        obs, reward, terminated, truncated, info = env.step(text)
        view.record(text, obs, info)
        if terminated or truncated:
            return view, float(reward), info


def strip_timing(path: Path) -> list[dict[str, Any]]:
    """A trajectory file's rows without their timings (the only fields two equal runs may differ in)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row.pop("timing")
        for turn in row["turns"]:
            turn.pop("timing")
        rows.append(row)
    return rows
