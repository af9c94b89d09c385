"""handle_errors: one table from typed errors to status codes, for unary and server-streaming RPCs."""

from __future__ import annotations

import grpc
import pytest
from pydantic import BaseModel, ValidationError

from looptool.services.inference.backends import BackendError
from looptool.services.toolsim.simulator import SessionError
from looptool.shared.config import ConfigError
from looptool.shared.errors import InputError, ServiceError
from looptool.shared.grpc_util import STATUS_OF_ERROR, channel, handle_errors, start_server, status_of
from looptool.shared.proto_convert import stage_event_to_pb
from looptool.shared.records import ErrorInfo, Progress, StageResult
from looptool.shared.schema import ToolSchemaError
from looptool.shared.storage.base import NotFound, StorageError
from looptool.v1 import expander_pb2, expander_pb2_grpc, toolsim_pb2, toolsim_pb2_grpc

Code = grpc.StatusCode


class _Strict(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Strict.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


ERRORS = {
    "value": (lambda: ValueError("bad value"), Code.INVALID_ARGUMENT),
    "input": (lambda: InputError("spec.k", "must be > 0", "set it to 1"), Code.INVALID_ARGUMENT),
    "config": (lambda: ConfigError("inference.port: not a port"), Code.INVALID_ARGUMENT),
    "validation": (_validation_error, Code.INVALID_ARGUMENT),
    "schema": (lambda: ToolSchemaError("f", "parameters", "not an object"), Code.FAILED_PRECONDITION),
    "storage": (lambda: StorageError("s3://b/k: AccessDenied"), Code.FAILED_PRECONDITION),
    "notfound": (lambda: NotFound("s3://b/missing: no such dataset"), Code.NOT_FOUND),
    "service": (lambda: ServiceError("run r is already training", "ALREADY_EXISTS"), Code.ALREADY_EXISTS),
    "service-unknown-code": (lambda: ServiceError("odd", "NOT_A_CODE"), Code.INTERNAL),
    "backend": (lambda: BackendError("no model at /m", "NOT_FOUND"), Code.NOT_FOUND),
    "backend-default": (lambda: BackendError("vllm is not installed"), Code.FAILED_PRECONDITION),
    "session": (lambda: SessionError("unknown session 's'", code="NOT_FOUND"), Code.NOT_FOUND),
    "session-default": (lambda: SessionError("unknown mode 'x'"), Code.INVALID_ARGUMENT),
}


def _raise(name: str) -> None:
    if name == "boom":
        raise RuntimeError("boom\nsecond line")
    if name == "abort":
        return
    raise ERRORS[name][0]()


class Unary(toolsim_pb2_grpc.ToolSimulatorServicer):
    """``OpenSession.mode`` names the error to raise."""

    @handle_errors
    def OpenSession(self, request, context):
        if request.mode == "abort":  # a method that still aborts by itself keeps its status
            context.abort(Code.PERMISSION_DENIED, "denied")
        if request.mode:
            _raise(request.mode)
        return toolsim_pb2.OpenSessionResponse(session_id="s-1", mode="schema")

    @handle_errors(unexpected="execution failed")
    def Execute(self, request, context):
        _raise(request.session_id)


class Streaming(expander_pb2_grpc.ExpanderServicer):
    """``Expand.output_prefix`` names the error to raise after one progress event; empty: a
    stream with a per-item error event that still ends in its result."""

    @handle_errors(codes={NotFound: Code.FAILED_PRECONDITION})
    def Expand(self, request, context):
        yield stage_event_to_pb(Progress(stage="expand", done=1, total=2))
        if request.output_prefix:
            _raise(request.output_prefix)
        yield stage_event_to_pb(ErrorInfo(code="EXPANSION_EMPTY", message="seed s-1 yielded nothing", item_id="s-1"))
        yield stage_event_to_pb(StageResult(counts={"written": 1}))


def _register(server: grpc.Server) -> list[str]:
    toolsim_pb2_grpc.add_ToolSimulatorServicer_to_server(Unary(), server)
    expander_pb2_grpc.add_ExpanderServicer_to_server(Streaming(), server)
    return ["looptool.v1.ToolSimulator", "looptool.v1.Expander"]


@pytest.fixture(scope="module")
def stubs():
    srv = start_server("errtest", _register)
    ch = channel(srv.address)
    yield toolsim_pb2_grpc.ToolSimulatorStub(ch), expander_pb2_grpc.ExpanderStub(ch)
    ch.close()
    srv.stop(grace=0)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_unary_maps_each_error(stubs, name):
    unary, _ = stubs
    with pytest.raises(grpc.RpcError) as ei:
        unary.OpenSession(toolsim_pb2.OpenSessionRequest(mode=name), timeout=10)
    exc, code = ERRORS[name]
    assert ei.value.code() == code
    assert ei.value.details() == str(exc())


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_streaming_maps_each_error_after_the_events_sent(stubs, name):
    _, streaming = stubs
    got = []
    with pytest.raises(grpc.RpcError) as ei:
        for ev in streaming.Expand(expander_pb2.ExpandRequest(output_prefix=name), timeout=10):
            got.append(ev.WhichOneof("event"))
    exc, code = ERRORS[name]
    assert got == ["progress"]
    # this servicer overrides one row: a missing dataset is its caller's precondition
    assert ei.value.code() == (Code.FAILED_PRECONDITION if name == "notfound" else code)
    assert ei.value.details() == str(exc())


def test_unexpected_error_is_internal_without_a_traceback(stubs):
    unary, streaming = stubs
    with pytest.raises(grpc.RpcError) as ei:
        unary.OpenSession(toolsim_pb2.OpenSessionRequest(mode="boom"), timeout=10)
    assert ei.value.code() == Code.INTERNAL
    assert ei.value.details() == "RuntimeError: boom\nsecond line"
    with pytest.raises(grpc.RpcError) as ei:
        unary.Execute(toolsim_pb2.ExecuteRequest(session_id="boom"), timeout=10)
    assert ei.value.code() == Code.INTERNAL and ei.value.details() == "execution failed: RuntimeError: boom\nsecond line"
    with pytest.raises(grpc.RpcError) as ei:
        list(streaming.Expand(expander_pb2.ExpandRequest(output_prefix="boom"), timeout=10))
    assert ei.value.code() == Code.INTERNAL and "Traceback" not in ei.value.details()


def test_a_method_that_aborts_keeps_its_status(stubs):
    unary, _ = stubs
    with pytest.raises(grpc.RpcError) as ei:
        unary.OpenSession(toolsim_pb2.OpenSessionRequest(mode="abort"), timeout=10)
    assert ei.value.code() == Code.PERMISSION_DENIED and ei.value.details() == "denied"


def test_success_and_per_item_errors_pass_through(stubs):
    unary, streaming = stubs
    assert unary.OpenSession(toolsim_pb2.OpenSessionRequest(), timeout=10).session_id == "s-1"
    events = list(streaming.Expand(expander_pb2.ExpandRequest(), timeout=10))
    assert [e.WhichOneof("event") for e in events] == ["progress", "error", "result"]
    assert events[1].error.code == "EXPANSION_EMPTY" and events[2].result.counts["written"] == 1


def test_status_of_takes_the_nearest_row():
    assert status_of(NotFound("x")) == Code.NOT_FOUND  # its own row, not StorageError's
    assert status_of(ToolSchemaError("f", "name", "x")) == Code.FAILED_PRECONDITION  # not ValueError's
    assert status_of(SessionError("x", code="FAILED_PRECONDITION")) == Code.FAILED_PRECONDITION  # names its own
    assert status_of(KeyError("x")) is None  # a bug: INTERNAL
    assert status_of(StorageError("x"), {**STATUS_OF_ERROR, StorageError: Code.INVALID_ARGUMENT}) == Code.INVALID_ARGUMENT
