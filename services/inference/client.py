"""``InferenceClient``: the inference server over gRPC, as a ``Generator`` plus Probe/Judge helpers.

``generate`` sends one ``GenerateBatch`` and reassembles the streamed items by index, so callers see
exactly the in-process ``Generator`` contract: one ``GenResult`` per request, per-item errors in
``error`` (as ``"CODE: message"``). A server that is down or unreachable raises
``InferenceUnavailable`` with the address and how to start it.
"""

from __future__ import annotations

from typing import Generator, Iterable, Iterator

import grpc

from looptool.shared.config import SecuritySettings
from looptool.shared.generation import GenRequest, GenResult
from looptool.shared.grpc_util import channel
from looptool.shared.loop.manifest import JudgeSpec, ProbeSpec
from looptool.shared.proto_convert import (
    completion_from_pb,
    dataset_to_pb,
    gen_request_to_pb,
    gen_result_from_pb,
    stage_event_from_pb,
)
from looptool.shared.records import DatasetRef, ErrorInfo, Progress, StageResult
from looptool.v1 import inference_pb2, inference_pb2_grpc

StageEventValue = Progress | ErrorInfo | StageResult


class InferenceUnavailable(ConnectionError):
    """The inference server cannot be reached."""


class InferenceError(RuntimeError):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class InferenceClient:
    """A ``Generator`` backed by a remote inference server.

    ``model``: the model URI every request targets (empty = the server's default); ``timeout_s``:
    the deadline of each generation call (Probe/Judge take their own).
    """

    def __init__(self, address: str, model: str = "", timeout_s: float = 600.0, security: SecuritySettings | None = None):
        self.address, self.model, self.timeout_s = address, model, timeout_s
        self._channel = channel(address, security)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def _unavailable(self, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return InferenceUnavailable(
                f"inference server at {self.address} is not reachable ({details}); "
                "start it with `looptool serve inference` or check services.inference.host/port"
            )
        return InferenceError(code.name if code else "UNKNOWN", details or "")

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise InferenceUnavailable(
                f"inference server at {self.address} did not answer within {timeout:.0f}s; "
                "start it with `looptool serve inference`"
            ) from None

    # -- Generator ------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        batch = inference_pb2.GenerateBatchRequest(requests=[gen_request_to_pb(r, self.model) for r in requests])
        out: list[GenResult | None] = [None] * len(requests)
        try:
            for item in self._stub.GenerateBatch(batch, timeout=self.timeout_s):
                if item.HasField("error"):
                    out[item.index] = GenResult(error=f"{item.error.code}: {item.error.message}")
                else:
                    out[item.index] = gen_result_from_pb(item.response)
        except grpc.RpcError as exc:
            err = self._unavailable(exc)
            if isinstance(err, InferenceUnavailable):
                raise err from None
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            for i, r in enumerate(out):  # the stream broke (deadline, cancel): unfinished items fail
                if r is None:
                    out[i] = GenResult(error=f"{code}: {exc.details() if hasattr(exc, 'details') else exc}")
        return [r if r is not None else GenResult(error="INTERNAL: no result for this request") for r in out]

    def generate_one(self, request: GenRequest, timeout_s: float | None = None) -> GenResult:
        try:
            resp = self._stub.Generate(gen_request_to_pb(request, self.model), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from None
        return gen_result_from_pb(resp)

    def stream(self, request: GenRequest, timeout_s: float | None = None) -> Generator[str, None, GenResult | None]:
        """Yield text deltas; the generator's return value (StopIteration.value) is the GenResult."""
        try:
            for chunk in self._stub.GenerateStream(gen_request_to_pb(request, self.model), timeout=timeout_s or self.timeout_s):
                if chunk.text_delta:
                    yield chunk.text_delta
                if chunk.done:
                    return GenResult(
                        completions=[completion_from_pb(chunk.completion)] if chunk.HasField("completion") else [],
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from None
        return None

    # -- stages -------------------------------------------------------------------------------

    def _stage(self, call, request, timeout_s: float | None) -> Iterator[StageEventValue]:
        try:
            for ev in call(request, timeout=timeout_s):
                yield stage_event_from_pb(ev)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from None

    def probe(
        self,
        dataset: DatasetRef,
        output_prefix: str = "",
        spec: ProbeSpec | None = None,
        round: int = 0,
        model_uri: str = "",
        timeout_s: float | None = None,
    ) -> Iterator[StageEventValue]:
        spec = spec or ProbeSpec()
        req = inference_pb2.ProbeRequest(
            dataset=dataset_to_pb(dataset),
            output_prefix=output_prefix,
            k=spec.k,
            temperature=spec.temperature,
            max_tokens=spec.maxTokens,
            config_json=spec.model_dump_json(),
            round=round,
            model_uri=model_uri or self.model,
        )
        return self._stage(self._stub.Probe, req, timeout_s)

    def judge(
        self,
        probe_results: DatasetRef,
        output_prefix: str = "",
        spec: JudgeSpec | None = None,
        round: int = 0,
        timeout_s: float | None = None,
    ) -> Iterator[StageEventValue]:
        spec = spec or JudgeSpec()
        req = inference_pb2.JudgeRequest(
            probe_results=dataset_to_pb(probe_results),
            output_prefix=output_prefix,
            votes=spec.votes,
            config_json=spec.model_dump_json(),
            round=round,
        )
        return self._stage(self._stub.Judge, req, timeout_s)

    def model_info(self, timeout_s: float = 10.0) -> dict:
        try:
            r = self._stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from None
        return {"backend": r.backend, "model": r.model, "max_context": r.max_context}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drain(events: Iterable[StageEventValue]) -> tuple[StageResult | None, list[ErrorInfo], list[Progress]]:
    """Consume a stage stream: (final result, per-item errors, progress events)."""
    result, errors, progress = None, [], []
    for ev in events:
        if isinstance(ev, StageResult):
            result = ev
        elif isinstance(ev, ErrorInfo):
            errors.append(ev)
        else:
            progress.append(ev)
    return result, errors, progress


__all__ = ["InferenceClient", "InferenceError", "InferenceUnavailable", "drain"]
