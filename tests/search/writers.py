"""Crash tests' writer processes: start them, let them acknowledge entries, SIGKILL them all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path


def kill_writers_when(procs: Sequence[BaseProcess], acks: Sequence[Path], enough: Callable[[list[int]], bool],
                      timeout: float) -> set[str]:
    """Start ``procs``; once ``enough(acknowledged lines per writer)`` (or ``timeout`` seconds, or a
    writer ended), SIGKILL every writer mid-write. Returns the acknowledged lines of all writers."""
    for path in acks:
        path.touch()
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    while (not enough([p.read_text().count("\n") for p in acks]) and time.monotonic() < deadline
           and all(p.is_alive() for p in procs)):
        time.sleep(0.02)
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
    return {line for path in acks for line in path.read_text().split("\n")[:-1]}
