"""DeepMMSearchVQA-style SFT data: a teacher's judged, balanced, topic-uniform episodes.

DeepMMSearch-R1 makes its SFT data by letting a strong model hold multi-turn tool-use
dialogues through the real search tools, keeping the dialogues a judge finds correct,
balancing search-free and search-required questions 50:50 and sampling uniformly over a
knowledge taxonomy. :func:`make_sft` does the same here:

1. the teacher (any policy spec: ``oracle``, ``rag``, ``transformers:DIR``,
   ``openai:URL#model``) plays every task through :func:`mmsearch_gym.evaluate.evaluate`
   with the env's real tools; its episodes are appended to ``teacher.jsonl`` (a rerun plays
   only the tasks not there yet: resumable);
2. the judge is the env's reward scorer (``RewardSpec``: exact match, or the judge the spec
   names): an episode is kept when correct and format-valid; duplicates (a task played
   twice) keep the first episode; search-free tasks whose teacher searched are dropped
   (they would teach needless searching) unless ``allow_search_on_free``;
3. labels come from ``label-search-need`` output (``labels``) or else the task category;
4. within each label, episodes are sampled round-robin over the taxonomy field
   (``meta["taxonomy"]`` of the loaders, or any meta key), i.e. uniformly over topics;
5. the two labels are balanced to ``free_share`` (0.5: 50:50) as far as the data allows; the
   shortfall is reported, or raises with ``strict`` only.

Outputs in ``out_dir``: ``teacher.jsonl`` (every teacher episode), ``sft.jsonl`` (the kept
trajectories: the SFT recipe's ``sft.trajectories``), ``hf/`` (the same as a Hugging Face
dataset, :func:`mmsearch_gym.hf_datasets.to_hf_dataset`) and ``summary.json`` (what was kept
and why the rest was dropped).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search_need import (
    SEARCH_REQUIRED,
    env_tasks,
    play,
    read_labels,
    write_jsonl,
)
from mmsearch_gym.tasks import SEARCH_FREE, Task, TaskSet
from mmsearch_gym.trajectories import Trajectory, read_trajectories

__all__ = ["SFTSummary", "make_sft", "select_episodes"]


@dataclass
class SFTSummary:
    """What :func:`make_sft` kept, and why it dropped the rest."""

    played: int = 0
    new_episodes: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    shortfall: dict[str, int] = field(default_factory=dict)
    taxonomy: dict[str, dict[str, int]] = field(default_factory=dict)
    free_share: float = 0.5

    def to_json(self) -> dict[str, Any]:
        return {"played": self.played, "new_episodes": self.new_episodes, "kept": self.kept,
                "kept_total": sum(self.kept.values()), "dropped": self.dropped, "shortfall": self.shortfall,
                "taxonomy": self.taxonomy, "free_share": self.free_share}

    def to_text(self) -> str:
        lines = [f"teacher episodes: {self.played} ({self.new_episodes} new this run)",
                 f"kept {sum(self.kept.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kept.items()))]
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{v} {k}" for k, v in sorted(self.dropped.items())))
        if self.shortfall:
            lines.append("balance shortfall (wanted but not available): "
                         + ", ".join(f"{v} {k}" for k, v in sorted(self.shortfall.items())))
        for label, topics in sorted(self.taxonomy.items()):
            if len(topics) > 1:
                lines.append(f"{label} by taxonomy: " + ", ".join(f"{k} {v}" for k, v in sorted(topics.items())))
        return "\n".join(lines) + "\n"


def _label_of(task: Task | None, trajectory: Trajectory, labels: Mapping[str, Mapping[str, Any]]) -> str:
    record = labels.get(trajectory.task_id)
    if record is not None:
        return str(record["label"])
    category = task.category if task is not None else trajectory.category
    return SEARCH_FREE if category == SEARCH_FREE else SEARCH_REQUIRED


def _topic(task: Task | None, key: str | None) -> str:
    if task is None or key is None:
        return "-"
    value = task.meta.get(key)
    return "-" if value in (None, "") else str(value)


def _uniform_over_topics(items: list[tuple[str, Trajectory]], n: int, rng: random.Random) -> list[Trajectory]:
    """``n`` items taken round-robin over topics (each topic shuffled): uniform over topics."""
    by_topic: dict[str, list[Trajectory]] = defaultdict(list)
    for topic, traj in items:
        by_topic[topic].append(traj)
    queues = []
    for topic in sorted(by_topic):
        group = by_topic[topic]
        rng.shuffle(group)
        queues.append(group)
    rng.shuffle(queues)
    out: list[Trajectory] = []
    while len(out) < n and any(queues):
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop())
    return out


def select_episodes(trajectories: Sequence[Trajectory], tasks: TaskSet | None, *,
                    labels: Mapping[str, Mapping[str, Any]] | None = None, taxonomy: str | None = "taxonomy",
                    free_share: float = 0.5, max_examples: int | None = None, strict: bool = False,
                    allow_search_on_free: bool = False, seed: int = 0) -> tuple[list[Trajectory], SFTSummary]:
    """Judge, deduplicate, label, balance and topic-sample ``trajectories`` (steps 2-5 above)."""
    if not 0.0 < free_share < 1.0:
        raise ConfigError(f"free_share must be in (0, 1), got {free_share!r}")
    labels = labels or {}
    summary = SFTSummary(played=len(trajectories), free_share=free_share)
    dropped: Counter[str] = Counter()
    seen_tasks: set[str] = set()
    pools: dict[str, list[tuple[str, Trajectory]]] = {SEARCH_FREE: [], SEARCH_REQUIRED: []}
    for traj in trajectories:
        task = tasks.by_id(traj.task_id) if tasks is not None and traj.task_id in tasks else None
        if traj.task_id in seen_tasks:
            dropped["duplicate (task already kept)"] += 1
            continue
        if traj.reward.raw_score <= 0.5:
            dropped["incorrect (judge)"] += 1
            continue
        if traj.reward.format <= 0.5:
            dropped["format invalid"] += 1
            continue
        label = _label_of(task, traj, labels)
        if label == SEARCH_FREE and not allow_search_on_free and (traj.image_searches or traj.text_searches):
            dropped["searched on a search-free task"] += 1
            continue
        seen_tasks.add(traj.task_id)
        pools[label].append((_topic(task, taxonomy), traj))
    n_free, n_req = len(pools[SEARCH_FREE]), len(pools[SEARCH_REQUIRED])
    total = min(n_free / free_share, n_req / (1.0 - free_share))
    want_free, want_req = round(total * free_share), round(total * (1.0 - free_share))
    if min(n_free, n_req) == 0:  # one class only: keep what there is and report the other as missing
        want_free, want_req = n_free, n_req
        short_of = SEARCH_FREE if n_free == 0 else SEARCH_REQUIRED
        have = max(n_free, n_req)
        need = round(have * (free_share if short_of == SEARCH_FREE else 1.0 - free_share)
                     / (1.0 - free_share if short_of == SEARCH_FREE else free_share))
        if have:
            summary.shortfall[short_of] = need
    if strict and summary.shortfall:
        raise DataError(f"cannot balance {free_share:.0%} search-free: {n_free} search-free and {n_req} "
                        f"search-required episodes are correct; drop --strict-balance to keep them unbalanced")
    if max_examples is not None:
        scale = min(1.0, max_examples / max(1, want_free + want_req))
        want_free, want_req = int(want_free * scale), int(want_req * scale)
    rng = random.Random(seed)
    kept_free = _uniform_over_topics(pools[SEARCH_FREE], want_free, rng)
    kept_req = _uniform_over_topics(pools[SEARCH_REQUIRED], want_req, rng)
    for label, pool, kept in ((SEARCH_FREE, pools[SEARCH_FREE], kept_free),
                              (SEARCH_REQUIRED, pools[SEARCH_REQUIRED], kept_req)):
        if len(pool) > len(kept):
            dropped[f"{label} beyond the balance"] += len(pool) - len(kept)
        summary.kept[label] = len(kept)
        ids = {id(t) for t in kept}
        summary.taxonomy[label] = dict(Counter(topic for topic, t in pool if id(t) in ids))
    summary.dropped = dict(dropped)
    chosen = kept_free + kept_req
    chosen.sort(key=lambda t: (t.task_index if t.task_index is not None else 0, t.task_id))
    return chosen, summary


def make_sft(env: str, teacher: str, out_dir: str | Path, *, overrides: Mapping[str, Any] | None = None,
             labels: str | Path | None = None, episodes: int | None = None, seed: int = 0, batch_size: int = 32,
             chunk: int = 256, policy_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
             hf: bool = True, **select: Any) -> SFTSummary:
    """Run the whole pipeline (module docstring) into ``out_dir``; returns the summary."""
    from tqdm import tqdm

    from mmsearch_gym.policies import make_policy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    tasks, dialect = env_tasks(env, overrides)
    if episodes is not None:
        if not 1 <= episodes <= len(tasks):
            raise ConfigError(f"episodes must be between 1 and the {len(tasks)} tasks, got {episodes}")
        tasks = tasks[:episodes]
    teacher_path = out / "teacher.jsonl"
    recorded = read_trajectories(teacher_path) if teacher_path.is_file() else []
    played = {t.task_id for t in recorded}
    todo = [t for t in tasks if t.id not in played]
    new = 0
    if todo:
        agent = make_policy(teacher, tasks=tasks, dialect=dialect, seed=seed, **dict(policy_kwargs or {}))
        with tqdm(total=len(todo), desc=f"teacher {teacher}", unit="task", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for start in range(0, len(todo), chunk):
                part = TaskSet(todo[start:start + chunk], name=tasks.name)
                report = play(env, overrides, agent, part, seed=seed + start, batch_size=batch_size,
                              trajectories=teacher_path, embed_images=True)
                new += len(report.results)
                bar.update(len(part))
        recorded = read_trajectories(teacher_path)
    label_map = read_labels(labels) if labels is not None else {}
    if labels is not None and not label_map:
        raise DataError(f"no labels in {labels}; run `mmsearch-gym label-search-need --out {labels}` first")
    wanted = {t.id for t in tasks}
    chosen, summary = select_episodes([t for t in recorded if t.task_id in wanted], tasks, labels=label_map,
                                      seed=seed, **select)
    summary.new_episodes = new
    write_jsonl((t.to_json() for t in chosen), out / "sft.jsonl")
    if hf and chosen:
        from mmsearch_gym.hf_datasets import _datasets, to_hf_dataset

        if not progress:
            _datasets().disable_progress_bars()
        label_of = {t.task_id: _label_of(tasks.by_id(t.task_id) if t.task_id in tasks else None, t, label_map)
                    for t in chosen}
        to_hf_dataset(chosen, tasks=tasks, labels=label_of).save_to_disk(str(out / "hf"))
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    return summary
