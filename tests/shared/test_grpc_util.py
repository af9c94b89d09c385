"""start_server: health, reflection and Prometheus metrics for every service."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


from looptool.shared.grpc_util import channel, start_server, wait_healthy
from looptool.v1 import toolsim_pb2, toolsim_pb2_grpc

from support.net import free_port

SERVICE = "looptool.v1.ToolSimulator"


class TinyToolSim(toolsim_pb2_grpc.ToolSimulatorServicer):
    def OpenSession(self, request, context):
        return toolsim_pb2.OpenSessionResponse(session_id=f"s-{len(request.tools)}", mode=request.mode or "llm")

    def Execute(self, request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "call.name: unknown tool")

    def CloseSession(self, request, context):
        raise RuntimeError("boom")


def register(server: grpc.Server) -> list[str]:
    toolsim_pb2_grpc.add_ToolSimulatorServicer_to_server(TinyToolSim(), server)
    return [SERVICE]


@pytest.fixture(scope="module")
def running():
    srv = start_server("grpctest", register, metrics_port=free_port())
    yield srv
    srv.stop(grace=0)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.index("}") + 1]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_health_serving(running):
    wait_healthy(running.address, timeout=20)
    wait_healthy(running.address, timeout=20, service=SERVICE)
    with channel(running.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as ei:
            stub.Check(health_pb2.HealthCheckRequest(service="looptool.v1.Nope"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service(running):
    with channel(running.address) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        desc = db.FindFileContainingSymbol(SERVICE)
        assert desc.package == "looptool.v1"


def test_metrics_count_rpcs_by_method_and_code(running):
    with channel(running.address) as ch:
        stub = toolsim_pb2_grpc.ToolSimulatorStub(ch)
        resp = stub.OpenSession(toolsim_pb2.OpenSessionRequest(mode="executable"), timeout=10)
        assert resp.session_id == "s-0" and resp.mode == "executable"
        with pytest.raises(grpc.RpcError) as ei:
            stub.Execute(toolsim_pb2.ExecuteRequest(session_id="x"), timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:
            stub.CloseSession(toolsim_pb2.CloseSessionRequest(session_id="x"), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNKNOWN
    text = scrape(running.metrics_port)
    name = "looptool_grpctest_rpc_requests_total"
    assert metric_value(text, name, method="OpenSession", code="OK") == 1.0, text
    assert metric_value(text, name, method="Execute", code="INVALID_ARGUMENT") == 1.0
    assert metric_value(text, name, method="CloseSession", code="UNKNOWN") == 1.0
    assert metric_value(text, "looptool_grpctest_rpc_latency_seconds_count", method="OpenSession") == 1.0
    assert metric_value(text, "looptool_grpctest_rpc_inflight", method="OpenSession") == 0.0
    # health checks are not counted as service traffic
    assert metric_value(text, name, method="Check") is None


def test_busy_port_is_a_clear_error(running):
    with pytest.raises(OSError, match=r"cannot bind 127\.0\.0\.1:\d+.*services\.other\.port"):
        start_server("other", register, port=running.port)


def test_wait_healthy_times_out_on_nothing():
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_healthy(f"127.0.0.1:{port}", timeout=0.5)
