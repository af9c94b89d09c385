"""gRPC plumbing shared by every service: server with health + reflection + metrics, client channels,
transport security (TLS, optional mutual TLS, a bearer token on every RPC; ``security:`` in the config)
and ``handle_errors``, the one mapping from typed errors to status codes that every servicer method uses.

Servicers raise; they never call ``context.abort`` themselves. ``STATUS_OF_ERROR`` is the table: the
nearest class in an exception's MRO that the table names gives the code (so ``NotFound`` has its own
row under ``StorageError``). A ``ServiceError`` (``BackendError``, ``SessionError``, ...) names its own
code. Anything else is a bug: ``INTERNAL`` with ``"Type: message"`` (no traceback), logged here.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from looptool.shared.config import ConfigError, SecuritySettings
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


# Health checks answer without a token: kubelet probes and load balancers cannot send one, and a
# health status reveals nothing. Every other method (reflection included) needs the token.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
TOKEN_HEADER = "authorization"


def _read_file(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"security.{field}: cannot read {path} ({exc.strerror or exc}); mount the file or fix the path") from None


def read_token(security: SecuritySettings | None) -> str:
    """The bearer token from ``security.token_file`` ("" = no token configured)."""
    if security is None or not security.token_file:
        return ""
    token = _read_file(security.token_file, "token_file").decode("utf-8", "replace").strip()
    if not token:
        raise ConfigError(f"security.token_file: {security.token_file} is empty; put the token in it or unset token_file")
    return token


def _check_pair(security: SecuritySettings) -> None:
    if bool(security.tls_cert_file) != bool(security.tls_key_file):
        raise ConfigError("security.tls_cert_file and security.tls_key_file: set both (TLS) or neither")
    if security.require_client_cert and not (security.tls_cert_file and security.tls_ca_file):
        raise ConfigError(
            "security.require_client_cert: needs tls_cert_file, tls_key_file and tls_ca_file (the CA client certificates are checked against)"
        )


def server_credentials(security: SecuritySettings | None) -> grpc.ServerCredentials | None:
    """TLS credentials of a server (None = plaintext): its certificate and key, and with
    ``require_client_cert`` the CA every client certificate must chain to (mutual TLS)."""
    if security is None:
        return None
    _check_pair(security)
    if not security.tls_cert_file:
        return None
    pair = (_read_file(security.tls_key_file, "tls_key_file"), _read_file(security.tls_cert_file, "tls_cert_file"))
    ca = _read_file(security.tls_ca_file, "tls_ca_file") if security.require_client_cert else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=security.require_client_cert)


def channel_credentials(security: SecuritySettings | None) -> grpc.ChannelCredentials | None:
    """TLS credentials of a client (None = plaintext): TLS once a CA or a certificate is configured;
    the server is checked against ``tls_ca_file`` (else the system roots), and the client presents
    its own certificate when it has one (needed where servers require client certificates)."""
    if security is None:
        return None
    _check_pair(security)
    if not (security.tls_ca_file or security.tls_cert_file):
        return None
    ca = _read_file(security.tls_ca_file, "tls_ca_file") if security.tls_ca_file else None
    key = _read_file(security.tls_key_file, "tls_key_file") if security.tls_key_file else None
    cert = _read_file(security.tls_cert_file, "tls_cert_file") if security.tls_cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _same_kind(handler: grpc.RpcMethodHandler, fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind (unary/stream in and out) that runs ``fn`` instead."""
    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(fn, *args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(fn, *args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(fn, *args)
    return grpc.stream_stream_rpc_method_handler(fn, *args)


class TokenInterceptor(grpc.ServerInterceptor):
    """Every RPC but the health checks must carry ``authorization: Bearer <token>``; otherwise it
    ends UNAUTHENTICATED before the servicer runs. Compared in constant time."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        if handler_call_details.method in OPEN_METHODS:
            return continuation(handler_call_details)
        got = next((v for k, v in handler_call_details.invocation_metadata or () if k == TOKEN_HEADER), "")
        if isinstance(got, str) and hmac.compare_digest(got.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        reason = "no bearer token" if not got else "wrong bearer token"

        def deny(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(Code.UNAUTHENTICATED, f"{reason}; send 'authorization: Bearer <token>' (the file security.token_file names)")

        return _same_kind(handler, deny)


class _TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call's metadata (works over TLS and plaintext alike, unlike
    call credentials, which gRPC sends only over TLS)."""

    def __init__(self, token: str):
        self._header = (TOKEN_HEADER, f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


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
    security: SecuritySettings | None = None,
) -> RunningServer:
    """Build and start a server; ``register`` adds servicers and returns their full service names.
    ``security`` (the config's ``security:``): TLS / mutual TLS, the bearer token, the metrics
    address; None = plaintext, no token, metrics on 127.0.0.1."""
    creds = server_credentials(security)  # a missing file fails here, before anything binds
    token = read_token(security)
    interceptors: list[grpc.ServerInterceptor] = [TokenInterceptor(token)] if token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=service_name),
        interceptors=[*interceptors, MetricsInterceptor(service_name)],
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
        address = f"{host}:{port}"
        bound = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"{service_name}: cannot bind {host}:{port}; pick a free port (services.{service_name}.port)")
    server.start()
    try:
        metrics_host = security.metrics_host if security is not None else "127.0.0.1"
        mport = serve_metrics(metrics_port, addr=metrics_host) if metrics_port else 0
    except OSError as exc:
        server.stop(0)
        raise OSError(
            f"{service_name}: cannot serve metrics on {metrics_host}:{metrics_port} ({exc.strerror or exc}); "
            f"pick a free port (services.{service_name}.metrics_port)"
        ) from exc
    log.info("serving", extra={"service": service_name, "address": f"{host}:{bound}", "metrics_port": mport,
                               "tls": creds is not None, "token": bool(token)})
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


def channel(address: str, security: SecuritySettings | None = None, extra_options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A client channel to ``address`` with ``security``'s credentials (None = plaintext, no token):
    every client of every service opens its channels here. ``extra_options``: e.g. a load-balancing
    policy for a target that resolves to several replicas."""
    creds = channel_credentials(security)
    options: list[tuple[str, Any]] = [*CHANNEL_OPTIONS, *extra_options]
    if security is not None and security.tls_server_name:
        options.append(("grpc.ssl_target_name_override", security.tls_server_name))
    ch = grpc.secure_channel(address, creds, options=options) if creds is not None else grpc.insecure_channel(address, options=options)
    token = read_token(security)
    return grpc.intercept_channel(ch, _TokenClientInterceptor(token)) if token else ch


def wait_healthy(address: str, timeout: float = 60.0, service: str = "", security: SecuritySettings | None = None) -> None:
    """Block until the server at ``address`` reports SERVING (raises TimeoutError otherwise)."""
    import time

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with channel(address, security) as ch:
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
