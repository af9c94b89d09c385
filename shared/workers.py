"""Worker processes for CPU-bound stage work (synthesis agents, expansion drafts, the grounding judge).

Threads do not help pure-Python work (the GIL); a :class:`WorkerPool` runs it in processes started
through ``forkserver`` (a clean process forks the workers, so a parent holding gRPC servers and
threads is never forked). The processes stay between runs (no start-up per request; their caches
stay warm); each builds a run's state once (``init(*init_args)``, read back with
:func:`worker_state`) and then runs small picklable tasks.

- Order: :meth:`WorkerPool.imap` yields results in input order with a bounded window in flight, so
  callers write in index order exactly as a sequential run would.
- Crashes: a worker that dies (killed, out of memory) breaks the pool; the unfinished tasks are
  resubmitted to a fresh pool up to ``max_restarts`` times (tasks are pure functions of their input,
  so a rerun gives the same result), then :class:`WorkerCrashed` names the task and the cause.
- Metrics: ``looptool_*`` counters and histograms incremented in a worker are diffed around each
  task and the differences are applied in the parent, so the parent's ``/metrics`` counts them.
  Gauges describe a process's own state (open sessions, in-flight requests) and stay per process.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, TypeVar

from prometheus_client import Counter, Histogram

from . import metrics

T = TypeVar("T")

_CONTEXT = "forkserver"  # never "fork": the parent runs gRPC servers and threads
_preload: set[str] = set()
_preload_lock = threading.Lock()


def cpu_quota() -> int | None:
    """CPUs allowed by a cgroup CPU quota (Kubernetes ``resources.limits.cpu``), if any."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]  # cgroup v2
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())  # cgroup v1
        period_us = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        if quota_us > 0 and period_us > 0:
            return max(1, quota_us // period_us)
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup quota (a pod limited to 2 CPUs
    on a 64-core node must not start 64 workers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        n = os.cpu_count() or 1
    q = cpu_quota()
    return max(1, min(n, q) if q else n)


def pool_size(requested: int | None, setting: int | None) -> int:
    """Worker processes for one run: the request's concurrency (None: no preference) capped by the
    service's ``processes`` setting (None: :func:`available_cpus`). 0 = run in the calling process."""
    cap = available_cpus() if setting is None else setting
    if cap <= 0:
        return 0
    return max(1, min(requested, cap)) if requested else cap


class WorkerCrashed(RuntimeError):
    """A worker process died (and restarting the pool did not get the work done)."""


# ----------------------------------------------------------------------------- metrics


def _metric_snapshot() -> dict[str, tuple[str, dict[tuple[str, ...], Any]]]:
    """``{full name: (kind, {label values: value})}`` of this process's looptool counters and histograms;
    a histogram's value is (per-bucket counts, sum)."""
    with metrics._lock:  # noqa: SLF001 - the registry of looptool metrics lives there
        items = list(metrics._metrics.items())  # noqa: SLF001
    out: dict[str, tuple[str, dict[tuple[str, ...], Any]]] = {}
    for full, m in items:
        if isinstance(m, Counter):
            vals: dict[tuple[str, ...], Any] = {}
            for fam in m.collect():
                for s in fam.samples:
                    if s.name.endswith("_total"):
                        vals[tuple(s.labels[k] for k in m._labelnames)] = s.value  # noqa: SLF001
            out[full] = ("counter", vals)
        elif isinstance(m, Histogram):
            hist: dict[tuple[str, ...], tuple[list[float], float]] = {}
            for fam in m.collect():
                cum: dict[tuple[str, ...], list[float]] = {}
                sums: dict[tuple[str, ...], float] = {}
                for s in fam.samples:
                    key = tuple(s.labels[k] for k in m._labelnames)  # noqa: SLF001
                    if s.name.endswith("_bucket"):
                        cum.setdefault(key, []).append(s.value)
                    elif s.name.endswith("_sum"):
                        sums[key] = s.value
                for key, c in cum.items():
                    hist[key] = ([c[0]] + [b - a for a, b in zip(c, c[1:])], sums.get(key, 0.0))
            out[full] = ("histogram", hist)
    return out


def _metric_deltas(before: dict, after: dict) -> list[tuple[str, str, str, tuple[str, ...], tuple[float, ...] | None, list]]:
    """What changed between two snapshots, with what the parent needs to create a missing metric:
    ``(full name, kind, doc, label names, buckets, [(label values, delta)])``."""
    out = []
    for full, (kind, vals) in after.items():
        old = before.get(full, (kind, {}))[1]
        changes = []
        for key, v in vals.items():
            if kind == "counter":
                d = v - old.get(key, 0.0)
                if d:
                    changes.append((key, d))
            else:
                ob, os_ = old.get(key, ([0.0] * len(v[0]), 0.0))
                db = [b - a for a, b in zip(ob, v[0])]
                if any(db):
                    changes.append((key, (db, v[1] - os_)))
        if changes:
            m: Any = metrics._metrics[full]  # noqa: SLF001
            buckets = tuple(m._upper_bounds) if kind == "histogram" else None  # noqa: SLF001
            out.append((full, kind, m._documentation, tuple(m._labelnames), buckets, changes))  # noqa: SLF001
    return out


def apply_metric_deltas(deltas: list) -> None:
    """Add a worker's metric changes to this process's metrics (created here if only the worker had them)."""
    for full, kind, doc, labelnames, buckets, changes in deltas:
        with metrics._lock:  # noqa: SLF001
            m: Any = metrics._metrics.get(full)  # noqa: SLF001
            if m is None:
                if kind == "counter":
                    m = Counter(full, doc, list(labelnames))
                else:
                    m = Histogram(full, doc, list(labelnames), buckets=[b for b in buckets if b != float("inf")])
                metrics._metrics[full] = m  # noqa: SLF001
        for key, d in changes:
            child = m.labels(*key) if labelnames else m
            if kind == "counter":
                child.inc(d)
            else:
                # no public "add n observations to bucket i": the per-bucket values are the histogram's own
                per_bucket, total = d
                for i, n in enumerate(per_bucket):
                    if n:
                        child._buckets[i].inc(n)  # noqa: SLF001
                child._sum.inc(total)  # noqa: SLF001


# ----------------------------------------------------------------------------- in the worker

_MAX_RUNS = 4  # run states a worker keeps (concurrent requests share the workers)
_runs: OrderedDict[str, Any] = OrderedDict()
_state: Any = None


def worker_state() -> Any:
    """What the current task's run ``init`` returned in this worker (agents, backends, tool pools)."""
    return _state


def _run_task(run: str, setup: bytes, fn: Callable[..., T], args: tuple) -> tuple[T, list]:
    """One task of run ``run``; its state is built from ``setup`` (the pickled init and its
    arguments) the first time this worker sees the run."""
    global _state
    if run not in _runs:
        init, init_args = pickle.loads(setup)
        _runs[run] = init(*init_args) if init is not None else None
        while len(_runs) > _MAX_RUNS:
            _runs.popitem(last=False)
    _runs.move_to_end(run)
    _state = _runs[run]
    before = _metric_snapshot()
    result = fn(*args)
    return result, _metric_deltas(before, _metric_snapshot())


# ----------------------------------------------------------------------------- in the parent

# The processes stay between runs, one executor per size: a request does not wait for workers to
# start, and what they cached (compiled schema validators, imported modules) is reused.
_executors: dict[int, ProcessPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(processes: int) -> ProcessPoolExecutor:
    with _executors_lock:
        ex = _executors.get(processes)
        if ex is None:
            ex = _executors[processes] = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(_CONTEXT))
        return ex


def _discard(ex: ProcessPoolExecutor) -> None:
    """Forget a broken executor (unless another run already replaced it)."""
    with _executors_lock:
        for n, cur in list(_executors.items()):
            if cur is ex:
                del _executors[n]
    ex.shutdown(wait=False, cancel_futures=True)


def _succeeded(f: Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is None


class WorkerPool:
    """One run's use of ``processes`` worker processes running ``fn(*args)`` tasks; a context manager.

    ``init(*init_args)`` builds the run's state in each worker the first time it gets one of the
    run's tasks (read it with :func:`worker_state`); both must pickle. The processes themselves are
    shared by the runs of this process and stay between runs. ``preload`` names modules the
    forkserver imports once, before it forks the workers (only the first pool's names count: the
    forkserver starts then).
    """

    def __init__(self, processes: int, init: Callable[..., Any] | None = None, init_args: tuple = (),
                 max_restarts: int = 1, preload: Iterable[str] = ()):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes, self.max_restarts = processes, max_restarts
        self.restarts = 0
        self._run = uuid.uuid4().hex
        self._setup = pickle.dumps((init, init_args), protocol=pickle.HIGHEST_PROTOCOL)  # once per run
        with _preload_lock:
            _preload.update(preload)
            multiprocessing.get_context(_CONTEXT).set_forkserver_preload(sorted(_preload | {__name__}))

    def _submit(self, fn: Callable[..., T], args: tuple) -> tuple[Future, ProcessPoolExecutor]:
        ex = _executor(self.processes)
        try:
            return ex.submit(_run_task, self._run, self._setup, fn, args), ex
        except BrokenProcessPool:  # broken under another run: that run counts it, this one moves on
            _discard(ex)
            ex = _executor(self.processes)
            return ex.submit(_run_task, self._run, self._setup, fn, args), ex

    def _restart(self, broken: ProcessPoolExecutor, what: str, exc: BaseException) -> None:
        """Replace the broken processes; raise :class:`WorkerCrashed` when the restarts are used up."""
        _discard(broken)
        if self.restarts >= self.max_restarts:
            raise WorkerCrashed(
                f"a worker process died while running {what}: {exc} Gave up after {self.restarts} restart(s). "
                "Check the pod's memory limit and logs; finished work is kept and a rerun resumes after it"
            ) from exc
        self.restarts += 1

    def imap(self, fn: Callable[..., T], items: Iterable[tuple], window: int | None = None,
             label: Callable[[tuple], str] = lambda args: f"task {args!r}"[:120]) -> Iterator[T]:
        """``fn(*args)`` for each ``args`` in ``items``, in input order, at most ``window`` in flight
        (default 8 per worker: enough queued work to hide the hand-off latency of a busy machine).
        ``items`` is read lazily: stop feeding it to stop early."""
        window = max(1, window or 8 * self.processes)
        feed = iter(items)
        pending: deque[tuple[tuple, tuple[Future, ProcessPoolExecutor]]] = deque()
        try:
            while True:
                while len(pending) < window:
                    args = next(feed, None)
                    if args is None:
                        break
                    pending.append((args, self._submit(fn, args)))
                if not pending:
                    return
                args, (fut, ex) = pending[0]
                try:
                    result, deltas = fut.result()
                except BrokenProcessPool as exc:
                    # which task killed its worker is not known: name the ones in flight
                    what = label(args) if len(pending) == 1 else f"{label(args)} … {label(pending[-1][0])} ({len(pending)} in flight)"
                    self._restart(ex, what, exc)
                    # tasks are pure: resubmit every unfinished one, in order, to the fresh processes
                    pending = deque((a, sub if _succeeded(sub[0]) else self._submit(fn, a)) for a, sub in pending)
                    continue
                pending.popleft()
                apply_metric_deltas(deltas)
                yield result
        finally:
            for _, (f, _ex) in pending:
                f.cancel()

    def map(self, fn: Callable[..., T], items: Iterable[tuple]) -> list[T]:
        """All of ``imap`` as a list (every task in flight at once)."""
        items = list(items)
        return list(self.imap(fn, items, window=len(items) or 1))

    def close(self) -> None:
        """Nothing to release: the processes stay for the next run (a worker drops old run states)."""

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
