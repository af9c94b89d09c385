"""The inference/judge gRPC server (``looptool serve inference``): generation for the synthesizer and
expander, Greedy Capability Probing (``Probe``) and Judgement-Guided Label Verification (``Judge``).

- Every RPC honours its deadline and stops work when the client cancels: each request gets a
  ``CancelToken`` set by ``context.add_callback`` (the RPC ended) and the deadline is passed to the
  backend, which drops queued requests and ends running rows early.
- Models: ``GenerateRequest.model`` / ``ProbeRequest.model_uri`` pick a model by URI; the server keeps
  the two most recently used loaded (``ModelPool``). Empty = ``inference.model``.
- Judge: ``JudgeSpec.backend == "grounding"`` uses the rule-based verifier (no model);
  ``"llm"`` uses ``JudgeSpec.model``, else the ``judge:`` config section's model, else the
  inference model.
- Metrics (``looptool_inference_*``): ``generate_requests_total{rpc,status}``,
  ``generate_latency_seconds{rpc}``, ``tokens_total{backend,kind=prompt|completion}``,
  ``batch_size{backend}``, ``queue_depth{backend}``, ``probe_outcomes_total{outcome}``,
  ``judge_verdicts_total{decision}``, plus ``rpc_*`` from the shared interceptor.
"""

from __future__ import annotations

import time

import grpc
from pydantic import ValidationError

from looptool.shared.config import InferenceSettings, LimitsSettings, LoopToolConfig
from looptool.shared.errors import InputError, ServiceError
from looptool.shared.generation import GenRequest
from looptool.shared.grpc_util import RunningServer, handle_errors, start_server
from looptool.shared.logs import get_logger
from looptool.shared.proto_convert import (
    completion_to_pb,
    dataset_from_pb,
    error_to_pb,
    gen_request_from_pb,
    gen_result_to_pb,
    stage_event_to_pb,
    usage_to_pb,
)
from looptool.shared.records import ErrorInfo
from looptool.v1 import inference_pb2, inference_pb2_grpc

from .backends import CancelToken
from .generate import SERVICE, Generation
from .pool import ModelPool
from .requests import check_batch, check_generate, check_judge, check_judge_spec, check_probe, check_probe_spec
from .roots import ModelRoots
from .stages import Call, StageRuns, judge_spec, probe_spec

log = get_logger("looptool.inference.server")


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    return time.monotonic() + max(0.0, remaining)


