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

from typing import Callable

import grpc
from pydantic import ValidationError

from looptool.services.expander.expand import ExpandConfig, Expander, LLMGenerator
from looptool.shared.config import LoopToolConfig
from looptool.shared.errors import UserError
from looptool.shared.generation import Generator
from looptool.shared.grpc_util import RunningServer, start_server
from looptool.shared.logs import get_logger
from looptool.shared.proto_convert import dataset_from_pb, stage_event_to_pb
from looptool.shared.storage import NotFound
from looptool.v1 import expander_pb2, expander_pb2_grpc

log = get_logger("looptool.expander.server")
SERVICE = "looptool.v1.Expander"

GeneratorFactory = Callable[[str, str], Generator]


def default_generator_factory(address: str, model: str) -> Generator:
    """The inference server's client (``looptool.services.inference.client``), pinned to ``model``."""
    from looptool.services.inference.client import InferenceClient

    return InferenceClient(address, model=model)


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
        self.generator_factory = generator_factory or default_generator_factory

    def _build(self, request: expander_pb2.ExpandRequest) -> tuple[Expander | None, str]:
        try:
            config = ExpandConfig.model_validate_json(request.config_json) if request.config_json.strip() else ExpandConfig()
        except ValidationError as exc:
            return None, _config_error(exc)
        if not request.verdicts.uri:
            return None, "verdicts.uri: empty; pass the judge stage's verdicts dataset"
        if not request.output_prefix:
            return None, "output_prefix: empty; name the dataset URI to write"
        if request.factor < 0:
            return None, f"factor: must be >= 0, got {request.factor}"
        address = config.inferenceAddress or self.cfg.services.inference.address
        drafter = None
        if config.generator == "llm":
            drafter = LLMGenerator(self.generator_factory(address, config.generatorModel), config.temperature, config.maxTokens)
        prober = self.generator_factory(address, config.probeModel) if config.filterMastered else None
        return Expander(config, drafter, prober, s3=self.cfg.storage.s3), ""

    def Expand(self, request: expander_pb2.ExpandRequest, context: grpc.ServicerContext):
        expander, problem = self._build(request)
        if expander is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        corpus = dataset_from_pb(request.corpus) if request.corpus.uri else None
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
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
        except NotFound as exc:
            failure = (grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (ValueError, *UserError) as exc:
            failure = (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the caller, logged here
            log.exception("expansion failed")
            failure = (grpc.StatusCode.INTERNAL, f"expansion failed: {exc.__class__.__name__}: {exc}")
        if failure is not None:
            context.abort(*failure)


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

    return start_server("expander", register, host=host, port=port, metrics_port=metrics_port, workers=cfg.services.expander.workers)
