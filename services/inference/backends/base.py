"""What every inference backend shares: the submit/cancel API on top of ``Generator``, error codes,
and a request queue + worker thread that groups concurrent requests into batches.

``Generator.generate(list[GenRequest])`` is the interface agents code against. Servers need more:
one request at a time with a cancel flag, a deadline and a streaming callback. ``Backend.submit``
gives that and returns a ``Future``; ``generate`` is ``submit`` for each request, then wait.

Per-item errors travel in ``GenResult.error`` as ``"CODE: message"`` where CODE is a gRPC status
name (INVALID_ARGUMENT, DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL);
``split_error`` takes it apart again, so the server can map it to a status without guessing.
"""

from __future__ import annotations

import abc
import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from looptool.shared import metrics
from looptool.shared.errors import ServiceError
from looptool.shared.generation import Completion, GenRequest, GenResult
from looptool.shared.logs import get_logger
from looptool.shared.toolcall_format import parse_tool_calls

log = get_logger("looptool.inference")

ERROR_CODES = (
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "INTERNAL",
)

# (completion index, text delta) — called from the worker thread as text is produced.
DeltaCallback = Callable[[int, str], None]


class BackendError(ServiceError, RuntimeError):
    """The backend cannot serve at all (model missing, dependency missing); names the fix."""

    def __init__(self, message: str, code: str = "FAILED_PRECONDITION"):
        super().__init__(message, code)


def error(code: str, message: str) -> str:
    assert code in ERROR_CODES, code
    return f"{code}: {message}"


ABORT_CODES = ("CANCELLED", "DEADLINE_EXCEEDED")


class Aborted(RuntimeError):
    """A bulk stage stops because its caller went away or its deadline passed. The unfinished
    chunk is not written (so a resumed run redoes it exactly as an uninterrupted run would)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def raise_if_aborted(results: "list[GenResult]") -> None:
    for r in results:
        if r.error:
            code, msg = split_error(r.error)
            if code in ABORT_CODES:
                raise Aborted(code, msg)


def split_error(text: str) -> tuple[str, str]:
    """``"CODE: message"`` → (CODE, message); text without a known code → ("INTERNAL", text)."""
    head, sep, rest = text.partition(": ")
    if sep and head in ERROR_CODES:
        return head, rest
    return "INTERNAL", text


def completion_from_text(text: str, finish_reason: str, mean_logprob: float) -> Completion:
    """Model text → Completion with its tool calls parsed (strict parser; errors in parse_error)."""
    parsed = parse_tool_calls(text)
    return Completion(
        text=text,
        tool_calls=parsed.calls,
        parse_error=str(parsed.error) if parsed.error else "",
        finish_reason=finish_reason,
        mean_logprob=mean_logprob,
    )


class CancelToken:
    """A flag a caller sets to stop work on its request (gRPC cancellation, a client that went away)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def request_rows(req: GenRequest) -> int:
    return max(1, int(req.params.n or 1))


