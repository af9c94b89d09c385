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

from pathlib import Path

import grpc

from looptool.services.trainer.runner import default_workdir, job_from_pb
from looptool.services.trainer.runs import TrainingRuns
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.proto_convert import stage_event_to_pb
from looptool.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = "looptool.v1.Trainer"


class TrainerService(trainer_pb2_grpc.TrainerServicer):
    """Converts protobuf and delegates to ``runs.TrainingRuns``; errors become statuses in ``handle_errors``."""

    def __init__(self, cfg=None, workdir: str | Path | None = None, max_concurrent: int = 1):
        self.cfg = cfg
        self.runs = TrainingRuns(
            Path(workdir) if workdir else default_workdir(cfg),
            s3=cfg.storage.s3 if cfg is not None else None,
            settings=cfg.trainer if cfg is not None else None,
            max_concurrent=max_concurrent,
        )

    @handle_errors
    def Train(self, request, context):
        job = job_from_pb(request)  # InputError: INVALID_ARGUMENT before any compute
        run = self.runs.open(job)
        context.add_callback(run.cancel.set)  # the client went away → stop at the next step boundary
        for ev in self.runs.train(job, run):
            yield stage_event_to_pb(ev)

    @handle_errors
    def Cancel(self, request, context):
        return trainer_pb2.CancelResponse(cancelled=self.runs.cancel(request.run_id))


def start(cfg=None, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0, workdir: str | Path | None = None) -> RunningServer:
    service = TrainerService(cfg, workdir=workdir)

    def register(server: grpc.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServicer_to_server(service, server)
        return [SERVICE_NAME]

    workers = cfg.services.trainer.workers if cfg is not None else 8
    security = cfg.security if cfg is not None else None
    running = start_server("trainer", register, host=host, port=port, metrics_port=metrics_port, workers=workers, security=security)
    running.service = service  # type: ignore[attr-defined]
    return running
