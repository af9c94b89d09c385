"""gRPC servicer for ``looptool.v1.Expander`` (a thin layer over ``expand.Expander``).

``Expand`` streams ``Progress`` events (one per seed), per-item ``Error`` events (a seed that
yielded no sample) and one final ``StageResult``. Bad requests (invalid ``config_json``, missing
URIs, unreadable datasets) end the call with ``INVALID_ARGUMENT`` / ``FAILED_PRECONDITION`` and a
message naming the field. A cancelled call stops after the current seed; the finished seeds are
durable and a repeated call resumes from them.

The llm generator and the ``filterMastered`` probe talk to the inference server
(``config.inferenceAddress``, default ``services.inference``) through a ``Generator`` built by
``generator_factory(address, model_uri)``.
"""

from __future__ import annotations

import functools
from typing import Callable

import grpc
from pydantic import ValidationError

from looptool.services.expander.expand import ExpandConfig, Expander, LLMGenerator
from looptool.services.expander.structure import StructureOptions
from looptool.shared.config import LoopToolConfig, SecuritySettings
from looptool.shared.errors import ServiceError
from looptool.shared.generation import Generator
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.limits import check_int
from looptool.shared.proto_convert import dataset_from_pb, stage_event_to_pb
from looptool.shared.schema import ToolSchemaError
from looptool.shared.storage.base import NotFound, StorageError
from looptool.shared.workers import pool_size
from looptool.v1 import expander_pb2, expander_pb2_grpc

SERVICE = "looptool.v1.Expander"

GeneratorFactory = Callable[[str, str], Generator]


def default_generator_factory(address: str, model: str, security: SecuritySettings | None = None) -> Generator:
    """The inference server's client (``looptool.services.inference.client``), pinned to ``model``."""
    from looptool.services.inference.client import InferenceClient

    return InferenceClient(address, model=model, security=security)


def _config_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config_json"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"config_json field '{loc}': {msg}")
    return "; ".join(problems)


class ExpanderServicer(expander_pb2_grpc.ExpanderServicer):
    def __init__(self, cfg: LoopToolConfig, generator_factory: GeneratorFactory | None = None):
        self.cfg = cfg
        self.generator_factory = generator_factory or functools.partial(default_generator_factory, security=cfg.security)

    def _build(self, request: expander_pb2.ExpandRequest) -> Expander:
        try:
            config = ExpandConfig.model_validate_json(request.config_json) if request.config_json.strip() else ExpandConfig()
        except ValidationError as exc:
            raise ServiceError(_config_error(exc), "INVALID_ARGUMENT") from exc
        if not request.verdicts.uri:
            raise ServiceError("verdicts.uri: empty; pass the judge stage's verdicts dataset", "INVALID_ARGUMENT")
        if not request.output_prefix:
            raise ServiceError("output_prefix: empty; name the dataset URI to write", "INVALID_ARGUMENT")
        if request.factor < 0:
            raise ServiceError(f"factor: must be >= 0, got {request.factor}", "INVALID_ARGUMENT")
        limits = self.cfg.limits
        check_int("factor", request.factor, 0, limits.expand_factor, "expand_factor")
        check_int("round", request.round, 0)
        address = config.inferenceAddress or self.cfg.services.inference.address
        drafter = None
        if config.generator == "llm":
            drafter = LLMGenerator(self.generator_factory(address, config.generatorModel), config.temperature, config.maxTokens,
                                   structure=StructureOptions.from_spec(config))
        prober = self.generator_factory(address, config.probeModel) if config.filterMastered else None
        processes = pool_size(None, self.cfg.services.expander.processes)  # drafts are CPU-bound: every core
        return Expander(config, drafter, prober, s3=self.cfg.storage.s3, processes=processes if processes >= 2 else 0)

    # The expander's contract (module docstring): unreadable inputs are the caller's to fix, so storage
    # and schema errors are INVALID_ARGUMENT and a missing dataset FAILED_PRECONDITION (an earlier
    # stage did not finish), where the shared table says FAILED_PRECONDITION / NOT_FOUND.
    @handle_errors(
        codes={
            NotFound: grpc.StatusCode.FAILED_PRECONDITION,
            StorageError: grpc.StatusCode.INVALID_ARGUMENT,
            ToolSchemaError: grpc.StatusCode.INVALID_ARGUMENT,
        },
        unexpected="expansion failed",
    )
    def Expand(self, request: expander_pb2.ExpandRequest, context: grpc.ServicerContext):
        expander = self._build(request)
        corpus = dataset_from_pb(request.corpus) if request.corpus.uri else None
        events = expander.events(
            dataset_from_pb(request.verdicts),
            request.output_prefix,
            factor=request.factor,
            seed=request.seed,
            round=request.round,
            corpus=corpus,
            should_stop=lambda: not context.is_active(),
        )
        for ev in events:
            yield stage_event_to_pb(ev)


def start(
    cfg: LoopToolConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int = 0,
    generator_factory: GeneratorFactory | None = None,
) -> RunningServer:
    servicer = ExpanderServicer(cfg, generator_factory)

    def register(server: grpc.Server) -> list[str]:
        expander_pb2_grpc.add_ExpanderServicer_to_server(servicer, server)
        return [SERVICE]

    return start_server(
        "expander", register, host=host, port=port, metrics_port=metrics_port, workers=cfg.services.expander.workers,
        security=cfg.security,
    )
