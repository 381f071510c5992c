"""Search-need labels: which tasks a model answers without search (MMSearch-R1's recipe).

MMSearch-R1 builds its search-balanced training subset by letting the base model answer each
question several times with search disabled: questions it answers correctly are
*search-free*, the others *search-required*. :func:`label_search_need` does that with any
policy spec (scripted, ``transformers:``, ``openai:URL#model``) through
:func:`mmsearch_gym.evaluate.evaluate`, on any env and task source.

Search is disabled by env overrides (:func:`no_search_overrides`), not by a special env:
both search budgets 0 (a search turn ends the episode unanswered), one turn, and a system
prompt that says no tool is available and shows the dialect's answer format. The rule
(:class:`SearchNeedRule`): a task is search-free when at least ``min_correct`` of its ``k``
no-search episodes are correct (the reward's ``raw_score > 0.5``: the scorer, before any
search penalty), else search-required. The default (``min_correct = k``) is conservative:
only what the model knows every time counts as known.

Labels are JSON lines ``{"task_id", "label", "correct", "k", "min_correct", "policy"}``
appended as each chunk of tasks finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.tasks import SEARCH_FREE, TaskSet

__all__ = ["SEARCH_REQUIRED", "SearchNeedRule", "balanced_labels", "label_search_need", "no_search_overrides",
           "read_labels"]

SEARCH_REQUIRED = "search_required"
LABELS = (SEARCH_FREE, SEARCH_REQUIRED)


@dataclass(frozen=True)
class SearchNeedRule:
    """``k`` no-search episodes per task; search-free when ``min_correct`` or more are correct."""

    k: int = 4
    min_correct: int | None = None
    """Default: ``k`` (correct every time)."""

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k!r}")
        m = self.threshold
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.k:
            raise ConfigError(f"min_correct must be between 1 and k={self.k}, got {self.min_correct!r}")

    @property
    def threshold(self) -> int:
        return self.k if self.min_correct is None else self.min_correct

    def label(self, correct: int) -> str:
        return SEARCH_FREE if correct >= self.threshold else SEARCH_REQUIRED


def no_search_prompt(dialect: Any) -> str:
    """A system prompt without tools, in the dialect's answer format."""
    from mmsearch_gym.actions import Answer

    example = dialect.format(Answer("your final answer"), reasoning="your reasoning")
    return ("You answer questions about an image from your own knowledge. No search tool is available in this "
            "conversation: answer in this single turn, in exactly this format:\n" + example)


def no_search_overrides(dialect: Any) -> dict[str, Any]:
    """Env overrides that disable search: budgets 0, one turn, a tool-free system prompt."""
    return {"image_search_budget": 0, "text_search_budget": 0, "max_turns": 1,
            "system_prompt": no_search_prompt(dialect)}


def read_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """Labels already written (task id -> record); a bad line raises DataError naming it."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number}: not a JSON line; fix or delete it (a crash leaves at most "
                                "one partial last line)") from None
            if not isinstance(record, dict) or record.get("label") not in LABELS or "task_id" not in record:
                raise DataError(f"{path}:{number}: a label line needs task_id and label in {LABELS}")
            out[str(record["task_id"])] = record
    return out


def env_tasks(env: str, overrides: Mapping[str, Any]) -> tuple[TaskSet, Any]:
    """The task set and dialect of ``env`` built with ``overrides``."""
    from mmsearch_gym.evaluate import EnvRecipe

    probe = EnvRecipe.create(env, overrides).build()
    try:
        base: Any = probe.unwrapped
        return base.tasks, base.dialect
    finally:
        probe.close()


def play(env: str, overrides: Mapping[str, Any], policy: Any, tasks: TaskSet, *, seed: int, batch_size: int,
         trajectories: Any = None, embed_images: bool = False) -> Any:
    """One episode per task of ``tasks`` (an EvalReport); env objects shared in this process."""
    from mmsearch_gym.evaluate import evaluate

    kwargs = {k: v for k, v in overrides.items() if k != "tasks"}
    return evaluate(env, policy, tasks=tasks, seed=seed, batch_size=batch_size, progress=False,
                    trajectories=trajectories, embed_images=embed_images, **kwargs)


def label_search_need(env: str, policy: str, out: str | Path, *, rule: SearchNeedRule = SearchNeedRule(),
                      overrides: Mapping[str, Any] | None = None, episodes: int | None = None, seed: int = 0,
                      batch_size: int = 32, chunk: int = 64, policy_kwargs: Mapping[str, Any] | None = None,
                      progress: bool = True) -> dict[str, dict[str, Any]]:
    """Label the first ``episodes`` tasks of ``env`` (all by default); returns every label in ``out``.

    Tasks already labelled in ``out`` are skipped (resume); new labels are appended per chunk.
    Repetition ``r`` of a task plays with reset seed ``seed + r * 1_000_003 + i``.
    """
    from tqdm import tqdm

    from mmsearch_gym.policies import make_policy

    overrides = dict(overrides or {})
    tasks, dialect = env_tasks(env, overrides)
    if episodes is not None:
        if not 1 <= episodes <= len(tasks):
            raise ConfigError(f"episodes must be between 1 and the {len(tasks)} tasks, got {episodes}")
        tasks = tasks[:episodes]
    done = read_labels(out)
    todo = [t for t in tasks if t.id not in done]
    if not todo:
        return done
    agent = make_policy(policy, tasks=tasks, dialect=dialect, seed=seed, **dict(policy_kwargs or {}))
    blocked = {**overrides, **no_search_overrides(dialect)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc=f"labelling with {policy}", unit="task", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), chunk):
            part = TaskSet(todo[start:start + chunk], name=tasks.name)
            correct = dict.fromkeys((t.id for t in part), 0)
            for r in range(rule.k):
                report = play(env, blocked, agent, part, seed=seed + r * 1_000_003, batch_size=batch_size)
                for result in report.results:
                    correct[result.task_id] += int(result.correct)
            records: list[dict[str, Any]] = [
                {"task_id": tid, "label": rule.label(c), "correct": c, "k": rule.k, "min_correct": rule.threshold,
                 "policy": policy} for tid, c in correct.items()]
            with open(out, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            done.update((str(r["task_id"]), r) for r in records)
            bar.update(len(part))
    return done


def balanced_labels(labels: Mapping[str, Mapping[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """As many search-free as search-required labels (the smaller group whole, the larger one
    sampled with ``seed``), in task-id order."""
    groups: dict[str, list[str]] = {label: sorted(t for t, r in labels.items() if r["label"] == label)
                                    for label in LABELS}
    n = min(len(g) for g in groups.values())
    rng = random.Random(seed)
    chosen = set()
    for ids in groups.values():
        chosen.update(rng.sample(ids, n))
    return [dict(labels[t]) for t in sorted(chosen)]


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write JSON lines atomically (a derived file: replaced whole, never half-written)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count
