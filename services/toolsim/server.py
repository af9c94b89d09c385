"""gRPC servicer of the tool simulator (``looptool serve toolsim``); the logic is in ``simulator``."""

from __future__ import annotations

import json
from typing import Any

import grpc

from looptool.shared.errors import ServiceError
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.logs import get_logger
from looptool.shared.proto_convert import call_from_pb, error_to_pb, tool_from_pb
from looptool.v1 import toolsim_pb2 as pb
from looptool.v1 import toolsim_pb2_grpc as pb_grpc

from .simulator import ToolSimulator

log = get_logger("looptool.toolsim")
SERVICE_NAME = "looptool.v1.ToolSimulator"


class ToolSimulatorServicer(pb_grpc.ToolSimulatorServicer):
    """Converts protobuf and delegates to ``ToolSimulator``; a ``SessionError`` names its status."""

    def __init__(self, sim: ToolSimulator):
        self.sim = sim

    @handle_errors
    def OpenSession(self, request: pb.OpenSessionRequest, context: grpc.ServicerContext) -> pb.OpenSessionResponse:
        try:
            tools = [tool_from_pb(t) for t in request.tools]
        except (json.JSONDecodeError, ValueError) as exc:
            raise ServiceError(f"tools: parameters_json is not a JSON object ({exc})", "INVALID_ARGUMENT") from exc
        s = self.sim.open_session(tools, request.mode or "auto", request.environment, request.initial_state_json, request.seed)
        return pb.OpenSessionResponse(session_id=s.id, mode=s.mode)

    @handle_errors
    def Execute(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> pb.ExecuteResponse:
        try:
            call = call_from_pb(request.call)
        except (json.JSONDecodeError, ValueError) as exc:
            raise ServiceError(f"call.arguments_json is not JSON ({exc})", "INVALID_ARGUMENT") from exc
        if not isinstance(call.arguments, dict):
            raise ServiceError("call.arguments_json must be a JSON object", "INVALID_ARGUMENT")
        res = self.sim.execute(request.session_id, call)
        out = pb.ExecuteResponse(content=res.content, is_error=res.is_error)
        if res.error is not None:
            out.error.CopyFrom(error_to_pb(res.error))
        return out

    @handle_errors
    def CloseSession(self, request: pb.CloseSessionRequest, context: grpc.ServicerContext) -> pb.CloseSessionResponse:
        self.sim.close_session(request.session_id)
        return pb.CloseSessionResponse()


def _generator_from_config(cfg: Any):
    """The inference server's client, when the inference service is part of this build."""
    try:
        from looptool.services.inference.client import InferenceClient
    except ImportError:
        return None
    return InferenceClient(cfg.services.inference.address, security=getattr(cfg, "security", None))


def start(cfg: Any = None, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0, generator: Any = None,
          use_inference: bool | None = None, **sim_kw: Any) -> RunningServer:
    """Start the service. ``generator`` enables ``llm`` mode (and makes it the ``auto`` choice for
    tools without an executable environment); without one, with ``cfg`` given (and ``use_inference``
    not False), the inference server's client serves sessions that ask for ``llm`` explicitly."""
    explicit = generator is not None
    if generator is None and cfg is not None and (use_inference if use_inference is not None else True):
        generator = _generator_from_config(cfg)
    sim_kw.setdefault("prefer_llm", explicit)
    sim = ToolSimulator(generator=generator, **sim_kw)
    workers = getattr(getattr(getattr(cfg, "services", None), "toolsim", None), "workers", 8) if cfg is not None else 8

    def register(server: grpc.Server) -> list[str]:
        pb_grpc.add_ToolSimulatorServicer_to_server(ToolSimulatorServicer(sim), server)
        return [SERVICE_NAME]

    running = start_server("toolsim", register, host=host, port=port, metrics_port=metrics_port, workers=max(workers, 8),
                           security=getattr(cfg, "security", None))
    running.simulator = sim  # type: ignore[attr-defined]
    return running
