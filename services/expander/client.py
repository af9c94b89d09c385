"""Typed client for ``looptool.v1.Expander``."""

from __future__ import annotations

from typing import Callable

import grpc

from looptool.services.expander.expand import DEFAULT_FACTOR, ExpandConfig
from looptool.shared.config import SecuritySettings
from looptool.shared.grpc_util import channel
from looptool.shared.proto_convert import dataset_to_pb, stage_event_from_pb
from looptool.shared.records import DatasetRef, ErrorInfo, Progress, StageResult
from looptool.v1 import expander_pb2, expander_pb2_grpc


class ExpandFailed(RuntimeError):
    """The Expand call ended with an error status; ``code`` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details
        super().__init__(f"Expand failed ({code.name}): {details}")


class ExpanderClient:
    def __init__(self, address: str, timeout_s: float = 6 * 3600, security: SecuritySettings | None = None):
        self.address, self.timeout_s = address, timeout_s
        self._channel = channel(address, security)
        self._stub = expander_pb2_grpc.ExpanderStub(self._channel)
        self.errors: list[ErrorInfo] = []  # per-item errors of the last call

    def expand(
        self,
        verdicts: DatasetRef,
        output_prefix: str,
        factor: int = DEFAULT_FACTOR,
        seed: int = 0,
        corpus: DatasetRef | None = None,
        config: ExpandConfig | None = None,
        round: int = 0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> StageResult:
        """Run EDDE remotely; returns the StageResult (per-item errors land in ``self.errors``)."""
        req = expander_pb2.ExpandRequest(
            verdicts=dataset_to_pb(verdicts),
            corpus=dataset_to_pb(corpus) if corpus is not None else None,
            output_prefix=output_prefix,
            factor=factor,
            seed=seed,
            config_json=(config or ExpandConfig()).model_dump_json(),
            round=round,
        )
        self.errors = []
        result: StageResult | None = None
        try:
            for ev in self._stub.Expand(req, timeout=self.timeout_s):
                value = stage_event_from_pb(ev)
                if isinstance(value, Progress):
                    if on_progress is not None:
                        on_progress(value)
                elif isinstance(value, ErrorInfo):
                    self.errors.append(value)
                else:
                    result = value
        except grpc.RpcError as exc:
            raise ExpandFailed(exc.code(), exc.details() or "") from None
        if result is None:
            raise ExpandFailed(grpc.StatusCode.UNKNOWN, "the stream ended without a result")
        return result

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ExpanderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
