"""The papers' evaluation table: accuracy, search ratio, calls per tool, format rate, reward.

``evaluate(env, policy)`` wires three parts: the :class:`~mmsearch_gym.runner.EpisodeRunner`
plays the episodes (episode ``i`` on ``task_index=i`` with reset seed ``seed + i``, batched
``policy.act`` calls, envs in this process, in ``workers`` processes or on ``workers`` Ray actors,
the same numbers for any ``workers`` and executor), the
:class:`~mmsearch_gym.trajectories.TrajectoryRecorder` turns its events into trajectory lines,
and :mod:`mmsearch_gym.metrics` counts each ended episode (:class:`EpisodeResult`) and builds the
table (:class:`Metrics`), overall and per task category.

The table's columns (the names of :mod:`mmsearch_gym.metrics`): ``acc %`` accuracy (correct
before the search penalty), ``search %`` the share of episodes in which a search ran,
``img/ep`` and ``txt/ep`` the image and text searches run per episode, ``fmt %`` the format
rate, ``reward`` the mean episode reward. A second block, "search behaviour" (printed by ``eval``,
in Markdown with ``behaviour=True`` / ``eval --markdown-behaviour``), splits the searches per tool:
``crop/ep`` and ``whole/ep`` (image searches on a crop box or on the whole image), ``txt/ep`` and
``refine/ep`` (text searches directly after a text search), and gives MMSearch-R1's answer
behaviour: ``ans no-search %``, ``ans after-img %``, ``ans after-txt %`` (the kind of the last
search before the answer) and ``no answer %``. The JSON report holds every count.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_gym.env_factory import EnvFactory
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult, Metrics
from mmsearch_gym.policies import make_policy
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.runner import DEFAULT_BATCH_SIZE, EpisodeEnd, EpisodeRunner, Executor
from mmsearch_gym.trajectories import TrajectoryRecorder, TrajectoryWriter

if TYPE_CHECKING:
    import gymnasium as gym

    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.policies import Policy
    from mmsearch_gym.trajectories import Trajectory

__all__ = ["BEHAVIOUR_COLUMNS", "EnvFactory", "EnvRecipe", "EpisodeResult", "EvalReport", "Metrics", "evaluate",
           "format_reports", "table_cell", "table_rows"]

EnvRecipe = EnvFactory
"""The former name of :class:`~mmsearch_gym.env_factory.EnvFactory`."""


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """The outcome of an evaluation: per-episode results and the table built from them.

    ``to_json()`` has the top-level keys ``accuracy``, ``search_ratio``, ``mean_reward``,
    ``format_rate``, ``calls_per_episode`` ``{"image_search", "text_search"}``, ``mean_turns``,
    ``episodes`` and ``per_category`` (``{category: the same keys}``), plus the run's identity
    (``env``, ``policy``, ``seed``, ``dialect``, ``reward_spec``, and ``tasks`` when the task source
    was overridden). Nothing in it depends on timing or on the number of workers.
    """

    results: list[EpisodeResult]
    env: str
    policy: str
    seed: int | None = None
    dialect: str | None = None
    reward_spec: dict[str, Any] | None = None
    wall_s: float = 0.0
    """Wall-clock seconds of the run (not part of ``to_json``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More identity fields for ``to_json`` (e.g. the task source)."""

    def __post_init__(self) -> None:
        self.results = sorted(self.results, key=lambda r: r.episode)

    @property
    def overall(self) -> Metrics:
        return Metrics.of(self.results)

    @property
    def per_category(self) -> dict[str, Metrics]:
        groups: dict[str, list[EpisodeResult]] = {}
        for result in self.results:
            groups.setdefault(result.category, []).append(result)
        return {cat: Metrics.of(groups[cat]) for cat in sorted(groups)}

    @property
    def accuracy(self) -> float:
        return self.overall.accuracy

    @property
    def search_ratio(self) -> float:
        return self.overall.search_ratio

    @property
    def mean_reward(self) -> float:
        return self.overall.mean_reward

    def to_json(self, *, include_episodes: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"env": self.env, "policy": self.policy, "seed": self.seed, "dialect": self.dialect,
                                "reward_spec": self.reward_spec, **self.extra}
        data.update(self.overall.to_json())
        data["per_category"] = {cat: m.to_json() for cat, m in self.per_category.items()}
        if include_episodes:
            data["per_episode"] = [r.to_json() for r in self.results]
        return data

    def to_text(self, *, behaviour: bool = True) -> str:
        """The table as aligned plain text (what ``mmsearch-gym eval`` prints), with the
        search-behaviour block unless ``behaviour=False``."""
        return format_reports({self.policy: self}, "text", title=self._title(), behaviour=behaviour)

    def to_markdown(self, *, behaviour: bool = False) -> str:
        """The table as Markdown (the search-behaviour block only with ``behaviour=True``)."""
        return format_reports({self.policy: self}, "markdown", title=self._title(), behaviour=behaviour)

    def _title(self) -> str:
        tasks = f" ({self.extra['tasks']})" if self.extra.get("tasks") else ""
        return f"{self.env}{tasks} · policy {self.policy} · {len(self.results)} episodes · seed {self.seed}"

    def save_json(self, path: str | Path, *, include_episodes: bool = False) -> None:
        import json

        _write(path, json.dumps(self.to_json(include_episodes=include_episodes), indent=2, sort_keys=True,
                                ensure_ascii=False, allow_nan=False) + "\n")

    def save_markdown(self, path: str | Path, *, behaviour: bool = False) -> None:
        _write(path, self.to_markdown(behaviour=behaviour))

    @classmethod
    def from_trajectories(cls, trajectories: Sequence[Trajectory], *,
                          rewards: Sequence[RewardBreakdown] | None = None,
                          reward_spec: dict[str, Any] | None = None) -> EvalReport:
        """The table of recorded episodes (one policy), optionally under re-scored rewards."""
        if not trajectories:
            raise ConfigError("no trajectories to build a report from")
        rewards = list(rewards) if rewards is not None else [None] * len(trajectories)  # type: ignore[list-item]
        first = trajectories[0]
        results = [EpisodeResult.from_trajectory(t, r) for t, r in zip(trajectories, rewards, strict=True)]
        return cls(results, env=str(first.env.get("id") or first.env.get("tasks", {}).get("name", "custom")),
                   policy=first.policy, seed=None, dialect=first.env.get("dialect"),
                   reward_spec=reward_spec if reward_spec is not None else first.env.get("reward"))


def _write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


_COLUMNS = (("n", "episodes"), ("acc %", "accuracy"), ("search %", "search_ratio"), ("img/ep", "image_calls"),
            ("txt/ep", "text_calls"), ("fmt %", "format_rate"), ("reward", "mean_reward"))

BEHAVIOUR_COLUMNS = (("n", "episodes"), ("crop/ep", "crop_searches"), ("whole/ep", "whole_image_searches"),
                     ("txt/ep", "text_calls"), ("refine/ep", "text_refinements"),
                     ("ans no-search %", "answered_without_search"), ("ans after-img %", "answered_after_image_search"),
                     ("ans after-txt %", "answered_after_text_search"), ("no answer %", "unanswered"))
"""The search-behaviour block: searches per tool (image searches split into crops and whole images,
text searches and how many of them refined the previous query) and MMSearch-R1's answer behaviour
(shares of episodes that answered after no search, after an image search last, after a text
search last, or never answered; the four sum to 100)."""

_PERCENT = frozenset({"accuracy", "search_ratio", "format_rate", "answered_without_search",
                      "answered_after_image_search", "answered_after_text_search", "unanswered"})


def table_cell(metrics: Metrics, attr: str) -> str:
    """One cell of the table as printed (percentages for shares, 2 or 3 decimals otherwise)."""
    value = getattr(metrics, attr)
    if attr == "episodes":
        return str(value)
    if attr in _PERCENT:
        return f"{100 * value:.1f}"
    if attr == "mean_reward":
        return f"{value:.3f}"
    return f"{value:.2f}"




def table_rows(reports: Mapping[str, EvalReport]) -> list[tuple[str, str, Metrics]]:
    """``(label, category, metrics)`` rows: each report's overall row, then its categories."""
    rows: list[tuple[str, str, Metrics]] = []
    for label, report in reports.items():
        rows.append((label, "all", report.overall))
        for category, metrics in report.per_category.items():
            rows.append((label, category, metrics))
    return rows


def format_reports(reports: Mapping[str, EvalReport], fmt: str = "text", *, title: str | None = None,
                   behaviour: bool = False) -> str:
    """One table for several reports (one row per report and category): ``text`` or ``markdown``.

    Percentages are shares of episodes; img/ep and txt/ep are search calls per episode. With
    ``behaviour``, a second block follows (the same rows, :data:`BEHAVIOUR_COLUMNS`): crop and
    whole-image searches, text searches and refinements per episode, and the answer behaviour.
    The first block is the same with or without it.
    """
    if fmt not in ("text", "markdown"):
        raise ConfigError(f"table format must be 'text' or 'markdown', got {fmt!r}")
    rows = table_rows(reports)
    blocks = [_block(rows, _COLUMNS, fmt, title)]
    if behaviour:
        blocks.append(_block(rows, BEHAVIOUR_COLUMNS, fmt, "search behaviour"))
    return "\n".join(blocks)


def _block(rows: Sequence[tuple[str, str, Metrics]], columns: Sequence[tuple[str, str]], fmt: str,
           title: str | None) -> str:
    header = ["policy", "category", *(name for name, _ in columns)]
    body = [[label, category, *(table_cell(m, attr) for _, attr in columns)] for label, category, m in rows]
    if fmt == "markdown":
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---", "---"] + ["---:"] * len(columns)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    out = [title] if title else []
    out += [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row in body:
        shown = list(row)
        if row[0] == previous:
            shown[0] = ""
        previous = row[0]
        out.append(line(shown))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# The evaluation: runner -> recorder and metrics
# --------------------------------------------------------------------------------------------


def evaluate(env: str | EnvFactory | Callable[[], gym.Env] = "MMSearch-v0", policy: Policy | str = "rag", *,
             episodes: int | None = None, workers: int = 1, seed: int = 0,
             trajectories: str | Path | TrajectoryWriter | None = None, progress: bool = True,
             batch_size: int = DEFAULT_BATCH_SIZE, embed_images: bool = False,
             policy_kwargs: Mapping[str, Any] | None = None, mp_context: str = "spawn",
             executor: str = "local", ray_address: str | None = None, **env_kwargs: Any) -> EvalReport:
    """Play ``episodes`` episodes of ``env`` with ``policy`` and build the papers' table.

    Args:
        env: a registered env id (overrides in ``env_kwargs``, e.g. ``dialect=``, ``tasks=``), an
            :class:`~mmsearch_gym.env_factory.EnvFactory`, or a factory returning an env whose
            ``unwrapped`` is an MMSearchEnv (picklable when ``workers > 1``: a module-level
            function or a ``functools.partial``).
        policy: a Policy, or a spec for :func:`mmsearch_gym.policies.make_policy` (built with the
            env's tasks, dialect and ``seed``; ``policy_kwargs`` go to it).
        episodes: how many episodes; episode ``i`` plays ``task_index=i`` with reset seed
            ``seed + i``. Default: every task of the env.
        workers: env worker processes (1: everything in this process). The numbers do not
            depend on it.
        batch_size: how many episodes run at once (and reach ``policy.act`` together).
        trajectories: a path (appended to) or a TrajectoryWriter; one JSON line per episode.
        embed_images: store a PNG thumbnail of each task image and the result thumbnails in
            the trajectories (for self-contained HTML reports).
        mp_context: multiprocessing start method of the workers (``spawn`` is safe with threads
            and with models loaded in this process). As with any spawned process, a script that
            calls ``evaluate(workers > 1)`` must do so under ``if __name__ == "__main__":``.
        executor: ``"local"`` (this process or ``workers`` processes) or ``"ray"``: ``workers``
            Ray actors step the envs, the policy stays here; the numbers do not depend on it.
        ray_address: the Ray cluster for ``executor="ray"`` (``"auto"``, ``"HOST:6379"``,
            ``"ray://HOST:10001"``); default: the Ray this process joined, a cluster started on this
            machine, or a private local one.
    """
    from tqdm import tqdm

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    factory = EnvFactory.create(env, env_kwargs)
    pool = _executor(executor, ray_address)
    started = time.perf_counter()
    results: list[EpisodeResult] = []
    with contextlib.ExitStack() as cleanup:  # closes the bar, the writer and the runner's envs and workers
        runner = cleanup.enter_context(EpisodeRunner(factory, workers=workers, batch_size=batch_size,
                                                     mp_context=mp_context, executor=pool))
        base = runner.env
        tasks = runner.task_indices(episodes)
        policy, policy_label = _policy(policy, base, seed, policy_kwargs)
        writer, recorder = None, None
        if trajectories is not None:
            writer = trajectories if isinstance(trajectories, TrajectoryWriter) else \
                cleanup.enter_context(TrajectoryWriter(trajectories))
            recorder = TrajectoryRecorder(tasks=base.tasks, policy=policy_label, env=factory.describe(base),
                                          embed_images=embed_images)
        bar = cleanup.enter_context(tqdm(total=len(tasks), desc=f"{policy_label} on {factory.label}", unit="ep",
                                         disable=not progress, file=sys.stderr, dynamic_ncols=True))
        for event in cleanup.enter_context(contextlib.closing(runner.run(policy, tasks, seed=seed))):
            record = recorder.record(event) if recorder is not None else None
            if record is not None:
                writer.write(record)  # type: ignore[union-attr]
            if isinstance(event, EpisodeEnd):
                results.append(event.result)
                bar.update(1)
    extra = {}
    if "tasks" in factory.kwargs and isinstance(factory.kwargs["tasks"], str):
        extra["tasks"] = factory.kwargs["tasks"]
    return EvalReport(results, env=factory.label, policy=policy_label, seed=seed, dialect=base.dialect.name,
                      reward_spec=base.reward_spec.describe(), wall_s=time.perf_counter() - started, extra=extra)


def _executor(executor: str, ray_address: str | None) -> Executor | None:
    """The runner's executor for ``executor="local"|"ray"`` (None: the runner's own processes)."""
    if executor == "ray":
        from mmsearch_gym.ray_runner import RayExecutor, import_ray

        import_ray()  # fail before any env is built when Ray is missing
        return RayExecutor(ray_address)
    if executor != "local":
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if ray_address is not None:
        raise ConfigError("ray_address goes with executor='ray'")
    return None


def _policy(policy: Policy | str, base: MMSearchEnv, seed: int,
            policy_kwargs: Mapping[str, Any] | None) -> tuple[Policy, str]:
    """The policy (built from its spec with the env's tasks, dialect and the seed) and its label."""
    if not isinstance(policy, str):
        return policy, str(getattr(policy, "name", type(policy).__name__))
    clash = sorted({"seed", "tasks", "dialect"} & set(policy_kwargs or {}))
    if clash:
        raise ConfigError(f"policy option(s) {clash} come from the evaluation itself "
                          "(seed=, the env's tasks and dialect), not from policy_kwargs")
    return make_policy(policy, tasks=base.tasks, dialect=base.dialect, seed=seed, **dict(policy_kwargs or {})), policy
