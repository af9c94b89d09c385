"""Tasks and tool backends for tests/services/test_worker_processes.py, in a module of their own: worker
processes import it to unpickle them, and it imports little (the test module imports torch)."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

from looptool.services.synthesizer.engine import LocalToolBackend
from looptool.shared import metrics
from looptool.shared.workers import worker_state

TEST_COUNT = metrics.counter("test_workers", "items", "items seen by a worker", ["parity"])
TEST_SIZES = metrics.histogram("test_workers", "sizes", "item sizes seen by a worker", buckets=(1, 10, 100))


def square(x: int) -> int:
    """x² plus the worker's state; counts the item (by parity) and observes its size."""
    TEST_COUNT.labels("even" if x % 2 == 0 else "odd").inc()
    TEST_SIZES.observe(x)
    return x * x + worker_state()


def _die(marker: str) -> None:
    if marker:
        Path(marker).write_text("died once")
    os.kill(os.getpid(), signal.SIGKILL)


def die_at(x: int, at: int, marker: str) -> int:
    """Kills its own worker process at item ``at`` (every time; once when ``marker`` is a path)."""
    if x == at and (not marker or not os.path.exists(marker)):
        _die(marker)
    return x


class DyingBackend(LocalToolBackend):
    """An embedded simulator whose worker-side copy kills its process when the dialogue with session seed
    ``at_seed`` opens its session (every time; once when ``marker`` is a path that does not exist yet)."""

    def __init__(self, at_seed: int = -1, marker: str = ""):
        super().__init__()
        self.at_seed, self.marker = at_seed, marker

    def worker_factory(self):
        return functools.partial(DyingBackend, self.at_seed, self.marker)

    def open_session(self, tools, mode="auto", environment="", initial_state=None, seed=0):
        if seed == self.at_seed and (not self.marker or not os.path.exists(self.marker)):
            _die(self.marker)
        return super().open_session(tools, mode, environment, initial_state, seed)


def pid_and_state(x: int) -> tuple[int, int]:
    """(this worker's pid, its state for the run) — which process ran ``x`` and with what."""
    return os.getpid(), worker_state()
