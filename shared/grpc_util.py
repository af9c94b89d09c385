"""gRPC plumbing shared by every service: server with health + reflection + metrics, client channels,
and ``handle_errors``, the one mapping from typed errors to status codes that every servicer method uses.

Servicers raise; they never call ``context.abort`` themselves. ``STATUS_OF_ERROR`` is the table: the
nearest class in an exception's MRO that the table names gives the code (so ``NotFound`` has its own
row under ``StorageError``). A ``ServiceError`` (``BackendError``, ``SessionError``, ...) names its own
code. Anything else is a bug: ``INTERNAL`` with ``"Type: message"`` (no traceback), logged here.
"""

from __future__ import annotations

import functools
import inspect
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from looptool.shared.config import ConfigError
from looptool.shared.errors import InputError, ServiceError
from looptool.shared.logs import get_logger
from looptool.shared.metrics import MetricsInterceptor, serve_metrics
from looptool.shared.schema import ToolSchemaError
from looptool.shared.storage.base import NotFound, StorageError

log = get_logger("looptool.grpc")

Code = grpc.StatusCode

STATUS_OF_ERROR: Mapping[type[BaseException], grpc.StatusCode] = {
    # bad input (InputError, ConfigError and pydantic's ValidationError are ValueErrors too)
    ValueError: Code.INVALID_ARGUMENT,
    InputError: Code.INVALID_ARGUMENT,
    ConfigError: Code.INVALID_ARGUMENT,
    ValidationError: Code.INVALID_ARGUMENT,
    # the inputs exist but cannot be used as they are
    ToolSchemaError: Code.FAILED_PRECONDITION,
    StorageError: Code.FAILED_PRECONDITION,
    NotFound: Code.NOT_FOUND,
}


def status_of(exc: BaseException, codes: Mapping[type[BaseException], grpc.StatusCode] = STATUS_OF_ERROR) -> grpc.StatusCode | None:
    """The status ``exc`` ends an RPC with; None for an exception no table row covers (a bug)."""
    if isinstance(exc, ServiceError):
        return Code.__members__.get(exc.code, Code.INTERNAL)
    for cls in type(exc).__mro__:
        if cls in codes:
            return codes[cls]
    return None


def _abort(context: grpc.ServicerContext, exc: Exception, codes: Mapping[type[BaseException], grpc.StatusCode],
           unexpected: str, rpc: str) -> None:
    code = status_of(exc, codes)
    if code is None:
        log.error("rpc failed", exc_info=exc, extra={"rpc": rpc})
        context.abort(Code.INTERNAL, f"{unexpected}: {type(exc).__name__}: {exc}" if unexpected else f"{type(exc).__name__}: {exc}")
    context.abort(code, str(exc))


def _aborted(context: grpc.ServicerContext) -> bool:
    """``context.abort`` raises a bare Exception after setting the code: let that one through."""
    code = getattr(context, "code", None)
    return callable(code) and code() is not None


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(method: F | None = None, *, codes: Mapping[type[BaseException], grpc.StatusCode] | None = None,
                  unexpected: str = "") -> Any:
    """Decorate a servicer method (unary or server-streaming, sync): a raised error ends the call with
    its status from ``STATUS_OF_ERROR`` (``codes`` overrides rows for one service) and ``str(exc)``
    as details; an unexpected one with ``INTERNAL`` and ``"<unexpected>: Type: message"``. Per-item
    errors a stream reports as events are not exceptions and are not touched."""
    table = {**STATUS_OF_ERROR, **(codes or {})}

    def wrap(fn: F) -> F:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(self, request, context)
                except Exception as exc:  # noqa: BLE001 - every error becomes a status here
                    if _aborted(context):
                        raise
                    _abort(context, exc, table, unexpected, fn.__name__)

            return stream  # type: ignore[return-value]

        @functools.wraps(fn)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status here
                if _aborted(context):
                    raise
                _abort(context, exc, table, unexpected, fn.__name__)

        return unary  # type: ignore[return-value]

    return wrap(method) if method is not None else wrap

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
                # types-grpcio-health-checking declares HealthStub without its methods
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)  # type: ignore[attr-defined]
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.2)
    raise TimeoutError(f"service at {address} not healthy after {timeout:.0f}s ({last})")
