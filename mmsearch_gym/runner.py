"""EpisodeRunner: plays episodes of one EnvFactory with one Policy and yields what happened.

Episode ``i`` plays task index ``tasks[i]`` (``i`` by default) with reset seed ``seed + i``. The
runner keeps up to ``batch_size`` episodes live, asks the policy for the next action of all of
them in one batched ``policy.act`` call, and steps the envs in this process (``workers=1``), in
``workers`` worker processes, or wherever an ``executor`` puts them (Ray actors:
:class:`mmsearch_gym.ray_runner.RayExecutor`). The schedule (which episodes are live together, in
which order they reach the policy) depends only on ``batch_size`` and on how episodes end, never on
``workers`` or the executor; with a deterministic policy a parallel run yields exactly the events of a serial one.

Workers never receive Task objects (the built-in world's tasks hold render closures): each
rebuilds its envs from the factory and is told only task indices, seeds and action texts; it
sends back only the chat messages added since its previous answer.

Events, in order: a :class:`StepEvent` per env step, then, for the step that ended an episode,
an :class:`EpisodeEnd` carrying its :class:`~mmsearch_gym.metrics.EpisodeResult`. Consumers are
the trajectory recorder (:class:`mmsearch_gym.trajectories.TrajectoryRecorder`), the metrics
(:meth:`mmsearch_gym.metrics.Metrics.of` over the results) and progress bars.
"""

from __future__ import annotations

import heapq
import importlib
import multiprocessing
import multiprocessing.connection
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mmsearch_gym.env_factory import EnvFactory, SiblingEnvs, describe_env, unwrap_env
from mmsearch_gym.episode_view import EpisodeView
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.metrics import EpisodeResult

if TYPE_CHECKING:
    import gymnasium as gym

    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.policies import Policy

__all__ = ["DEFAULT_BATCH_SIZE", "EnvPool", "EpisodeEnd", "EpisodeRunner", "Executor", "RunnerEvent", "StepEvent"]

DEFAULT_BATCH_SIZE = 32


class EnvPool(Protocol):
    """Where the envs of the schedule slots live: runs batches of slot commands, in order."""

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


Executor = Callable[[EnvFactory, int], EnvPool]
"""Builds the pool for ``(factory, workers)``; e.g. :class:`mmsearch_gym.ray_runner.RayExecutor`."""


@dataclass(frozen=True)
class StepEvent:
    """One env step of one episode."""

    episode: int
    task_index: int
    turn: int
    """1-based number of this turn in its episode."""
    text: str
    """The action text the policy emitted."""
    observation: Mapping[str, Any]
    reward: float
    terminated: bool
    truncated: bool
    info: Mapping[str, Any]
    """The env's info; ``messages`` is the whole chat so far."""
    policy_s: float
    """This episode's share of the batched ``policy.act`` call (seconds)."""
    env_s: float
    """Seconds inside ``env.step``."""


@dataclass(frozen=True)
class EpisodeEnd:
    """An episode ended (after its last StepEvent)."""

    episode: int
    task_index: int
    seed: int
    view: EpisodeView
    """The episode as the policy saw it: question, original image, every Step."""
    info: Mapping[str, Any]
    """The info of the step that ended it (``reward_breakdown`` included)."""
    reset_s: float
    """Seconds inside ``env.reset``."""
    result: EpisodeResult


RunnerEvent = StepEvent | EpisodeEnd


@dataclass
class _Live:
    """One running episode in the main process."""

    episode: int
    slot: int
    task_index: int
    seed: int
    view: EpisodeView
    messages: list[dict[str, Any]]
    reset_s: float = 0.0


