"""gRPC plumbing shared by every service: server with health + reflection + metrics, client channels."""

from __future__ import annotations

import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from looptool.shared.logs import get_logger
from looptool.shared.metrics import MetricsInterceptor, serve_metrics

log = get_logger("looptool.grpc")

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start_server(
    service_name: str,
    register: Callable[[grpc.Server], list[str]],
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int = 0,
    workers: int = 8,
) -> RunningServer:
    """Build and start a server; ``register`` adds servicers and returns their full service names."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=service_name),
        interceptors=[MetricsInterceptor(service_name)],
        # no SO_REUSEPORT: a second server on a busy port must fail, not silently share it
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
    )
    names = register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for n in names:
        health_servicer.set(n, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"{service_name}: cannot bind {host}:{port}; pick a free port (services.{service_name}.port)")
    server.start()
    try:
        mport = serve_metrics(metrics_port) if metrics_port else 0
    except OSError as exc:
        server.stop(0)
        raise OSError(
            f"{service_name}: cannot serve metrics on port {metrics_port} ({exc.strerror or exc}); "
            f"pick a free port (services.{service_name}.metrics_port)"
        ) from exc
    log.info("serving", extra={"service": service_name, "address": f"{host}:{bound}", "metrics_port": mport})
    return RunningServer(server=server, port=bound, health=health_servicer, metrics_port=mport)


def wait_for_termination(running: RunningServer) -> None:
    """Block until SIGTERM/SIGINT, then drain gracefully."""
    done = threading.Event()

    def _stop(*_):
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    done.wait()
    running.stop(grace=5.0)


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def wait_healthy(address: str, timeout: float = 60.0, service: str = "") -> None:
    """Block until the server at ``address`` reports SERVING (raises TimeoutError otherwise)."""
    import time

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.2)
    raise TimeoutError(f"service at {address} not healthy after {timeout:.0f}s ({last})")
