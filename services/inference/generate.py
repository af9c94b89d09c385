"""Generation over the model pool for the ``Generate`` / ``GenerateStream`` / ``GenerateBatch`` RPCs:
model leases, the wait for a batch slot under the deadline, per-item errors and the request metrics.

Records in, records out (``GenRequest`` → ``GenResult``); ``server`` converts protobuf. A request
that fails as a whole raises (``BackendError``: the model cannot be served; ``ServiceError`` with
the result's ``"CODE: message"``); ``batch`` reports failed items as ``ErrorInfo`` and goes on.
"""

from __future__ import annotations

import contextlib
import queue
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Iterator

from looptool.shared import metrics
from looptool.shared.config import InferenceSettings
from looptool.shared.errors import ServiceError
from looptool.shared.generation import GenRequest, GenResult
from looptool.shared.records import ErrorInfo

from .backends import Backend, BackendError, CancelToken, split_error
from .pool import ModelPool

SERVICE = "inference"

_REQUESTS = metrics.counter(SERVICE, "generate_requests", "Generation requests by RPC and status", ["rpc", "status"])
_LATENCY = metrics.histogram(SERVICE, "generate_latency_seconds", "Generation request latency", ["rpc"])

MALFORMED = ErrorInfo(code="INVALID_ARGUMENT", message="malformed request (bad JSON in tools or arguments)")

BatchItem = tuple[int, GenResult | ErrorInfo, str]
"""(request index, its result or error, the model that served it)."""


def result_error(res: GenResult) -> ServiceError:
    """A failed result as the error that ends its RPC: ``"CODE: message"`` → status CODE."""
    code, msg = split_error(res.error)
    return ServiceError(msg, code)


class Generation:
    """The Generate* RPCs' work on ``pool``. ``cancel`` is set when the RPC ends; ``deadline`` is a
    ``time.monotonic()`` instant (None: none); ``active()`` says whether the caller is still there."""

    def __init__(self, pool: ModelPool):
        self.pool = pool

    def one(self, req: GenRequest, model: str, cancel: CancelToken, deadline: float | None) -> tuple[GenResult, str]:
        """(result, model that served it); a failed result raises ``result_error``."""
        start = time.perf_counter()
        status = "OK"
        try:
            with self.pool.lease(model) as backend:
                fut = backend.submit(req, cancel=cancel, deadline=deadline)
                try:
                    res = fut.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()) + 0.5)
                except FutureTimeout:
                    cancel.cancel()  # stuck behind a long batch: drop it, answer now
                    res = GenResult(error="DEADLINE_EXCEEDED: deadline passed while waiting for a batch slot")
                if res.error:
                    status = split_error(res.error)[0]
                    raise result_error(res)
                return res, backend.model
        except BackendError as exc:
            status = exc.code
            raise
        finally:
            _REQUESTS.labels("Generate", status).inc()
            _LATENCY.labels("Generate").observe(time.perf_counter() - start)

    def stream(
        self, req: GenRequest, model: str, cancel: CancelToken, deadline: float | None, active: Callable[[], bool]
    ) -> Iterator[str | GenResult]:
        """Text deltas, then the final ``GenResult``; ends quietly when the caller goes away."""
        if req.params.n != 1:
            raise ServiceError("GenerateStream streams one completion; set params.n to 1", "INVALID_ARGUMENT")
        start = time.perf_counter()
        status = "OK"
        deltas: queue.Queue[str] = queue.Queue()
        try:
            with self.pool.lease(model) as backend:
                fut = backend.submit(req, cancel=cancel, deadline=deadline, on_delta=lambda i, d: deltas.put(d))
                while True:
                    try:
                        d = deltas.get(timeout=0.05)
                    except queue.Empty:
                        if fut.done() and deltas.empty():
                            break
                        if not active():
                            return
                        continue
                    yield d
                res = fut.result()
                if res.error:
                    status = split_error(res.error)[0]
                    raise result_error(res)
                yield res
        except BackendError as exc:
            status = exc.code
            raise
        finally:
            _REQUESTS.labels("GenerateStream", status).inc()
            _LATENCY.labels("GenerateStream").observe(time.perf_counter() - start)

    def batch(
        self,
        items: list[tuple[GenRequest | ErrorInfo | None, str]],
        cancel: CancelToken,
        deadline: float | None,
        active: Callable[[], bool],
    ) -> Iterator[BatchItem]:
        """``items``: (request, model) pairs, None for one that did not parse. Results come in
        completion order, one per item; a model that cannot be served fails its items only."""
        start = time.perf_counter()
        leases: dict[str, Backend | BackendError] = {}
        try:
            futures: dict[Future, tuple[int, str]] = {}
            errors: list[tuple[int, ErrorInfo]] = []
            with contextlib.ExitStack() as stack:
                for i, (gen_req, key) in enumerate(items):
                    if gen_req is None or isinstance(gen_req, ErrorInfo):  # refused before the model saw it
                        errors.append((i, gen_req or MALFORMED))
                        continue
                    if key not in leases:
                        try:
                            leases[key] = stack.enter_context(self.pool.lease(key))
                        except BackendError as exc:
                            leases[key] = exc
                    backend = leases[key]
                    if isinstance(backend, BackendError):
                        errors.append((i, ErrorInfo(code=backend.code, message=str(backend))))
                        continue
                    futures[backend.submit(gen_req, cancel=cancel, deadline=deadline)] = (i, backend.model)
                for i, err in errors:
                    _REQUESTS.labels("GenerateBatch", err.code).inc()
                    yield i, err, ""
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                    if not active():
                        cancel.cancel()
                        return
                    for f in done:
                        i, model = futures[f]
                        res = f.result()
                        if res.error:
                            code, msg = split_error(res.error)
                            _REQUESTS.labels("GenerateBatch", code).inc()
                            yield i, ErrorInfo(code=code, message=msg), model
                        else:
                            _REQUESTS.labels("GenerateBatch", "OK").inc()
                            yield i, res, model
        finally:
            cancel.cancel()  # anything still queued for a departed client is dropped
            _LATENCY.labels("GenerateBatch").observe(time.perf_counter() - start)

    def model_info(self, settings: InferenceSettings) -> tuple[str, str, int]:
        """(backend, default model, max context): the loaded model's context when it is loaded."""
        max_context = settings.max_context
        key = self.pool.key("")
        if key in self.pool.loaded():
            max_context = self.pool.get("").max_context
        return settings.backend, key, max_context
