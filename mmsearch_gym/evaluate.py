"""The papers' evaluation table: accuracy, search ratio, calls per tool, format rate, reward.

``evaluate(env, policy)`` plays episode ``i`` on ``task_index=i`` with reset seed ``seed + i``
(all tasks by default), asking the policy for the next action of every live episode in one
batched ``policy.act`` call, and steps the envs in ``workers`` worker processes. The schedule
(which episodes are live together, in which order they reach the policy) depends only on
``batch_size`` and on how episodes end, never on ``workers``; with deterministic policies a
parallel run therefore gives exactly the numbers (and trajectories) of a serial one.

Workers never receive Task objects (the built-in world's tasks hold render closures): each
worker rebuilds its envs from the env id and its JSON overrides (or from a picklable factory)
and is told only task indices, seeds and action texts.

Metrics, per episode then averaged (overall and per task category):

* accuracy: share of episodes whose answer is correct (``raw_score > 0.5`` in the reward
  breakdown, i.e. before the search penalty);
* search ratio: share of episodes in which the env ran at least one search;
* calls per episode: image searches and text searches the env ran;
* format rate: share of episodes whose turns follow the dialect's format rule;
* mean reward: the papers' episode reward.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import importlib
import math
import multiprocessing
import multiprocessing.connection
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.reward import RewardBreakdown

if TYPE_CHECKING:
    import gymnasium as gym

    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.policies import EpisodeView, Policy
    from mmsearch_gym.trajectories import Trajectory, TrajectoryWriter

__all__ = ["EnvRecipe", "EpisodeResult", "EvalReport", "Metrics", "evaluate", "format_reports"]

EnvFactory = Callable[[], "gym.Env"]
DEFAULT_BATCH_SIZE = 32


# --------------------------------------------------------------------------------------------
# Results and metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeResult:
    """What the table needs from one finished episode."""

    episode: int
    task_id: str
    category: str
    reward: RewardBreakdown
    image_searches: int
    text_searches: int
    turns: int

    @property
    def correct(self) -> bool:
        return self.reward.raw_score > 0.5

    @property
    def searched(self) -> bool:
        return self.image_searches + self.text_searches > 0

    @classmethod
    def from_trajectory(cls, traj: "Trajectory", reward: RewardBreakdown | None = None) -> "EpisodeResult":
        """The result of a recorded episode (optionally re-scored with another breakdown)."""
        return cls(episode=traj.episode, task_id=traj.task_id, category=traj.category,
                   reward=reward if reward is not None else traj.reward,
                   image_searches=traj.image_searches, text_searches=traj.text_searches, turns=len(traj.turns))

    def to_json(self) -> dict[str, Any]:
        return {"episode": self.episode, "task_id": self.task_id, "category": self.category,
                "correct": self.correct, "reward": self.reward.reward, "format": self.reward.format,
                "answer": self.reward.answer, "image_searches": self.image_searches,
                "text_searches": self.text_searches, "turns": self.turns}


@dataclass(frozen=True)
class Metrics:
    """The table's numbers over a group of episodes (shares in [0, 1])."""

    episodes: int
    accuracy: float
    search_ratio: float
    mean_reward: float
    format_rate: float
    image_calls: float
    """Image searches per episode."""
    text_calls: float
    """Text searches per episode."""
    mean_turns: float

    @classmethod
    def of(cls, results: Sequence[EpisodeResult]) -> "Metrics":
        n = len(results)
        if n == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

        def mean(values: Iterable[float]) -> float:
            return math.fsum(values) / n  # exact sum: the same numbers whatever the order

        return cls(episodes=n,
                   accuracy=mean(float(r.correct) for r in results),
                   search_ratio=mean(float(r.searched) for r in results),
                   mean_reward=mean(r.reward.reward for r in results),
                   format_rate=mean(r.reward.format for r in results),
                   image_calls=mean(r.image_searches for r in results),
                   text_calls=mean(r.text_searches for r in results),
                   mean_turns=mean(r.turns for r in results))

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "accuracy": self.accuracy, "search_ratio": self.search_ratio,
                "mean_reward": self.mean_reward, "format_rate": self.format_rate,
                "calls_per_episode": {"image_search": self.image_calls, "text_search": self.text_calls},
                "mean_turns": self.mean_turns}


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

    def to_text(self) -> str:
        """The table as aligned plain text (what ``mmsearch-gym eval`` prints)."""
        return format_reports({self.policy: self}, "text", title=self._title())

    def to_markdown(self) -> str:
        return format_reports({self.policy: self}, "markdown", title=self._title())

    def _title(self) -> str:
        tasks = f" ({self.extra['tasks']})" if self.extra.get("tasks") else ""
        return f"{self.env}{tasks} · policy {self.policy} · {len(self.results)} episodes · seed {self.seed}"

    def save_json(self, path: str | Path, *, include_episodes: bool = False) -> None:
        import json

        _write(path, json.dumps(self.to_json(include_episodes=include_episodes), indent=2, sort_keys=True,
                                ensure_ascii=False, allow_nan=False) + "\n")

    def save_markdown(self, path: str | Path) -> None:
        _write(path, self.to_markdown())

    @classmethod
    def from_trajectories(cls, trajectories: Sequence["Trajectory"], *,
                          rewards: Sequence[RewardBreakdown] | None = None,
                          reward_spec: dict[str, Any] | None = None) -> "EvalReport":
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


