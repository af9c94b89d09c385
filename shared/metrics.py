"""Prometheus metrics: consistent names (``looptool_<stage>_...``) and one HTTP endpoint per process."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Iterator

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NAMESPACE = "looptool"
_lock = threading.Lock()
_metrics: dict[str, object] = {}
_started_ports: set[int] = set()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _get(kind, stage: str, name: str, doc: str, labels: Iterable[str] = (), **kw):
    full = f"{NAMESPACE}_{stage}_{name}"
    with _lock:
        m = _metrics.get(full)
        if m is None:
            m = kind(full, doc, list(labels), **kw)
            _metrics[full] = m
        return m


def counter(stage: str, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    """``looptool_<stage>_<name>_total`` (prometheus-client appends ``_total``)."""
    return _get(Counter, stage, name, doc, labels)


def gauge(stage: str, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    return _get(Gauge, stage, name, doc, labels)


def histogram(stage: str, name: str, doc: str, labels: Iterable[str] = (), buckets=LATENCY_BUCKETS) -> Histogram:
    return _get(Histogram, stage, name, doc, labels, buckets=buckets)


def serve_metrics(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> int:
    """Expose /metrics on ``addr:port`` once per process (0 = disabled). Returns the port. Loopback
    by default; callers pass ``security.metrics_host`` (the chart sets 0.0.0.0 for Prometheus)."""
    if port <= 0:
        return 0
    with _lock:
        if port in _started_ports:
            return port
        start_http_server(port, addr=addr, registry=registry)
        _started_ports.add(port)
    return port


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts requests and observes latency per RPC: ``looptool_<service>_rpc_*``."""

    def __init__(self, service: str):
        self.requests = counter(service, "rpc_requests", "gRPC requests by method and status code", ["method", "code"])
        self.latency = histogram(service, "rpc_latency_seconds", "gRPC request latency", ["method"])
        self.inflight = gauge(service, "rpc_inflight", "gRPC requests in flight", ["method"])

    def intercept_service(self, continuation: Callable, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if method in ("Check", "Watch", "ServerReflectionInfo"):
            return handler
        requests, latency, inflight = self.requests, self.latency, self.inflight

        def _code(context) -> str:
            code = context.code() if hasattr(context, "code") else None
            return code.name if isinstance(code, grpc.StatusCode) else "OK"

        def _error_code(context) -> str:
            # context.abort() sets the status before raising; any other exception is UNKNOWN to the client
            code = _code(context)
            return code if code != "OK" else "UNKNOWN"

        def wrap_unary(fn):
            def inner(request, context):
                start = time.perf_counter()
                inflight.labels(method).inc()
                code = "OK"
                try:
                    return fn(request, context)
                except Exception:
                    code = _error_code(context)
                    raise
                finally:
                    inflight.labels(method).dec()
                    latency.labels(method).observe(time.perf_counter() - start)
                    requests.labels(method, code if code != "OK" else _code(context)).inc()

            return inner

        def wrap_stream(fn):
            def inner(request, context) -> Iterator:
                start = time.perf_counter()
                inflight.labels(method).inc()
                code = "OK"
                try:
                    yield from fn(request, context)
                except Exception:
                    code = _error_code(context)
                    raise
                finally:
                    inflight.labels(method).dec()
                    latency.labels(method).observe(time.perf_counter() - start)
                    requests.labels(method, code if code != "OK" else _code(context)).inc()

            return inner

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler
