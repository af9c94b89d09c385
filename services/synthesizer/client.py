"""Python client of the dialogue synthesizer service."""

from __future__ import annotations

import json
from typing import Any, Iterator

from looptool.shared.config import SecuritySettings
from looptool.shared.grpc_util import channel
from looptool.shared.proto_convert import dataset_to_pb, dialog_from_pb, error_from_pb, progress_from_pb, result_from_pb
from looptool.shared.records import DatasetRef, Dialog, ErrorInfo, Progress, StageResult
from looptool.v1 import synthesizer_pb2 as pb
from looptool.v1 import synthesizer_pb2_grpc as pb_grpc


class SynthesizerClient:
    def __init__(self, address: str, timeout: float | None = None, security: SecuritySettings | None = None):
        self.address = address
        self.timeout = timeout
        self._channel = channel(address, security)
        self._stub = pb_grpc.DialogueSynthesizerStub(self._channel)

    def stream(self, toolset: DatasetRef, num_dialogues: int, seed: int = 0, concurrency: int = 1, output_prefix: str = "",
               config: Any = None, round: int = 0) -> Iterator[Progress | Dialog | ErrorInfo | StageResult]:
        if hasattr(config, "model_dump"):
            config = config.model_dump(mode="json")
        req = pb.SynthesizeRequest(toolset=dataset_to_pb(toolset), num_dialogues=num_dialogues, concurrency=concurrency, seed=seed,
                                   output_prefix=output_prefix, config_json=json.dumps(config or {}), round=round)
        for ev in self._stub.Synthesize(req, timeout=self.timeout):
            which = ev.WhichOneof("event")
            if which == "dialog":
                yield dialog_from_pb(ev.dialog)
            elif which == "progress":
                yield progress_from_pb(ev.progress)
            elif which == "error":
                yield error_from_pb(ev.error)
            elif which == "result":
                yield result_from_pb(ev.result)

    def synthesize(self, *args: Any, **kw: Any) -> tuple[StageResult | None, list[Dialog], list[ErrorInfo]]:
        result, dialogs, errors = None, [], []
        for ev in self.stream(*args, **kw):
            if isinstance(ev, StageResult):
                result = ev
            elif isinstance(ev, Dialog):
                dialogs.append(ev)
            elif isinstance(ev, ErrorInfo):
                errors.append(ev)
        return result, dialogs, errors

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SynthesizerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