def _cell(metrics: Metrics, attr: str) -> str:
    value = getattr(metrics, attr)
    if attr == "episodes":
        return str(value)
    if attr in ("accuracy", "search_ratio", "format_rate"):
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


def format_reports(reports: Mapping[str, EvalReport], fmt: str = "text", *, title: str | None = None) -> str:
    """One table for several reports (one row per report and category): ``text`` or ``markdown``.

    Percentages are shares of episodes; img/ep and txt/ep are search calls per episode.
    """
    if fmt not in ("text", "markdown"):
        raise ConfigError(f"table format must be 'text' or 'markdown', got {fmt!r}")
    header = ["policy", "category", *(name for name, _ in _COLUMNS)]
    body = [[label, category, *(_cell(m, attr) for _, attr in _COLUMNS)]
            for label, category, m in table_rows(reports)]
    if fmt == "markdown":
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---", "---"] + ["---:"] * len(_COLUMNS)) + " |")
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
# Building envs anywhere
# --------------------------------------------------------------------------------------------


@dataclass
class EnvRecipe:
    """How to build the same env in any process: a registered id plus overrides, or a factory.

    A recipe is picklable when its overrides and factory are (an id with JSON overrides always
    is), which is what worker processes need.
    """

    env_id: str | None
    factory: EnvFactory | None
    kwargs: dict[str, Any]

    @classmethod
    def create(cls, env: "str | EnvFactory | EnvRecipe", kwargs: Mapping[str, Any] | None = None) -> "EnvRecipe":
        kwargs = dict(kwargs or {})
        if isinstance(env, EnvRecipe):
            return cls(env.env_id, env.factory, {**env.kwargs, **kwargs})
        if isinstance(env, str):
            import gymnasium as gym

            import mmsearch_gym  # noqa: F401  (registers the shipped ids)

            try:
                gym.spec(env)
            except gym.error.Error as err:
                raise ConfigError(f"unknown env id {env!r} ({err}); registered mmsearch ids: "
                                  f"{sorted(i for i in gym.registry if i.startswith('MMSearch'))}") from None
            return cls(env, None, kwargs)
        if callable(env):
            if kwargs:
                raise ConfigError("env overrides go with an env id; bake them into the factory instead")
            return cls(None, env, {})
        raise ConfigError(f"env must be an env id or a factory returning an env, got {type(env).__name__}")

    @property
    def label(self) -> str:
        if self.env_id is not None:
            return self.env_id
        name = getattr(self.factory, "__name__", None) or getattr(getattr(self.factory, "func", None),
                                                                   "__name__", "factory")
        return f"<{name}>"

    def build(self, **shared: Any) -> "gym.Env":
        """A new env; ``shared`` are objects (tasks, backend, grounder) reused from a sibling env."""
        if self.factory is not None:
            if shared:
                return self.factory(**shared)  # type: ignore[call-arg]
            return self.factory()
        import gymnasium as gym

        import mmsearch_gym  # noqa: F401

        try:
            kwargs = {**self.kwargs, **shared}
            return gym.make(self.env_id, disable_env_checker=True, **kwargs)  # type: ignore[arg-type]
        except TypeError as err:
            raise ConfigError(f"cannot build {self.env_id} with {sorted(self.kwargs)}: {err}") from None

    def shares_objects(self) -> bool:
        """Whether sibling envs can reuse one task set, backend and grounder (our make_env does)."""
        from mmsearch_gym.registration import ENTRY_POINT, make_env

        if self.factory is not None:
            return isinstance(self.factory, functools.partial) and self.factory.func is make_env
        import gymnasium as gym

        entry = gym.spec(self.env_id).entry_point  # type: ignore[arg-type]
        return entry == ENTRY_POINT or entry is make_env or (
            isinstance(entry, functools.partial) and entry.func is make_env)


