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

import hashlib
import contextlib
import queue
import time
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Iterator

import grpc
from pydantic import ValidationError

from looptool.shared import metrics
from looptool.shared.config import LoopToolConfig
from looptool.shared.errors import InputError
from looptool.shared.generation import GenRequest, GenResult, SamplingParams
from looptool.shared.grpc_util import RunningServer, start_server
from looptool.shared.logs import get_logger
from looptool.shared.loop.manifest import JudgeSpec, ProbeSpec
from looptool.shared.proto_convert import (
    call_to_pb,
    dataset_from_pb,
    message_from_pb,
    stage_event_to_pb,
    tool_from_pb,
)
from looptool.shared.records import StageResult, canonical_json
from looptool.shared.schema import ToolSchemaError
from looptool.shared.storage.base import NotFound, StorageError
from looptool.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from .backends import BackendError, BoundGenerator, CancelToken, split_error
from .judge import CandidateSampler, GroundingJudge, LLMJudge, run_judge
from .pool import ModelPool
from .probe import run_probe

log = get_logger("looptool.inference.server")
SERVICE = "inference"

_REQUESTS = metrics.counter(SERVICE, "generate_requests", "Generation requests by RPC and status", ["rpc", "status"])
_LATENCY = metrics.histogram(SERVICE, "generate_latency_seconds", "Generation request latency", ["rpc"])


def _grpc_code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


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


def gen_request_from_pb(req: inference_pb2.GenerateRequest) -> GenRequest:
    p = req.params
    params = SamplingParams(
        temperature=max(0.0, p.temperature),
        top_p=p.top_p if p.top_p > 0 else 1.0,
        max_tokens=p.max_tokens if p.max_tokens > 0 else 256,
        n=p.n if p.n > 0 else 1,
        seed=p.seed,
        stop=list(p.stop),
    )
    return GenRequest(
        messages=[message_from_pb(m) for m in req.messages],
        tools=[tool_from_pb(t) for t in req.tools],
        params=params,
        request_id=req.request_id,
    )


def completion_to_pb(c) -> inference_pb2.Completion:
    return inference_pb2.Completion(
        text=c.text,
        tool_calls=[call_to_pb(tc) for tc in c.tool_calls],
        parse_error=c.parse_error,
        finish_reason=c.finish_reason,
        mean_logprob=c.mean_logprob,
    )