class EpisodeRunner:
    """Plays episodes of ``factory``; use as a context manager (closes its envs and workers).

    Args:
        factory: the env recipe (an :class:`EnvFactory`, an env id, a description or a callable).
        workers: env worker processes (1: everything in this process).
        batch_size: how many episodes run at once (and reach ``policy.act`` together).
        mp_context: start method of the workers (``spawn`` is safe with threads and loaded models).
        first_env: an env of this factory already built (used as the first slot's env).
        executor: where the envs step instead of this process or local workers: a callable
            ``(factory, workers) -> pool`` such as :class:`mmsearch_gym.ray_runner.RayExecutor`
            (used for any ``workers``, 1 included). The events do not depend on it.
    """

    def __init__(self, factory: EnvFactory | str | Any, *, workers: int = 1,
                 batch_size: int = DEFAULT_BATCH_SIZE, mp_context: str = "spawn",
                 first_env: gym.Env | None = None, executor: Executor | None = None) -> None:
        for name, value in (("workers", workers), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        self.factory = EnvFactory.create(factory)
        self.workers = workers
        self.batch_size = batch_size
        self.mp_context = mp_context
        if executor is not None and not callable(executor):
            raise ConfigError(f"executor must be a callable (factory, workers) -> pool, got {executor!r}")
        self.executor = executor
        self._first: gym.Env | None = first_env if first_env is not None else self.factory.build()
        self.env: MMSearchEnv = unwrap_env(self._first)
        """The first env (its tasks and dialect are every sibling's)."""

    def run(self, policy: Policy, episodes: int | Sequence[int] | None = None, *,
            seed: int = 0) -> Generator[RunnerEvent, None, None]:
        """Play the episodes (a count, or the task index of each; default every task) and yield events."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        tasks = self.task_indices(episodes)
        pool = self._pool(min(self.batch_size, len(tasks)))
        try:
            yield from self._schedule(policy, pool, tasks, seed)
        finally:
            pool.close()

    def close(self) -> None:
        if self._first is not None:
            self._first.close()
            self._first = None

    def __enter__(self) -> EpisodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def task_indices(self, episodes: int | Sequence[int] | None = None) -> list[int]:
        """The task index of each episode: ``range(n)`` for a count, the list itself, or every task."""
        size = len(self.env.tasks)
        if episodes is None:
            return list(range(size))
        if isinstance(episodes, int) and not isinstance(episodes, bool):
            if not 1 <= episodes <= size:
                raise ConfigError(f"episodes must be between 1 and the {size} tasks of {self.factory.label}, "
                                  f"got {episodes!r}")
            return list(range(episodes))
        if isinstance(episodes, Sequence) and episodes and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in episodes):
            return list(episodes)
        raise ConfigError(f"episodes must be between 1 and the {size} tasks of {self.factory.label} "
                          f"(or a list of task indices), got {episodes!r}")

    # ------------------------------------------------------------------ internals --------
    def _pool(self, slots: int) -> EnvPool:
        if self.executor is not None:
            self.close()  # the executor's workers build their own envs
            return self.executor(self.factory, min(self.workers, slots))
        if self.workers == 1:
            first, self._first = self._first, None
            return _LocalPool(self.factory, first)
        self.close()  # the workers build their own envs; this one only told us tasks and dialect
        return _ProcessPool(self.factory, min(self.workers, slots), self.mp_context)

    def _schedule(self, policy: Policy, pool: EnvPool, tasks: list[int],
                  seed: int) -> Iterator[RunnerEvent]:
        free = list(range(min(self.batch_size, len(tasks))))
        heapq.heapify(free)
        live: dict[int, _Live] = {}
        next_episode = 0
        while next_episode < len(tasks) or live:
            admitted: list[tuple[int, int]] = []
            while free and next_episode < len(tasks):
                admitted.append((heapq.heappop(free), next_episode))
                next_episode += 1
            if admitted:
                replies = pool.run([("reset", slot, tasks[i], seed + i) for slot, i in admitted])
                for (slot, i), (obs, info, env_s) in zip(admitted, replies, strict=True):
                    view = EpisodeView.start(obs, info, dialect=self.env.dialect)
                    live[i] = _Live(i, slot, tasks[i], seed + i, view, list(info["messages"]), reset_s=env_s)
            order = [live[i] for i in sorted(live)]
            texts, policy_s = _act(policy, order)
            replies = pool.run([("step", item.slot, text) for item, text in zip(order, texts, strict=True)])
            for item, text, reply in zip(order, texts, replies, strict=True):
                obs, reward, terminated, truncated, info, env_s = reply
                item.messages.extend(info["messages"])
                info["messages"] = list(item.messages)
                item.view.record(text, obs, info)
                yield StepEvent(item.episode, item.task_index, len(item.view.steps), text, obs, reward,
                                terminated, truncated, info, policy_s, env_s)
                if terminated or truncated:
                    del live[item.episode]
                    heapq.heappush(free, item.slot)
                    result = EpisodeResult.from_info(info, episode=item.episode)
                    yield EpisodeEnd(item.episode, item.task_index, item.seed, item.view, info, item.reset_s, result)


def _act(policy: Policy, order: Sequence[_Live]) -> tuple[list[str], float]:
    """The policy's texts for the live episodes, and each episode's share of the call's seconds."""
    start = time.perf_counter()
    texts = policy.act([item.view for item in order])
    policy_s = (time.perf_counter() - start) / len(order)
    if not isinstance(texts, list) or len(texts) != len(order):
        got = len(texts) if isinstance(texts, list) else repr(texts)
        name = getattr(policy, "name", type(policy).__name__)
        raise ConfigError(f"policy {name!r} returned {got} actions for {len(order)} episodes; "
                          "act() must return one string per episode")
    return texts, policy_s


# --------------------------------------------------------------------------------------------
# Where envs step: this process, or worker processes
# --------------------------------------------------------------------------------------------


class _Slots:
    """The envs of one process, one per schedule slot; runs commands on them and times them."""

    def __init__(self, factory: EnvFactory, first: gym.Env | None = None) -> None:
        self.envs = SiblingEnvs(factory, first)
        self._sent: dict[int, int] = {}

    def execute(self, command: tuple[Any, ...]) -> tuple[Any, ...]:
        """Run one ``("reset", slot, task, seed)`` (``task``: an index, or a task id string),
        ``("step", slot, text)``, ``("score", slot)`` (the env's reward for an episode cut short
        here) or ``("describe", slot)`` (:func:`describe_env`); time the first three.

        ``info["messages"]`` is cut down to the messages added since the previous call for this
        slot (the caller keeps the full chat), so a worker sends each image only once.
        """
        kind, slot = command[0], command[1]
        env = self.envs.get(slot)
        if kind == "describe":
            return (describe_env(unwrap_env(env)),)
        start = time.perf_counter()
        if kind == "reset":
            task = command[2]
            options = {"task_id": task} if isinstance(task, str) else {"task_index": task}
            obs, info = env.reset(seed=command[3], options=options)
            elapsed = time.perf_counter() - start
            self._sent[slot] = len(info["messages"])
            return obs, info, elapsed
        if kind == "score":
            breakdown = unwrap_env(env).score()
            return breakdown, time.perf_counter() - start
        obs, reward, terminated, truncated, info = env.step(command[2])
        elapsed = time.perf_counter() - start
        messages = info["messages"]
        info = dict(info)
        info["messages"] = messages[self._sent.get(slot, 0):]
        self._sent[slot] = len(messages)
        return obs, float(reward), bool(terminated), bool(truncated), info, elapsed

    def close(self) -> None:
        self.envs.close()


class _LocalPool:
    """All slots in this process (``workers=1``)."""

    def __init__(self, factory: EnvFactory, first: gym.Env | None) -> None:
        self.slots = _Slots(factory, first)

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [self.slots.execute(c) for c in commands]

    def close(self) -> None:
        self.slots.close()


def _worker_main(conn: multiprocessing.connection.Connection, factory: EnvFactory) -> None:
    """Entry point of an env worker process: execute batches of commands until told to stop."""
    slots = _Slots(factory)
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


def worker_batches(commands: Sequence[tuple[Any, ...]], workers: int) -> dict[int, list[int]]:
    """The positions of ``commands`` each worker runs (slot ``s`` lives on worker ``s % workers``),
    for the workers that have any, in worker order."""
    batches: dict[int, list[int]] = {}
    for position, command in enumerate(commands):
        batches.setdefault(command[1] % workers, []).append(position)
    return dict(sorted(batches.items()))


def gather_replies(n: int, replies: Iterable[tuple[list[int], tuple[str, Any]]]) -> list[Any]:
    """Put each worker's ``("ok", results)`` back at its commands' positions; after reading every
    reply, raise the first ``("error", portable error)`` as the exception it was."""
    out: list[Any] = [None] * n
    failure: BaseException | None = None
    for positions, (status, payload) in replies:
        if status == "error":
            failure = failure or _rebuild_error(payload)
            continue
        for position, result in zip(positions, payload, strict=True):
            out[position] = result
    if failure is not None:
        raise failure
    return out


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

    def __init__(self, factory: EnvFactory, workers: int, context: str) -> None:
        ctx: Any = multiprocessing.get_context(context)
        self.workers = workers
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for index in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, factory), daemon=True,
                               name=f"mmsearch-env-worker-{index}")
            try:
                proc.start()  # sends the factory to the new process: fails here if it cannot travel
            except Exception as err:
                parent.close()
                child.close()
                self.close()
                raise ConfigError(f"workers > 1 needs an env id or a picklable factory (a module-level "
                                  f"function or functools.partial), not {factory.label}: {err}") from None
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        batches = worker_batches(commands, self.workers)
        for worker, positions in batches.items():
            self.conns[worker].send([commands[p] for p in positions])
        return gather_replies(len(commands), ((positions, self._receive(worker))
                                              for worker, positions in batches.items()))

    def _receive(self, worker: int) -> tuple[str, Any]:
        try:
            return self.conns[worker].recv()
        except (EOFError, OSError):
            raise MMSearchError(f"env worker {worker} died (exit code {self.procs[worker].exitcode}); "
                                "run with workers=1 to see the error") from None

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