class _EnvSlots:
    """The envs of one process, one per schedule slot, built on first use.

    Sibling envs share the first env's task set, search backend and grounder (rebuilding the
    world's indexes per slot would cost seconds and memory for nothing).
    """

    def __init__(self, recipe: EnvRecipe, first: "gym.Env | None" = None) -> None:
        self.recipe = recipe
        self.envs: dict[int, gym.Env] = {}
        self._first = first
        self._shared: dict[str, Any] | None = None
        self._sent: dict[int, int] = {}

    def env(self, slot: int) -> "gym.Env":
        env = self.envs.get(slot)
        if env is None:
            if self._first is not None:
                env, self._first = self._first, None
            elif self._shared is not None:
                env = self.recipe.build(**self._shared)
            else:
                env = self.recipe.build()
            if self._shared is None and self.recipe.shares_objects():
                base = _unwrap(env)
                self._shared = {"tasks": base.tasks, "backend": base.backend, "grounder": base.grounder,
                                "cache": None}
            self.envs[slot] = env
        return env

    def execute(self, command: tuple[Any, ...]) -> tuple[Any, ...]:
        """Run one ``("reset", slot, index, seed)`` or ``("step", slot, text)``; time it.

        ``info["messages"]`` is cut down to the messages added since the previous call for this
        slot (the caller keeps the full chat), so a worker sends each image only once.
        """
        kind, slot = command[0], command[1]
        env = self.env(slot)
        start = time.perf_counter()
        if kind == "reset":
            obs, info = env.reset(seed=command[3], options={"task_index": command[2]})
            elapsed = time.perf_counter() - start
            self._sent[slot] = len(info["messages"])
            return obs, info, elapsed
        obs, reward, terminated, truncated, info = env.step(command[2])
        elapsed = time.perf_counter() - start
        messages = info["messages"]
        info = dict(info)
        info["messages"] = messages[self._sent.get(slot, 0):]
        self._sent[slot] = len(messages)
        return obs, float(reward), bool(terminated), bool(truncated), info, elapsed

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def _unwrap(env: "gym.Env") -> "MMSearchEnv":
    from mmsearch_gym.env import MMSearchEnv

    base = env.unwrapped
    if not isinstance(base, MMSearchEnv):
        raise ConfigError(f"evaluate needs an MMSearchEnv (possibly wrapped), got {type(base).__name__}")
    return base


class _LocalPool:
    """All slots in this process (``workers=1``)."""

    def __init__(self, recipe: EnvRecipe, first: "gym.Env") -> None:
        self.slots = _EnvSlots(recipe, first)

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [self.slots.execute(c) for c in commands]

    def close(self) -> None:
        self.slots.close()


def _worker_main(conn: multiprocessing.connection.Connection, recipe: EnvRecipe) -> None:
    """Entry point of an env worker process: execute batches of commands until told to stop."""
    slots = _EnvSlots(recipe)
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            try:
                conn.send(("ok", [slots.execute(c) for c in message]))
            except BaseException as err:  # report every failure to the parent, then keep serving
                conn.send(("error", _portable_error(err)))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        slots.close()
        conn.close()


def _portable_error(err: BaseException) -> dict[str, str]:
    """A worker's exception as plain strings: its class's import path, message and traceback."""
    return {"module": type(err).__module__, "qualname": type(err).__qualname__, "message": str(err),
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))}


def _rebuild_error(error: Mapping[str, str]) -> BaseException:
    """The worker's exception again in the parent: the same type for mmsearch_gym's typed errors
    (a CacheMiss stays a CacheMiss), else an MMSearchError carrying the worker's traceback."""
    try:
        cls: Any = importlib.import_module(error["module"])
        for part in error["qualname"].split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, MMSearchError):
            return cls(error["message"])
    except Exception:  # an unknown or oddly constructed class: fall through to the generic error
        pass
    return MMSearchError(f"an env worker failed:\n{error['traceback']}")