class Backend(abc.ABC):
    """A ``Generator`` that also takes one request at a time with cancellation, deadline and streaming."""

    backend_name: str = ""
    model: str = ""
    max_context: int = 0

    @abc.abstractmethod
    def submit(
        self,
        request: GenRequest,
        *,
        cancel: CancelToken | None = None,
        deadline: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> "Future[GenResult]":
        """Queue one request. ``deadline`` is a ``time.monotonic()`` instant. The future never raises
        for a per-item problem: the result carries ``error``."""

    def submit_many(
        self, requests: list[GenRequest], *, cancel: CancelToken | None = None, deadline: float | None = None
    ) -> "list[Future[GenResult]]":
        """Queue several requests at once. Queued backends enqueue them atomically, so a list that
        arrives at an idle backend is always cut into the same batches (bit-reproducible probes)."""
        return [self.submit(r, cancel=cancel, deadline=deadline) for r in requests]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.generate_with(requests)

    def generate_with(
        self, requests: list[GenRequest], cancel: CancelToken | None = None, deadline: float | None = None
    ) -> list[GenResult]:
        futures = self.submit_many(requests, cancel=cancel, deadline=deadline)
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as exc:  # a backend bug must not take the batch down
                out.append(GenResult(error=error("INTERNAL", f"{type(exc).__name__}: {exc}")))
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def info(self) -> dict:
        return {"backend": self.backend_name, "model": self.model, "max_context": self.max_context}


class QueuedBackend(Backend):
    """A backend whose requests go through a ``BatchingQueue``: subclasses set ``self.queue`` and
    implement ``_prepare`` (validate and tokenize one request; return its future and the job to
    queue, or no job when the future is already finished with a per-item error)."""

    queue: "BatchingQueue"

    @abc.abstractmethod
    def _prepare(
        self,
        request: GenRequest,
        cancel: CancelToken | None,
        deadline: float | None,
        on_delta: DeltaCallback | None,
    ) -> "tuple[Future[GenResult], Job | None]": ...

    def submit(
        self,
        request: GenRequest,
        *,
        cancel: CancelToken | None = None,
        deadline: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> "Future[GenResult]":
        fut, job = self._prepare(request, cancel, deadline, on_delta)
        if job is not None:
            self.queue.put(job)
        return fut

    def submit_many(self, requests, *, cancel=None, deadline=None):
        prepared = [self._prepare(r, cancel, deadline, None) for r in requests]
        self.queue.put_many([job for _, job in prepared if job is not None])
        return [fut for fut, _ in prepared]

    def close(self) -> None:
        self.queue.close()
        pin = getattr(self, "model_pin", None)
        if pin is not None:
            pin.release()  # the checkpoint may now be evicted from the model cache


class BoundGenerator:
    """A ``Generator`` view of a backend whose calls all share one cancel token and deadline
    (a Probe or Judge RPC: when the client goes away, every queued generation stops)."""

    def __init__(self, backend: Backend, cancel: CancelToken | None = None, deadline: float | None = None):
        self.backend, self.cancel, self.deadline = backend, cancel, deadline

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.backend.generate_with(requests, cancel=self.cancel, deadline=self.deadline)


# ---------------------------------------------------------------------------------------------
# Batching queue


@dataclass
class Job:
    request: GenRequest
    future: "Future[GenResult]"
    cancel: CancelToken | None = None
    deadline: float | None = None
    on_delta: DeltaCallback | None = None
    enqueued: float = field(default_factory=time.monotonic)
    rows: int = 1
    payload: object = None  # backend-specific preparation (e.g. prompt token ids)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.cancelled

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def finish(self, result: GenResult) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail_if_dead(self) -> bool:
        """Finish a cancelled/expired job with the matching error; True when it was dead."""
        if self.cancelled:
            self.finish(GenResult(error=error("CANCELLED", "request cancelled by the caller")))
            return True
        if self.expired:
            self.finish(GenResult(error=error("DEADLINE_EXCEEDED", "deadline passed before the request finished")))
            return True
        return False


_BATCH_SIZE = metrics.histogram(
    "inference", "batch_size", "Completions (rows) per model batch", ["backend"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
_QUEUE_DEPTH = metrics.gauge("inference", "queue_depth", "Requests waiting for a batch slot", ["backend"])
_QUEUE_WAIT = metrics.histogram("inference", "queue_wait_seconds", "Time requests wait in the queue", ["backend"])


class BatchingQueue:
    """A request queue and one worker thread: each turn it takes the oldest request, waits
    ``batch_wait_ms`` for more (each arrival extends the wait by ``batch_wait_ms``, at most 20x in
    all; up to ``max_batch_size`` rows, a request with ``n`` completions counting ``n``), drops
    cancelled/expired ones, and hands the group to ``run_batch``.

    Requests that arrive while a batch runs wait for the next one (no continuous batching).
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[Job]], None],
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
    ):
        self.name = name
        self.run_batch = run_batch
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait = max(0.0, batch_wait_ms) / 1000.0
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.batch_sizes: list[int] = []  # recent batch sizes (for tests and the bench)
        self._depth = _QUEUE_DEPTH.labels(name)
        self._thread = threading.Thread(target=self._loop, name=f"{name}-batcher", daemon=True)
        self._thread.start()

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                job.finish(GenResult(error=error("UNAVAILABLE", "backend is shutting down")))
                return
            self._pending.append(job)
            self._depth.set(len(self._pending))
            self._cond.notify()

    def put_many(self, jobs: list[Job]) -> None:
        with self._cond:
            if self._closed:
                for job in jobs:
                    job.finish(GenResult(error=error("UNAVAILABLE", "backend is shutting down")))
                return
            self._pending.extend(jobs)
            self._depth.set(len(self._pending))
            self._cond.notify()

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending), collections.deque()
            self._depth.set(0)
            self._cond.notify_all()
        for job in pending:
            job.finish(GenResult(error=error("UNAVAILABLE", "backend is shutting down")))
        self._thread.join(timeout)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch: list[Job] = []
            rows = 0
            # Wait ``batch_wait`` for company; every arrival extends the window by ``batch_wait``
            # (a burst of requests that trickles in ends up in one batch), up to 20x in total.
            first = time.monotonic()
            until = first + self.batch_wait
            cap = first + 20 * self.batch_wait
            while True:
                while self._pending and rows < self.max_batch_size:
                    job = self._pending[0]
                    if job.fail_if_dead():
                        self._pending.popleft()
                        continue
                    if batch and rows + job.rows > self.max_batch_size:
                        break
                    self._pending.popleft()
                    batch.append(job)
                    rows += job.rows
                if rows >= self.max_batch_size or (self._pending and batch and rows + self._pending[0].rows > self.max_batch_size):
                    break
                remaining = until - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
                if self._pending:  # something arrived: give the burst a little longer
                    until = min(cap, max(until, time.monotonic() + self.batch_wait))
            self._depth.set(len(self._pending))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            now = time.monotonic()
            rows = sum(j.rows for j in batch)
            for j in batch:
                _QUEUE_WAIT.labels(self.name).observe(now - j.enqueued)
            _BATCH_SIZE.labels(self.name).observe(rows)
            self.batches_run += 1
            self.batch_sizes.append(rows)
            del self.batch_sizes[:-1000]
            try:
                self.run_batch(batch)
            except Exception as exc:  # the worker survives; every job in the batch gets the error
                log.exception("batch failed", extra={"backend": self.name, "rows": rows})
                for j in batch:
                    j.finish(GenResult(error=error("INTERNAL", f"batch failed: {type(exc).__name__}: {exc}")))
            finally:
                for j in batch:  # a run_batch that forgot a job must not hang its caller
                    if not j.future.done():
                        j.finish(GenResult(error=error("INTERNAL", "backend returned no result for this request")))
