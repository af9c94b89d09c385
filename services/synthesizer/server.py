"""gRPC servicer of the dialogue synthesizer (``looptool serve synthesizer``): requests to records, then
``synthesis.Synthesis`` (which backend, generator and output) runs ``engine`` (the simulation)."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from pydantic import ValidationError

from looptool.shared.config import LimitsSettings
from looptool.shared.errors import ServiceError
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.limits import check_int
from looptool.shared.proto_convert import dataset_from_pb, synthesis_event_to_pb
from looptool.shared.toolsets import load_toolset
from looptool.v1 import synthesizer_pb2 as pb
from looptool.v1 import synthesizer_pb2_grpc as pb_grpc

from .config import parse_config
from .synthesis import Synthesis

SERVICE_NAME = "looptool.v1.DialogueSynthesizer"


class SynthesizerServicer(pb_grpc.DialogueSynthesizerServicer):
    """Converts protobuf and delegates to ``synthesis.Synthesis``; errors become statuses in ``handle_errors``."""

    def __init__(self, app_cfg: Any = None, generator: Any = None, toolsim_address: str = "", storage_base: str = ""):
        self.synthesis = Synthesis(app_cfg, generator=generator, toolsim_address=toolsim_address, storage_base=storage_base)
        self.limits = getattr(app_cfg, "limits", None) or LimitsSettings()

    @handle_errors
    def Synthesize(self, request: pb.SynthesizeRequest, context: grpc.ServicerContext):
        try:
            cfg = parse_config(request.config_json)
        except (ValidationError, ValueError) as exc:
            raise ServiceError(f"config_json: {exc}", "INVALID_ARGUMENT") from exc
        if request.num_dialogues < 0:
            raise ServiceError("num_dialogues must be >= 0", "INVALID_ARGUMENT")
        check_int("num_dialogues", request.num_dialogues, 0, self.limits.dialogues, "dialogues")
        check_int("concurrency", request.concurrency, 0, self.limits.concurrency, "concurrency")
        check_int("round", request.round, 0)
        if request.first_index < 0:
            raise ServiceError("first_index must be >= 0", "INVALID_ARGUMENT")
        try:
            ref = dataset_from_pb(request.toolset)
            tools = load_toolset(ref, self.synthesis.s3)
        except Exception as exc:  # noqa: BLE001 - bad reference / missing dataset: the caller's to fix
            raise ServiceError(f"toolset: {exc}", "INVALID_ARGUMENT") from exc
        if not tools:
            raise ServiceError("toolset: the dataset holds no tools", "INVALID_ARGUMENT")
        cancel = threading.Event()
        context.add_callback(cancel.set)
        for ev in self.synthesis.run(tools, ref, cfg, request.num_dialogues, request.seed, request.output_prefix,
                                     request.concurrency, request.round, cancel, first_index=request.first_index):
            yield synthesis_event_to_pb(ev)


def start(cfg: Any = None, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0, generator: Any = None,
          toolsim_address: str = "", storage_base: str = "") -> RunningServer:
    servicer = SynthesizerServicer(cfg, generator=generator, toolsim_address=toolsim_address, storage_base=storage_base)
    workers = getattr(getattr(getattr(cfg, "services", None), "synthesizer", None), "workers", 8) if cfg is not None else 8

    def register(server: grpc.Server) -> list[str]:
        pb_grpc.add_DialogueSynthesizerServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return start_server("synthesizer", register, host=host, port=port, metrics_port=metrics_port, workers=workers,
                        security=getattr(cfg, "security", None))
