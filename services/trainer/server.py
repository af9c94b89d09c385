"""The ``Trainer`` gRPC service (``looptool serve trainer``).

``Train(TrainRequest) → stream StageEvent``: Progress events (``stage="train"``, ``done``/``total``
over SFT + GRPO steps, ``message``, ``metrics`` with ``step``, ``phase`` (0 SFT, 1 GRPO),
``reward_mean``, ``reward_std``, ``accuracy``, ``loss`` / ``sft_loss``, ``kl``, ``entropy``,
``tokens_per_second``, ``gen_share`` …), then one StageResult (see ``runner`` for its fields;
the reward curve is ``metrics["reward_step_<i>"]``). Bad input ends the call with
``INVALID_ARGUMENT`` and the one-line reason (before any compute); a cancelled run with
``CANCELLED``; a training failure with ``INTERNAL``. A run id already training gets
``ALREADY_EXISTS``.

``Cancel(run_id)``: the run stops at the next step boundary after saving a checkpoint; a client
that goes away cancels its run the same way. Runs execute one at a time per server (training uses
every core); later calls wait, with a "queued" progress event.

The request's ``run_id`` may be empty: the server then uses the run key's prefix.
"""

from __future__ import annotations

import os

# Library settings for this process (not LoopTool settings, which the config module reads), set
# before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine shared with
# other busy processes, spinning threads wait on a descheduled peer at every parallel region (we
# measured 2 threads 4–15× slower than 1); passive waiting removes that cliff.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MKL may otherwise use fewer threads than asked when the machine is busy, which changes the
# summation order: the same training would not give bit-identical weights run to run.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import queue
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from looptool.services.trainer.common import TrainCancelled
from looptool.services.trainer.runner import classify, default_workdir, execute, job_from_pb
from looptool.shared.errors import ServiceError
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.logs import get_logger
from looptool.shared.proto_convert import stage_event_to_pb
from looptool.shared.records import Progress, StageResult
from looptool.v1 import trainer_pb2, trainer_pb2_grpc

log = get_logger("looptool.trainer.server")
SERVICE_NAME = "looptool.v1.Trainer"
# a run's end state (``runner.classify``, shared with the Job runner) → the status that ends Train
_STATUS_OF_STATE = {"invalid": "INVALID_ARGUMENT", "cancelled": "CANCELLED", "failed": "INTERNAL"}


@dataclass
class _Run:
    run_id: str
    cancel: threading.Event = field(default_factory=threading.Event)


class TrainerService(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, cfg=None, workdir: str | Path | None = None, max_concurrent: int = 1):
        self.cfg = cfg
        self.s3 = cfg.storage.s3 if cfg is not None else None
        self.workdir = Path(workdir) if workdir else default_workdir(cfg)
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_concurrent)

    @handle_errors
    def Train(self, request, context):
        job = job_from_pb(request)  # InputError: INVALID_ARGUMENT before any compute
        run_id = job.run_id or f"run-{uuid.uuid4().hex[:12]}"
        with self._lock:
            if run_id in self._runs:
                raise ServiceError(f"run {run_id} is already training; Cancel it or wait", "ALREADY_EXISTS")
            run = self._runs[run_id] = _Run(run_id)
        events: queue.Queue = queue.Queue()
        context.add_callback(run.cancel.set)  # the client went away → stop at the next step boundary

        def work() -> None:
            try:
                if not self._slots.acquire(blocking=False):
                    events.put(("event", Progress(stage="train", message="queued: another training run is using this trainer")))
                    while not self._slots.acquire(timeout=0.5):
                        if run.cancel.is_set():
                            raise TrainCancelled("cancelled while queued")
                try:
                    result = execute(job, s3=self.s3, workdir=self.workdir, emit=lambda p: events.put(("event", p)), cancel=run.cancel,
                                     settings=self.cfg.trainer if self.cfg is not None else None)
                finally:
                    self._slots.release()
                events.put(("done", result))
            except BaseException as exc:  # noqa: BLE001 - reported to the client
                events.put(("error", exc))
            finally:
                with self._lock:
                    self._runs.pop(run_id, None)

        worker = threading.Thread(target=work, name=f"train-{run_id}", daemon=True)
        worker.start()
        while True:
            kind, value = events.get()
            if kind == "event":
                yield stage_event_to_pb(value)
            elif kind == "done":
                assert isinstance(value, StageResult)
                yield stage_event_to_pb(value)
                return
            else:
                state, reason = classify(value)
                if state == "failed":
                    log.error("training failed", exc_info=value)
                raise ServiceError(reason, _STATUS_OF_STATE[state])

    @handle_errors
    def Cancel(self, request, context):
        with self._lock:
            run = self._runs.get(request.run_id)
        if run is None:
            return trainer_pb2.CancelResponse(cancelled=False)
        run.cancel.set()
        return trainer_pb2.CancelResponse(cancelled=True)


def start(cfg=None, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0, workdir: str | Path | None = None) -> RunningServer:
    service = TrainerService(cfg, workdir=workdir)

    def register(server: grpc.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServicer_to_server(service, server)
        return [SERVICE_NAME]

    workers = cfg.services.trainer.workers if cfg is not None else 8
    running = start_server("trainer", register, host=host, port=port, metrics_port=metrics_port, workers=workers)
    running.service = service  # type: ignore[attr-defined]
    return running
