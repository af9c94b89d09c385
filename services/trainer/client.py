"""A small client for the Trainer service."""

from __future__ import annotations

from typing import Callable, Iterator

import grpc

from looptool.services.trainer.runner import TrainJob, job_to_pb, parse_job
from looptool.shared.config import SecuritySettings
from looptool.shared.grpc_util import channel
from looptool.shared.proto_convert import stage_event_from_pb
from looptool.shared.records import DatasetRef, ErrorInfo, Progress, StageResult
from looptool.v1 import trainer_pb2, trainer_pb2_grpc


class TrainerError(RuntimeError):
    """The server ended the run: ``code`` is the gRPC status name (INVALID_ARGUMENT, CANCELLED,
    INTERNAL, ALREADY_EXISTS, UNAVAILABLE …), ``reason`` the one-line message."""

    def __init__(self, code: str, reason: str):
        self.code, self.reason = code, reason
        super().__init__(f"{code}: {reason}")


class TrainerClient:
    def __init__(self, address: str, security: SecuritySettings | None = None):
        self.address = address
        self._channel = channel(address, security)
        self._stub = trainer_pb2_grpc.TrainerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "TrainerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def make_job(
        dataset: DatasetRef | str,
        base_checkpoint_uri: str,
        output_prefix: str,
        config: dict | None = None,
        run_id: str = "",
        round: int = 0,
    ) -> TrainJob:
        ds = dataset.model_dump() if isinstance(dataset, DatasetRef) else dataset
        return parse_job(
            {
                "run_id": run_id,
                "dataset": ds,
                "base_checkpoint_uri": base_checkpoint_uri,
                "output_prefix": output_prefix,
                "config": config or {},
                "round": round,
            }
        )

    def stream(self, job: TrainJob, timeout: float | None = None) -> Iterator[Progress | ErrorInfo | StageResult]:
        """Events as they arrive; raises TrainerError when the server ends the call with an error."""
        try:
            for ev in self._stub.Train(job_to_pb(job), timeout=timeout):
                yield stage_event_from_pb(ev)
        except grpc.RpcError as exc:
            raise TrainerError(exc.code().name, exc.details() or "") from None

    def train(
        self, job: TrainJob, on_progress: Callable[[Progress], None] | None = None, timeout: float | None = None
    ) -> StageResult:
        result: StageResult | None = None
        for ev in self.stream(job, timeout):
            if isinstance(ev, Progress) and on_progress:
                on_progress(ev)
            elif isinstance(ev, StageResult):
                result = ev
        if result is None:
            raise TrainerError("UNKNOWN", "the stream ended without a result")
        return result

    def cancel(self, run_id: str, timeout: float = 10.0) -> bool:
        try:
            return self._stub.Cancel(trainer_pb2.CancelRequest(run_id=run_id), timeout=timeout).cancelled
        except grpc.RpcError as exc:
            raise TrainerError(exc.code().name, exc.details() or "") from None
