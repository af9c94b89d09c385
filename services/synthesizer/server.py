"""gRPC servicer of the dialogue synthesizer (``looptool serve synthesizer``); logic in ``engine``."""

from __future__ import annotations

import json
import threading
from typing import Any

import grpc
from pydantic import ValidationError

from looptool.shared.errors import ServiceError
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.logs import get_logger
from looptool.shared.proto_convert import dataset_from_pb, synthesis_event_to_pb
from looptool.shared.records import text_key
from looptool.shared.toolsets import load_toolset
from looptool.v1 import synthesizer_pb2 as pb
from looptool.v1 import synthesizer_pb2_grpc as pb_grpc

from .agents import make_agents
from .config import SynthesisConfig, parse_config
from .engine import LocalToolBackend, iter_synthesis

log = get_logger("looptool.synthesizer")
SERVICE_NAME = "looptool.v1.DialogueSynthesizer"


def output_key(toolset_hash: str, num: int, seed: int, cfg: SynthesisConfig, round: int) -> str:
    payload = json.dumps({"t": toolset_hash, "n": num, "s": seed, "c": cfg.model_dump(mode="json"), "r": round}, sort_keys=True)
    return text_key(payload, 16)  # json.dumps' own separators, not canonical_json: stored keys depend on them


class SynthesizerServicer(pb_grpc.DialogueSynthesizerServicer):
    def __init__(self, app_cfg: Any = None, generator: Any = None, toolsim_address: str = "", storage_base: str = ""):
        self.app_cfg = app_cfg
        self.generator = generator
        self.toolsim_address = toolsim_address
        self.storage_base = storage_base
        self._embedded: LocalToolBackend | None = None
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        return getattr(getattr(self.app_cfg, "storage", None), "s3", None)

    def _backend(self, cfg: SynthesisConfig):
        address = cfg.toolsim_address or self.toolsim_address
        if not address and self.app_cfg is not None:
            address = self.app_cfg.services.toolsim.address
        if not address or address == "embedded":
            with self._lock:
                if self._embedded is None:
                    self._embedded = LocalToolBackend()
            return self._embedded
        from looptool.services.toolsim.client import ToolSimClient

        return ToolSimClient(address)

    def _generator(self, cfg: SynthesisConfig):
        if cfg.agents != "llm":
            return None
        if self.generator is not None:
            return self.generator
        if self.app_cfg is None:
            return None
        try:
            from looptool.services.inference.client import InferenceClient  # type: ignore
        except ImportError:
            return None
        return InferenceClient(self.app_cfg.services.inference.address)

    @handle_errors
    def Synthesize(self, request: pb.SynthesizeRequest, context: grpc.ServicerContext):
        try:
            cfg = parse_config(request.config_json)
        except (ValidationError, ValueError) as exc:
            raise ServiceError(f"config_json: {exc}", "INVALID_ARGUMENT") from exc
        if request.num_dialogues < 0:
            raise ServiceError("num_dialogues must be >= 0", "INVALID_ARGUMENT")
        try:
            ref = dataset_from_pb(request.toolset)
            tools = load_toolset(ref, self.s3)
        except Exception as exc:  # noqa: BLE001 - bad reference / missing dataset: the caller's to fix
            raise ServiceError(f"toolset: {exc}", "INVALID_ARGUMENT") from exc
        if not tools:
            raise ServiceError("toolset: the dataset holds no tools", "INVALID_ARGUMENT")
        try:
            agents = make_agents(cfg, self._generator(cfg))
        except ValueError as exc:  # e.g. llm agents without an inference server
            raise ServiceError(str(exc), "FAILED_PRECONDITION") from exc
        out = request.output_prefix
        if not out:
            base = self.storage_base or (self.app_cfg.storage.base_uri() if self.app_cfg is not None else "")
            if not base:
                raise ServiceError("output_prefix is empty and no storage is configured", "INVALID_ARGUMENT")
            out = f"{base.rstrip('/')}/synthesis/{output_key(ref.content_hash, request.num_dialogues, request.seed, cfg, request.round)}"
        backend = self._backend(cfg)
        cancel = threading.Event()
        context.add_callback(cancel.set)
        try:
            for ev in iter_synthesis(tools, request.num_dialogues, request.seed, out, cfg, agents, backend,
                                     concurrency=max(1, request.concurrency or 1), round=request.round, s3=self.s3,
                                     cancel=cancel, meta={"toolset": ref.uri, "toolset_hash": ref.content_hash}):
                if cancel.is_set():
                    break
                yield synthesis_event_to_pb(ev)
        finally:
            close = getattr(backend, "close", None)
            if callable(close) and backend is not self._embedded:
                close()


def start(cfg: Any = None, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0, generator: Any = None,
          toolsim_address: str = "", storage_base: str = "") -> RunningServer:
    servicer = SynthesizerServicer(cfg, generator=generator, toolsim_address=toolsim_address, storage_base=storage_base)
    workers = getattr(getattr(getattr(cfg, "services", None), "synthesizer", None), "workers", 8) if cfg is not None else 8

    def register(server: grpc.Server) -> list[str]:
        pb_grpc.add_DialogueSynthesizerServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return start_server("synthesizer", register, host=host, port=port, metrics_port=metrics_port, workers=workers)