def _deadline_passed(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _cancel_token(context: grpc.ServicerContext) -> CancelToken:
    token = CancelToken()
    if not context.add_callback(token.cancel):  # the RPC already ended
        token.cancel()
    return token


def _call(context: grpc.ServicerContext) -> Call:
    return Call(_cancel_token(context), _deadline(context), context.is_active, lambda: _deadline_passed(context))


def _gen_request(req: inference_pb2.GenerateRequest) -> GenRequest:
    try:
        return gen_request_from_pb(req)
    except (ValueError, ValidationError) as exc:
        raise ServiceError(f"bad request: {exc}", "INVALID_ARGUMENT") from exc


def _one_line(exc: ValidationError) -> str:
    return "; ".join(f"field '{'.'.join(str(p) for p in e['loc']) or '(root)'}': {e['msg']}" for e in exc.errors())


def _batch_item(req: inference_pb2.GenerateRequest, limits: LimitsSettings, i: int) -> GenRequest | ErrorInfo | None:
    """A malformed item fails alone (reported in its place), not the batch."""
    try:
        check_generate(req, limits, f"GenerateBatchRequest.requests[{i}]")
    except InputError as exc:
        return ErrorInfo(code="INVALID_ARGUMENT", message=str(exc), field=exc.field)
    try:
        return gen_request_from_pb(req)
    except (ValueError, ValidationError) as exc:
        log.debug("bad batch item", extra={"error": str(exc)})
        return None


def judge_settings(cfg: LoopToolConfig) -> InferenceSettings:
    """The ``judge:`` section, sharing the inference model cache (one directory, one bound: the chart
    mounts one volume there) unless it names its own."""
    assert cfg.judge is not None
    shared = {k: getattr(cfg.inference, k) for k in ("model_cache_dir", "model_cache_max_bytes") if k not in cfg.judge.model_fields_set}
    return cfg.judge.model_copy(update=shared)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Converts protobuf and delegates: generation to ``generate.Generation``, Probe/Judge runs to
    ``stages.StageRuns``; errors become statuses in ``handle_errors``."""

    def __init__(self, cfg: LoopToolConfig, pool: ModelPool | None = None, judge_pool: ModelPool | None = None):
        self.cfg = cfg
        roots = ModelRoots.from_settings(cfg.inference, cfg.storage)
        self.pool = pool or ModelPool(cfg.inference, size=2, s3=cfg.storage.s3, roots=roots)
        self.judge_pool = judge_pool or (
            ModelPool(judge_settings(cfg), size=1, s3=cfg.storage.s3, roots=ModelRoots.from_settings(cfg.judge, cfg.storage))
            if cfg.judge is not None
            else None
        )
        self.generation = Generation(self.pool)
        self.stages = StageRuns(cfg, self.pool, self.judge_pool)

    # -- generation ---------------------------------------------------------------------------

    @handle_errors
    def Generate(self, request, context):
        check_generate(request, self.cfg.limits)
        gen_req = _gen_request(request)
        res, model = self.generation.one(gen_req, request.model, _cancel_token(context), _deadline(context))
        return gen_result_to_pb(res, model)

    @handle_errors
    def GenerateStream(self, request, context):
        check_generate(request, self.cfg.limits)
        gen_req = _gen_request(request)
        call = _call(context)
        for out in self.generation.stream(gen_req, request.model, call.cancel, call.deadline, call.active):
            if isinstance(out, str):
                yield inference_pb2.GenerateChunk(text_delta=out)
            else:
                yield inference_pb2.GenerateChunk(
                    done=True,
                    completion=completion_to_pb(out.completions[0]) if out.completions else None,
                    usage=usage_to_pb(out),
                )

    @handle_errors
    def GenerateBatch(self, request, context):
        check_batch(request, self.cfg.limits)
        call = _call(context)
        items = [(_batch_item(r, self.cfg.limits, i), r.model) for i, r in enumerate(request.requests)]
        for i, out, model in self.generation.batch(items, call.cancel, call.deadline, call.active):
            if isinstance(out, ErrorInfo):
                yield inference_pb2.GenerateBatchItem(index=i, error=error_to_pb(out))
            else:
                yield inference_pb2.GenerateBatchItem(index=i, response=gen_result_to_pb(out, model))

    # -- probe / judge ------------------------------------------------------------------------

    @handle_errors
    def Probe(self, request, context):
        if not request.HasField("dataset") or not request.dataset.uri:
            raise ServiceError("ProbeRequest.dataset is required", "INVALID_ARGUMENT")
        try:
            check_probe(request, self.cfg.limits)
            spec = probe_spec(request.config_json, request.k, request.temperature, request.max_tokens)
            check_probe_spec(spec, self.cfg.limits)
            dataset = dataset_from_pb(request.dataset)
        except InputError:
            raise
        except ValidationError as exc:  # config_json: one line naming each field, not pydantic's block
            raise ServiceError(f"ProbeRequest.config_json: {_one_line(exc)}", "INVALID_ARGUMENT") from exc
        except ValueError as exc:
            raise ServiceError(f"ProbeRequest: {exc}", "INVALID_ARGUMENT") from exc
        events = self.stages.probe(dataset, spec, request.model_uri, request.output_prefix, request.round, _call(context))
        for ev in events:
            yield stage_event_to_pb(ev)

    @handle_errors
    def Judge(self, request, context):
        if not request.HasField("probe_results") or not request.probe_results.uri:
            raise ServiceError("JudgeRequest.probe_results is required", "INVALID_ARGUMENT")
        try:
            check_judge(request, self.cfg.limits)
            spec = judge_spec(request.config_json, request.votes)
            check_judge_spec(spec, self.cfg.limits)
            probe_ref = dataset_from_pb(request.probe_results)
        except InputError:
            raise
        except ValidationError as exc:  # config_json: one line naming each field, not pydantic's block
            raise ServiceError(f"JudgeRequest.config_json: {_one_line(exc)}", "INVALID_ARGUMENT") from exc
        except ValueError as exc:
            raise ServiceError(f"JudgeRequest: {exc}", "INVALID_ARGUMENT") from exc
        events = self.stages.judge(probe_ref, spec, request.policy_model, request.output_prefix, request.round, _call(context))
        for ev in events:
            yield stage_event_to_pb(ev)

    @handle_errors
    def ModelInfo(self, request, context):
        backend, model, max_context = self.generation.model_info(self.cfg.inference)
        return inference_pb2.ModelInfoResponse(backend=backend, model=model, max_context=max_context)

    def close(self) -> None:
        self.pool.close()
        if self.judge_pool is not None:
            self.judge_pool.close()


def start(
    cfg: LoopToolConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int = 0,
    preload: bool = True,
    pool: ModelPool | None = None,
) -> RunningServer:
    """Start the inference server. With ``preload`` the configured model is loaded before the port
    opens (a bad model path fails here, not on the first request). ``pool``: serve already loaded
    models (benchmarks, embedding the server next to in-process users)."""
    servicer = InferenceServicer(cfg, pool=pool)
    if preload and cfg.inference.model and cfg.inference.backend != "openai":
        servicer.pool.get("")

    def register(server: grpc.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        return [inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name]

    running = start_server(
        SERVICE, register, host=host, port=port, metrics_port=metrics_port, workers=cfg.services.inference.workers,
        security=cfg.security,
    )
    running.servicer = servicer  # type: ignore[attr-defined]
    original_stop = running.stop

    def stop(grace: float = 2.0) -> None:
        original_stop(grace)
        servicer.close()

    running.stop = stop  # type: ignore[method-assign]
    return running