class _ProcessPool:
    """Slot ``s`` lives in worker ``s % workers``; each batch goes out to all workers at once."""

    def __init__(self, recipe: EnvRecipe, workers: int, context: str) -> None:
        ctx = multiprocessing.get_context(context)
        self.workers = workers
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for index in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, recipe), daemon=True,
                               name=f"mmsearch-env-worker-{index}")
            try:
                proc.start()  # sends the recipe to the new process: fails here if it cannot travel
            except Exception as err:
                parent.close()
                child.close()
                self.close()
                raise ConfigError(f"workers > 1 needs an env id or a picklable factory (a module-level "
                                  f"function or functools.partial), not {recipe.label}: {err}") from None
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        batches: list[list[int]] = [[] for _ in range(self.workers)]
        for position, command in enumerate(commands):
            batches[command[1] % self.workers].append(position)
        for worker, positions in enumerate(batches):
            if positions:
                self.conns[worker].send([commands[p] for p in positions])
        out: list[Any] = [None] * len(commands)
        failure: BaseException | None = None
        for worker, positions in enumerate(batches):
            if not positions:
                continue
            try:
                status, payload = self.conns[worker].recv()
            except (EOFError, OSError):
                raise MMSearchError(f"env worker {worker} died (exit code {self.procs[worker].exitcode}); "
                                    "run with workers=1 to see the error") from None
            if status == "error":
                failure = failure or _rebuild_error(payload)
                continue
            for position, result in zip(positions, payload, strict=True):
                out[position] = result
        if failure is not None:
            raise failure
        return out

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()


# --------------------------------------------------------------------------------------------
# The evaluation loop
# --------------------------------------------------------------------------------------------


@dataclass
class _Live:
    """One running episode in the main process."""

    episode: int
    slot: int
    task_index: int
    seed: int
    view: "EpisodeView"
    messages: list[dict[str, Any]]
    reset_s: float = 0.0
    turns: list[Any] = field(default_factory=list)


def evaluate(env: "str | EnvFactory | EnvRecipe" = "MMSearch-v0", policy: "Policy | str" = "rag", *,
             episodes: int | None = None, workers: int = 1, seed: int = 0,
             trajectories: "str | Path | TrajectoryWriter | None" = None, progress: bool = True,
             batch_size: int = DEFAULT_BATCH_SIZE, embed_images: bool = False,
             policy_kwargs: Mapping[str, Any] | None = None, mp_context: str = "spawn",
             **env_kwargs: Any) -> EvalReport:
    """Play ``episodes`` episodes of ``env`` with ``policy`` and build the papers' table.

    Args:
        env: a registered env id (overrides in ``env_kwargs``, e.g. ``dialect=``, ``tasks=``), or a
            factory returning an env whose ``unwrapped`` is an MMSearchEnv (picklable when
            ``workers > 1``: a module-level function or a ``functools.partial``).
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
    """
    from tqdm import tqdm

    from mmsearch_gym.policies import EpisodeView, make_policy
    from mmsearch_gym.trajectories import TrajectoryWriter

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    recipe = EnvRecipe.create(env, env_kwargs)
    started = time.perf_counter()
    results: list[EpisodeResult] = []
    with contextlib.ExitStack() as cleanup:  # closes the bar, the pool, the writer and the probe env
        probe = recipe.build()
        cleanup.callback(probe.close)
        base = _unwrap(probe)
        total = len(base.tasks) if episodes is None else episodes
        if isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= len(base.tasks):
            raise ConfigError(f"episodes must be between 1 and the {len(base.tasks)} tasks of {recipe.label}, "
                              f"got {episodes!r}")
        if isinstance(policy, str):
            policy_label = policy
            clash = sorted({"seed", "tasks", "dialect"} & set(policy_kwargs or {}))
            if clash:
                raise ConfigError(f"policy option(s) {clash} come from the evaluation itself "
                                  "(seed=, the env's tasks and dialect), not from policy_kwargs")
            policy = make_policy(policy, tasks=base.tasks, dialect=base.dialect, seed=seed,
                                 **dict(policy_kwargs or {}))
        else:
            policy_label = str(getattr(policy, "name", type(policy).__name__))
        dialect = base.dialect
        env_block = None
        writer: TrajectoryWriter | None = None
        if trajectories is not None:
            from mmsearch_gym.trajectories import describe_env

            env_block = describe_env(base, env_id=recipe.env_id, kwargs=recipe.kwargs)
            if isinstance(trajectories, TrajectoryWriter):
                writer = trajectories
            else:
                writer = cleanup.enter_context(TrajectoryWriter(trajectories))
        slots_used = min(batch_size, total)
        if workers == 1:
            pool: _LocalPool | _ProcessPool = _LocalPool(recipe, probe)
        else:
            probe.close()
            pool = _ProcessPool(recipe, min(workers, slots_used), mp_context)
        cleanup.callback(pool.close)
        bar = cleanup.enter_context(tqdm(total=total, desc=f"{policy_label} on {recipe.label}", unit="ep",
                                         disable=not progress, file=sys.stderr, dynamic_ncols=True))
        free = list(range(slots_used))
        heapq.heapify(free)
        live: dict[int, _Live] = {}
        next_episode = 0
        while next_episode < total or live:
            admitted: list[tuple[int, int]] = []
            while free and next_episode < total:
                admitted.append((heapq.heappop(free), next_episode))
                next_episode += 1
            if admitted:
                replies = pool.run([("reset", slot, i, seed + i) for slot, i in admitted])
                for (slot, i), (obs, info, env_s) in zip(admitted, replies, strict=True):
                    messages = list(info["messages"])
                    view = EpisodeView.start(obs, info, dialect=dialect)
                    live[i] = _Live(i, slot, i, seed + i, view, messages, reset_s=env_s)
            order = [live[i] for i in sorted(live)]
            start = time.perf_counter()
            texts = policy.act([item.view for item in order])
            policy_s = (time.perf_counter() - start) / len(order)
            if not isinstance(texts, list) or len(texts) != len(order):
                got = len(texts) if isinstance(texts, list) else repr(texts)
                raise ConfigError(f"policy {policy_label!r} returned {got} actions for {len(order)} episodes; "
                                  "act() must return one string per episode")
            replies = pool.run([("step", item.slot, text) for item, text in zip(order, texts, strict=True)])
            for item, text, reply in zip(order, texts, replies, strict=True):
                obs, reward, terminated, truncated, info, env_s = reply
                item.messages.extend(info["messages"])
                info["messages"] = list(item.messages)
                item.view.record(text, obs, info)
                if writer is not None:
                    item.turns.append(_turn_record(text, obs, reward, terminated, truncated, info, policy_s,
                                                   env_s, embed_images))
                if terminated or truncated:
                    del live[item.episode]
                    heapq.heappush(free, item.slot)
                    breakdown: RewardBreakdown = info["reward_breakdown"]
                    results.append(EpisodeResult(episode=item.episode, task_id=item.view.task_id,
                                                 category=str(info["category"]), reward=breakdown,
                                                 image_searches=int(info["image_searches"]),
                                                 text_searches=int(info["text_searches"]),
                                                 turns=len(item.view.steps)))
                    if writer is not None:
                        writer.write(_trajectory(item, base.tasks[item.task_index], info, breakdown,
                                                 policy_label, env_block, embed_images))  # type: ignore[arg-type]
                    bar.update(1)
    extra = {}
    if "tasks" in recipe.kwargs and isinstance(recipe.kwargs["tasks"], str):
        extra["tasks"] = recipe.kwargs["tasks"]
    return EvalReport(results, env=recipe.label, policy=policy_label, seed=seed, dialect=dialect.name,
                      reward_spec=base.reward_spec.describe(), wall_s=time.perf_counter() - started, extra=extra)