def response_to_pb(res: GenResult, model: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(
        completions=[completion_to_pb(c) for c in res.completions],
        usage=inference_pb2.Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens),
        model=model,
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, cfg: LoopToolConfig, pool: ModelPool | None = None, judge_pool: ModelPool | None = None):
        self.cfg = cfg
        self.pool = pool or ModelPool(cfg.inference, size=2, s3=cfg.storage.s3)
        self.judge_pool = judge_pool or (ModelPool(cfg.judge, size=1, s3=cfg.storage.s3) if cfg.judge is not None else None)

    # -- helpers ------------------------------------------------------------------------------

    def _parse_request(self, req: inference_pb2.GenerateRequest, context) -> GenRequest:
        try:
            return gen_request_from_pb(req)
        except (ValueError, ValidationError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
            raise  # unreachable

    def _backend_error(self, context, exc: Exception) -> None:
        if isinstance(exc, BackendError):
            context.abort(_grpc_code(exc.code), str(exc))
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def _abort_item(self, context, error: str) -> None:
        code, msg = split_error(error)
        context.abort(_grpc_code(code), msg)

    # -- generation ---------------------------------------------------------------------------

    def Generate(self, request, context):
        start = time.perf_counter()
        gen_req = self._parse_request(request, context)
        status = "OK"
        try:
            with self.pool.lease(request.model) as backend:
                token, deadline = _cancel_token(context), _deadline(context)
                fut = backend.submit(gen_req, cancel=token, deadline=deadline)
                try:
                    res = fut.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()) + 0.5)
                except FutureTimeout:
                    token.cancel()  # stuck behind a long batch: drop it, answer now
                    res = GenResult(error="DEADLINE_EXCEEDED: deadline passed while waiting for a batch slot")
                if res.error:
                    status = split_error(res.error)[0]
                    self._abort_item(context, res.error)
                return response_to_pb(res, backend.model)
        except BackendError as exc:
            status = exc.code
            self._backend_error(context, exc)
        finally:
            _REQUESTS.labels("Generate", status).inc()
            _LATENCY.labels("Generate").observe(time.perf_counter() - start)

    def GenerateStream(self, request, context):
        start = time.perf_counter()
        gen_req = self._parse_request(request, context)
        if gen_req.params.n != 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "GenerateStream streams one completion; set params.n to 1")
        status = "OK"
        deltas: queue.Queue[str] = queue.Queue()
        try:
            with self.pool.lease(request.model) as backend:
                fut = backend.submit(
                    gen_req,
                    cancel=_cancel_token(context),
                    deadline=_deadline(context),
                    on_delta=lambda i, d: deltas.put(d),
                )
                while True:
                    try:
                        d = deltas.get(timeout=0.05)
                    except queue.Empty:
                        if fut.done() and deltas.empty():
                            break
                        if not context.is_active():
                            return
                        continue
                    yield inference_pb2.GenerateChunk(text_delta=d)
                res = fut.result()
                if res.error:
                    status = split_error(res.error)[0]
                    self._abort_item(context, res.error)
                yield inference_pb2.GenerateChunk(
                    done=True,
                    completion=completion_to_pb(res.completions[0]) if res.completions else None,
                    usage=inference_pb2.Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens),
                )
        except BackendError as exc:
            status = exc.code
            self._backend_error(context, exc)
        finally:
            _REQUESTS.labels("GenerateStream", status).inc()
            _LATENCY.labels("GenerateStream").observe(time.perf_counter() - start)

    def GenerateBatch(self, request, context):
        start = time.perf_counter()
        token = _cancel_token(context)
        deadline = _deadline(context)
        parsed: list[GenRequest | None] = []
        for r in request.requests:
            try:
                parsed.append(gen_request_from_pb(r))
            except (ValueError, ValidationError) as exc:
                parsed.append(None)
                log.debug("bad batch item", extra={"error": str(exc)})
        leases = {}
        try:
            futures = {}
            errors: list[tuple[int, str, str]] = []
            with contextlib.ExitStack() as stack:
                for i, (pb_req, gen_req) in enumerate(zip(request.requests, parsed)):
                    if gen_req is None:
                        errors.append((i, "INVALID_ARGUMENT", "malformed request (bad JSON in tools or arguments)"))
                        continue
                    key = pb_req.model
                    if key not in leases:
                        try:
                            leases[key] = stack.enter_context(self.pool.lease(key))
                        except BackendError as exc:
                            leases[key] = exc
                    backend = leases[key]
                    if isinstance(backend, BackendError):
                        errors.append((i, backend.code, str(backend)))
                        continue
                    futures[backend.submit(gen_req, cancel=token, deadline=deadline)] = (i, backend.model)
                for i, code, msg in errors:
                    _REQUESTS.labels("GenerateBatch", code).inc()
                    yield inference_pb2.GenerateBatchItem(index=i, error=common_pb2.Error(code=code, message=msg))
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                    if not context.is_active():
                        token.cancel()
                        return
                    for f in done:
                        i, model = futures[f]
                        res = f.result()
                        if res.error:
                            code, msg = split_error(res.error)
                            _REQUESTS.labels("GenerateBatch", code).inc()
                            yield inference_pb2.GenerateBatchItem(index=i, error=common_pb2.Error(code=code, message=msg))
                        else:
                            _REQUESTS.labels("GenerateBatch", "OK").inc()
                            yield inference_pb2.GenerateBatchItem(index=i, response=response_to_pb(res, model))
        finally:
            token.cancel()  # anything still queued for a departed client is dropped
            _LATENCY.labels("GenerateBatch").observe(time.perf_counter() - start)

    # -- probe / judge ------------------------------------------------------------------------

    def _output_uri(self, stage: str, *parts: object) -> str:
        key = hashlib.sha256(canonical_json([str(p) for p in parts]).encode()).hexdigest()[:16]
        return f"{self.cfg.storage.base_uri()}/{stage}/{stage}-{key}"

    def _stream_stage(self, events: Iterator, context, token: CancelToken) -> Iterator:
        finished = False
        try:
            for ev in events:
                if not context.is_active():
                    token.cancel()
                    return
                finished = finished or isinstance(ev, StageResult)
                yield stage_event_to_pb(ev)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except (StorageError, ToolSchemaError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except BackendError as exc:
            self._backend_error(context, exc)
        finally:
            token.cancel()
        if not finished and context.is_active():  # stopped early (deadline): say so, do not just end
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(context) else grpc.StatusCode.ABORTED
            context.abort(code, "stage stopped before finishing; finished chunks are kept, re-run to resume")

    def Probe(self, request, context):
        if not request.HasField("dataset") or not request.dataset.uri:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ProbeRequest.dataset is required")
        try:
            spec = ProbeSpec.model_validate_json(request.config_json) if request.config_json else ProbeSpec()
            updates = {}
            if request.k > 0:
                updates["k"] = request.k
            if request.temperature > 0:
                updates["temperature"] = request.temperature
            if request.max_tokens > 0:
                updates["maxTokens"] = request.max_tokens
            spec = ProbeSpec.model_validate({**spec.model_dump(), **updates})
            dataset = dataset_from_pb(request.dataset)
        except (ValidationError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ProbeRequest: {exc}")
        model_key = self.pool.key(request.model_uri)
        out = request.output_prefix or self._output_uri(
            "probe", dataset.content_hash or dataset.uri, model_key, spec.model_dump_json(), request.round
        )
        token = _cancel_token(context)
        try:
            with self.pool.lease(request.model_uri) as backend:
                gen = BoundGenerator(backend, token, _deadline(context))
                events = run_probe(
                    gen, dataset, out, spec, request.round,
                    batch_size=self.cfg.inference.max_batch_size, s3=self.cfg.storage.s3, cancel=token,
                )
                yield from self._stream_stage(events, context, token)
        except BackendError as exc:
            self._backend_error(context, exc)

    def _judge_backend_lease(self, spec: JudgeSpec):
        if spec.model:
            return self.pool.lease(spec.model)
        if self.judge_pool is not None:
            return self.judge_pool.lease("")
        return self.pool.lease("")

    def Judge(self, request, context):
        if not request.HasField("probe_results") or not request.probe_results.uri:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "JudgeRequest.probe_results is required")
        try:
            spec = JudgeSpec.model_validate_json(request.config_json) if request.config_json else JudgeSpec()
            if request.votes > 0:
                spec = JudgeSpec.model_validate({**spec.model_dump(), "votes": request.votes})
            probe_ref = dataset_from_pb(request.probe_results)
        except (ValidationError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"JudgeRequest: {exc}")
        out = request.output_prefix or self._output_uri(
            "judge", probe_ref.content_hash or probe_ref.uri, spec.model_dump_json(), request.round,
            *([self.pool.key(request.policy_model)] if spec.candidates > 0 else []),
        )
        token = _cancel_token(context)
        batch = self.cfg.inference.max_batch_size
        try:
            with contextlib.ExitStack() as stack:
                sampler = None
                if spec.candidates > 0:
                    policy = stack.enter_context(self.pool.lease(request.policy_model))
                    sampler = CandidateSampler(
                        BoundGenerator(policy, token, _deadline(context)), spec.candidates,
                        spec.candidateTemperature, spec.candidateMaxTokens, request.round,
                    )
                if spec.backend == "grounding":
                    events = run_judge(GroundingJudge(), probe_ref, out, spec, request.round, batch_size=batch,
                                       s3=self.cfg.storage.s3, cancel=token, candidates=sampler)
                else:
                    backend = stack.enter_context(self._judge_backend_lease(spec))
                    judge = LLMJudge(BoundGenerator(backend, token, _deadline(context)), votes=spec.votes, seed=request.round)
                    events = run_judge(judge, probe_ref, out, spec, request.round, batch_size=max(1, batch // spec.votes),
                                       s3=self.cfg.storage.s3, cancel=token, candidates=sampler)
                yield from self._stream_stage(events, context, token)
        except BackendError as exc:
            self._backend_error(context, exc)

    def ModelInfo(self, request, context):
        s = self.cfg.inference
        max_context = s.max_context
        loaded = self.pool.loaded()
        key = self.pool.key("")
        if key in loaded:
            max_context = self.pool.get("").max_context
        return inference_pb2.ModelInfoResponse(backend=s.backend, model=key, max_context=max_context)

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
        SERVICE, register, host=host, port=port, metrics_port=metrics_port, workers=cfg.services.inference.workers
    )
    running.servicer = servicer  # type: ignore[attr-defined]
    original_stop = running.stop

    def stop(grace: float = 2.0) -> None:
        original_stop(grace)
        servicer.close()

    running.stop = stop  # type: ignore[method-assign]
    return running
