"""Env work on Ray actors: the :class:`~mmsearch_gym.runner.EpisodeRunner`'s pool on a cluster.

    from mmsearch_gym.ray_runner import RayExecutor
    EpisodeRunner(factory, workers=8, executor=RayExecutor("auto"))   # or evaluate(..., executor="ray")

Each actor holds the envs of its schedule slots, built from the same
:class:`~mmsearch_gym.env_factory.EnvFactory` the local process pool uses, and runs the very
same slot code (reset, step, timing, sending only new chat messages). The policy stays in the
driver: the runner batches ``policy.act`` over every live episode as it does with processes, then
sends each actor the steps of its slots, all actors at once. The schedule never depends on where
envs step, so a Ray run yields exactly the events of a serial one.

Accounting (live calls and service cache hits, ``eval --json``) is counted in each actor and added
to the driver's ledger when the pool closes, so it matches a serial run too.

Replies travel through Ray's own serialisation; arrays that arrive as read-only views into
Ray's object store are copied, so the driver gets the same writable objects a local run gives.
An exception inside an actor comes back as the same typed mmsearch_gym error (a ``CacheMiss`` stays a ``CacheMiss``),
anything else as an :class:`~mmsearch_gym.errors.MMSearchError` with the actor's traceback.

Ray is the optional extra ``ray`` (``pip install 'mmsearch-gym[ray]'``); it is imported only here,
inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmsearch_gym.env_factory import EnvFactory
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.runner import _portable_error, _Slots, gather_replies, worker_batches
from mmsearch_gym.services.accounting import LEDGER

__all__ = ["RayExecutor", "RayPool", "import_ray"]


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(f"executor 'ray' (--ray) needs Ray, which is not installed ({err}); "
                          "install it with: pip install 'mmsearch-gym[ray]'") from None
    return ray


class _EnvActor:
    """One Ray actor: the envs of the slots ``s`` with ``s % workers == its index``."""

    def __init__(self, factory: EnvFactory) -> None:
        LEDGER.reset()  # this actor's live calls and service cache hits, handed back by close()
        self.slots = _Slots(factory)

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> tuple[str, Any]:
        """Run a batch of slot commands; ``("ok", replies)`` or ``("error", portable error)``."""
        try:
            return "ok", [self.slots.execute(c) for c in commands]
        except BaseException as err:  # report every failure to the driver, then keep serving
            return "error", _portable_error(err)

    def close(self) -> dict[str, dict[str, int]]:
        """Close the envs; the actor's accounting counts (they go into the driver's ledger)."""
        self.slots.close()
        counts = LEDGER.snapshot()
        LEDGER.reset()
        return counts


class RayExecutor:
    """Where a runner's envs step: ``workers`` Ray actors (pass as ``EpisodeRunner(executor=...)``).

    Args:
        address: the Ray cluster (``"auto"``, ``"ray://HOST:10001"``, ``"HOST:6379"``); ``None``
            uses the Ray instance this process already joined, else joins a cluster started on this
            machine with ``ray start`` or starts a private local one (shut down again at the end).
        num_cpus: CPUs each actor reserves (env work is CPU work: search, reading, judging).
    """

    def __init__(self, address: str | None = None, *, num_cpus: float = 1) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(f"ray address must be a non-empty string (e.g. 'auto' or 'HOST:6379'), got {address!r}")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int | float) or num_cpus < 0:
            raise ConfigError(f"num_cpus per Ray actor must be a number >= 0, got {num_cpus!r}")
        self.address = address
        self.num_cpus = num_cpus

    def __call__(self, factory: EnvFactory, workers: int) -> RayPool:
        return RayPool(factory, workers, address=self.address, num_cpus=self.num_cpus)


class RayPool:
    """Slot ``s`` lives in actor ``s % workers``; each batch goes out to all actors at once."""

    def __init__(self, factory: EnvFactory, workers: int, *, address: str | None = None,
                 num_cpus: float = 1) -> None:
        ray = import_ray()
        self.workers = workers
        self.actors: list[Any] = []
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except Exception as err:  # unreachable address, no cluster at 'auto', ...
                raise ConfigError(f"cannot join the Ray cluster {address or '(local)'}: {err}") from None
            self._started = True
        try:
            self._check_cpus(ray, workers * num_cpus)
            actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(_EnvActor)
            for _ in range(workers):
                self.actors.append(actor_cls.remote(factory))
        except ConfigError:
            self.close()
            raise
        except Exception as err:  # the factory cannot be serialised, ...
            self.close()
            raise ConfigError(f"cannot start {workers} Ray env actor(s) for {factory.label}: {err}") from None

    @staticmethod
    def _check_cpus(ray: Any, needed: float) -> None:
        """Fail now, not hang, when the cluster can never place the actors."""
        total = ray.cluster_resources().get("CPU", 0)
        if needed > total:
            raise ConfigError(f"{needed:g} CPU(s) needed for the Ray env actors, but the cluster has {total:g}; "
                              "use fewer workers or add nodes")

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        batches = worker_batches(commands, self.workers)
        pending = {worker: self.actors[worker].execute.remote([commands[p] for p in positions])
                   for worker, positions in batches.items()}  # every actor works at once
        return gather_replies(len(commands), ((positions, self._receive(worker, pending[worker]))
                                              for worker, positions in batches.items()))

    @staticmethod
    def _receive(worker: int, ref: Any) -> tuple[str, Any]:
        ray = import_ray()
        try:
            return _writable(ray.get(ref))
        except ray.exceptions.RayActorError as err:
            raise MMSearchError(f"Ray env actor {worker} died ({_first_line(err)}); run with executor='local' "
                                "to see the error") from None
        except ray.exceptions.RayError as err:  # e.g. a reply that cannot be serialised
            raise MMSearchError(f"Ray env actor {worker} failed: {_first_line(err)}") from None

    def close(self) -> None:
        """Close every actor's envs, add their accounting counts to this process's ledger (as the
        process pool's workers do through ``$MMSEARCH_GYM_LEDGER``), end the actors, and shut Ray
        down if this pool started it."""
        import ray

        if self.actors:
            closing = [actor.close.remote() for actor in self.actors]
            ray.wait(closing, num_returns=len(closing), timeout=60)
            for ref in closing:
                try:
                    counts = ray.get(ref, timeout=0)
                except Exception:  # a dead or stuck actor has nothing left to report
                    continue
                for name, fields in counts.items():
                    for field, n in fields.items():
                        if n:
                            LEDGER.add(name, field, n)
            for actor in self.actors:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
            self.actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _writable(value: Any) -> Any:
    """``value`` with every read-only numpy array (a zero-copy view into Ray's object store)
    copied, so what a Ray run hands the policy is as writable as a local run's."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, dict):
        return {k: _writable(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_writable(v) for v in value)
    return value