def _turn_record(text: str, obs: Mapping[str, Any], reward: float, terminated: bool, truncated: bool,
                 info: Mapping[str, Any], policy_s: float, env_s: float, embed: bool) -> Any:
    from mmsearch_gym.actions import action_to_json
    from mmsearch_gym.trajectories import Turn, hit_record

    box = info.get("box")
    return Turn(text=text, action=action_to_json(info["action"]), observation=str(obs["text"]),
                box=None if box is None else tuple(int(v) for v in box),
                hits=[hit_record(h, embed=embed) for h in info.get("hits") or []],
                search_error=info.get("search_error"), reward=reward, terminated=terminated, truncated=truncated,
                counts={"image_searches": int(info["image_searches"]), "text_searches": int(info["text_searches"]),
                        "invalid_turns": int(info["invalid_turns"])},
                policy_s=policy_s, env_s=env_s)


def _trajectory(item: _Live, task: Any, info: Mapping[str, Any], breakdown: RewardBreakdown, policy: str,
                env_block: dict[str, Any], embed: bool) -> "Trajectory":
    from mmsearch_gym.tasks import image_digest
    from mmsearch_gym.trajectories import ImageRecord, Trajectory, encode_thumbnail

    image = item.view.image
    thumb = size = None
    if embed:
        thumb, size = encode_thumbnail(image)
    record = ImageRecord(digest=image_digest(image), width=image.width, height=image.height, thumbnail=thumb,
                         thumbnail_size=size)
    last = item.turns[-1]
    return Trajectory(episode=item.episode, task_id=item.view.task_id, category=str(info["category"]),
                      question=item.view.question, answers=list(task.answers), seed=item.seed, policy=policy,
                      env=env_block, image=record, turns=item.turns, reward=breakdown,
                      terminated=last.terminated, truncated=last.truncated, task_index=item.task_index,
                      reset_s=item.reset_s)
