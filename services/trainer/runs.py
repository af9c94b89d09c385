"""The training runs of one trainer server, for the ``Train`` / ``Cancel`` RPCs.

A run id trains once at a time (a second ``open`` gets ``ALREADY_EXISTS``). Runs take turns for
the server's slots (training uses every core): a run that has to wait says so with a "queued"
progress event. A cancelled run stops at the next step boundary after saving a checkpoint. A run
that does not finish raises a ``ServiceError`` whose code follows ``runner.classify``: bad input
``INVALID_ARGUMENT``, cancelled ``CANCELLED``, a training failure ``INTERNAL`` (logged here).
"""

from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from looptool.shared.config import TrainerSettings
from looptool.shared.errors import ServiceError
from looptool.shared.logs import get_logger
from looptool.shared.records import Progress, StageResult

from .common import TrainCancelled
from .runner import TrainJob, classify, execute

log = get_logger("looptool.trainer.server")

# a run's end state (``runner.classify``, shared with the Job runner) → the status that ends Train
STATUS_OF_STATE = {"invalid": "INVALID_ARGUMENT", "cancelled": "CANCELLED", "failed": "INTERNAL"}


@dataclass
class Run:
    run_id: str
    cancel: threading.Event = field(default_factory=threading.Event)


class TrainingRuns:
    def __init__(self, workdir: Path, s3: Any = None, settings: TrainerSettings | None = None, max_concurrent: int = 1):
        self.workdir, self.s3, self.settings = workdir, s3, settings
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_concurrent)

    def open(self, job: TrainJob) -> Run:
        """Register the run (an empty ``job.run_id`` gets a fresh one); ``train`` it right away."""
        run_id = job.run_id or f"run-{uuid.uuid4().hex[:12]}"
        with self._lock:
            if run_id in self._runs:
                raise ServiceError(f"run {run_id} is already training; Cancel it or wait", "ALREADY_EXISTS")
            run = self._runs[run_id] = Run(run_id)
        return run

    def train(self, job: TrainJob, run: Run) -> Iterator[Progress | StageResult]:
        """Progress events, then the ``StageResult``; training happens on a worker thread."""
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                if not self._slots.acquire(blocking=False):
                    events.put(("event", Progress(stage="train", message="queued: another training run is using this trainer")))
                    while not self._slots.acquire(timeout=0.5):
                        if run.cancel.is_set():
                            raise TrainCancelled("cancelled while queued")
                try:
                    result = execute(job, s3=self.s3, workdir=self.workdir, emit=lambda p: events.put(("event", p)),
                                     cancel=run.cancel, settings=self.settings)
                finally:
                    self._slots.release()
                events.put(("done", result))
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                events.put(("error", exc))
            finally:
                with self._lock:
                    self._runs.pop(run.run_id, None)

        worker = threading.Thread(target=work, name=f"train-{run.run_id}", daemon=True)
        worker.start()
        while True:
            kind, value = events.get()
            if kind == "event":
                yield value
            elif kind == "done":
                assert isinstance(value, StageResult)
                yield value
                return
            else:
                state, reason = classify(value)
                if state == "failed":
                    log.error("training failed", exc_info=value)
                raise ServiceError(reason, STATUS_OF_STATE[state])

    def cancel(self, run_id: str) -> bool:
        """Ask a training run to stop; False when no run of that id is training here."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return False
        run.cancel.set()
        return True
