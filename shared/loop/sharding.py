"""Sharded data stages: split a stage's input into fixed-size shards, run them concurrently on every
replica of the service, retry a failed shard on another replica, and merge the shard outputs.

- **Plan** (``plan_shards``): shards of ``shard_size`` records (``services.<name>.shard_size``),
  never derived from the replica count, so one replica and N replicas cut the same shards, the
  services see the same inputs and the merged dataset has the same content hash.
- **Targets**: each is one replica (``host:port``) or a balanced target (``dns:///name:port``, e.g.
  a headless Service, or ``ipv4:a:p,b:q``) served through one channel with gRPC's ``round_robin``
  policy; a balanced target gets as many concurrent RPCs as it has addresses.
- **Dispatch** (``dispatch``): a worker per replica (per address of a balanced target) pulls shards
  from one queue. A shard that fails with UNAVAILABLE or a connection error goes back to the queue
  and its replica is marked dead (a balanced target: after ``max_attempts`` failures in a row);
  CANCELLED / ABORTED / RESOURCE_EXHAUSTED retry the shard up to ``max_attempts`` times; any other
  error fails the stage. Every replica dead with shards left: ``StageError`` naming each address
  tried and why it failed.
- **Merge** (``merge_datasets``): shard outputs in shard order, records in their order, the first
  record of each key kept (a key seen again, e.g. a sample two shards both produced, is dropped), as
  one dataset committed only after every shard committed its own. Shard outputs are datasets of
  their own under the stage's output (content-keyed: a restarted stage reuses finished shards).
"""

from __future__ import annotations

import functools
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar
from urllib.parse import urlparse

import grpc

from looptool.shared.grpc_util import channel
from looptool.shared.logs import get_logger
from looptool.shared.records import DatasetRef, Progress, text_key
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri
from looptool.shared.textnorm import normalize_text

log = get_logger("looptool.sharding")

R = TypeVar("R")

BALANCED_SCHEMES = ("dns", "ipv4", "ipv6")
# An RPC that failed this way did not reach a working replica: retry elsewhere, the replica is dead.
DEAD_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
# The replica is there but the call did not finish (shutting down, overloaded): retry the shard.
RETRY_CODES = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED})


class ShardingError(RuntimeError):
    """A stage could not finish its shards; ``reason`` is a CamelCase Kubernetes-style reason
    (``stages.StageError`` has the same shape; this module sits below it)."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # first record (or dialogue index)
    stop: int  # one past the last

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_shards(total: int, shard_size: int) -> list[Shard]:
    """``total`` records in shards of ``shard_size`` (the last one shorter); none when total is 0."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (got {shard_size}); set services.<name>.shard_size")
    if total < 0:
        raise ValueError(f"total must be >= 0 (got {total})")
    return [Shard(i, start, min(start + shard_size, total)) for i, start in enumerate(range(0, total, shard_size))]


# ----------------------------------------------------------------------------- targets


def is_balanced(target: str) -> bool:
    """A target gRPC resolves to several addresses itself (``dns:///name:port``, ``ipv4:a,b``)."""
    scheme = target.split(":", 1)[0] if ":" in target else ""
    return scheme in BALANCED_SCHEMES


def target_slots(target: str) -> int:
    """Concurrent shards a target takes: 1 per replica; a balanced target's address count."""
    if not is_balanced(target):
        return 1
    scheme, rest = target.split(":", 1)
    if scheme in ("ipv4", "ipv6"):
        return max(1, len([a for a in rest.split(",") if a]))
    parsed = urlparse(target)  # dns:///name:port or dns://resolver/name:port
    hostport = parsed.path.lstrip("/") if parsed.path else rest.lstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        infos = socket.getaddrinfo(host or hostport, int(port) if port.isdigit() else None, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return 1  # not resolvable now: one worker; its RPCs report why
    return max(1, len({info[4][0] for info in infos}))


def open_channel(target: str, security: Any = None) -> grpc.Channel:
    """A client channel with the configured credentials: ``round_robin`` over a balanced target's
    addresses (the default policy, pick_first, would pin every RPC to one pod)."""
    balanced = [("grpc.lb_policy_name", "round_robin")] if is_balanced(target) else []
    return channel(target, security, extra_options=balanced)


# ----------------------------------------------------------------------------- dispatch


def _describe(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        return code, f"{code.name if code else 'UNKNOWN'}: {details}"
    return None, f"{type(exc).__name__}: {exc}"


@dataclass
class DispatchReport(Generic[R]):
    results: list[R]  # per shard, in shard order
    served: dict[str, int]  # target → shards it finished
    dead: dict[str, str]  # target → why it was given up
    retries: int = 0


@dataclass
class _Slot:
    target: str
    failures_in_row: int = 0


@dataclass
class _Queue:
    pending: deque[Shard]
    attempts: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    fatal: BaseException | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)


RunShard = Callable[[str, Shard, Callable[[int], None]], R]


def dispatch(
    stage: str,
    shards: Sequence[Shard],
    targets: Sequence[str],
    run: RunShard[R],
    *,
    on_progress: Callable[[Progress], None] = lambda p: None,
    max_attempts: int = 3,
    slots: Callable[[str], int] = target_slots,
    on_abort: Callable[[], None] = lambda: None,
) -> DispatchReport[R]:
    """Run every shard as ``run(target, shard, report_done)`` on the targets; results in shard order.

    ``report_done(n)``: records of the shard finished so far (progress). Raises ``ShardingError``:
    ``<Stage>Failed`` for an error no retry can fix, ``ServiceUnavailable`` when every target is dead.
    ``on_abort`` is called once when a shard fails for good: cancel the shards still running."""
    if not targets:
        raise ShardingError("ServiceUnavailable", f"{stage}: no replica address configured")
    results: dict[int, R] = {}
    q = _Queue(pending=deque(shards))
    served = {t: 0 for t in targets}
    dead: dict[str, str] = {}
    tried: dict[str, str] = {}
    retries = 0
    total = sum(s.size for s in shards)
    shard_done: dict[int, int] = {}
    finished = 0

    reporting = threading.Lock()  # on_progress is called from one worker at a time, as before sharding

    def progress(shard: Shard, n: int) -> None:
        with q.cond:
            shard_done[shard.index] = min(n, shard.size)
            done = sum(shard_done.values())
            msg = f"{finished}/{len(shards)} shards on {len(targets) - len(dead)}/{len(targets)} replicas"
        with reporting:
            on_progress(Progress(stage=stage, done=done, total=total, message=msg))

    def worker(slot: _Slot) -> None:
        nonlocal retries, finished
        while True:
            with q.cond:
                while not q.pending and q.in_flight and q.fatal is None and slot.target not in dead:
                    q.cond.wait()
                if not q.pending or q.fatal is not None or slot.target in dead:
                    q.cond.notify_all()
                    return
                shard = q.pending.popleft()
                q.in_flight += 1
                q.attempts[shard.index] = q.attempts.get(shard.index, 0) + 1
            try:
                result = run(slot.target, shard, functools.partial(progress, shard))
            except BaseException as exc:  # noqa: BLE001 - classified below; a bug fails the stage
                code, why = _describe(exc)
                abort = False
                endpoint_down = code in DEAD_CODES or (code is None and isinstance(exc, (ConnectionError, TimeoutError)))
                with q.cond:
                    q.in_flight -= 1
                    tried[slot.target] = why
                    retry = endpoint_down or code in RETRY_CODES
                    if retry and q.attempts[shard.index] >= max_attempts and not endpoint_down:
                        retry = False
                    if endpoint_down:
                        slot.failures_in_row += 1
                        if not is_balanced(slot.target) or slot.failures_in_row >= max_attempts:
                            if slot.target not in dead:
                                dead[slot.target] = why
                                log.warning("replica marked dead", extra={"stage": stage, "target": slot.target, "error": why})
                    if retry:
                        retries += 1
                        q.pending.appendleft(shard)  # keep shard order for the next free worker
                        log.info("retrying shard", extra={"stage": stage, "shard": shard.index, "target": slot.target, "error": why})
                    elif q.fatal is None:
                        q.fatal = ShardingError(
                            f"{stage.capitalize()}Failed", f"{stage} service at {slot.target}: shard {shard.index} "
                            f"(records {shard.start}..{shard.stop - 1}): {why}"
                        )
                        q.fatal.__cause__ = exc
                        abort = True
                    q.cond.notify_all()
                if abort:
                    on_abort()
                continue
            with q.cond:
                q.in_flight -= 1
                results[shard.index] = result
                served[slot.target] += 1
                finished += 1
                slot.failures_in_row = 0
                shard_done[shard.index] = shard.size
                q.cond.notify_all()

    slot_list = [_Slot(t) for t in targets for _ in range(max(1, slots(t)))]
    threads = [threading.Thread(target=worker, args=(s,), name=f"shard-{stage}-{i}", daemon=True)
               for i, s in enumerate(slot_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if q.fatal is not None:
        raise q.fatal
    if len(results) < len(shards):
        attempts = "; ".join(f"{t} ({tried.get(t) or dead.get(t) or 'not tried'})" for t in targets)
        raise ShardingError("ServiceUnavailable", f"{stage}: every replica failed, {len(shards) - len(results)} of "
                            f"{len(shards)} shards left; tried {attempts}")
    return DispatchReport(results=[results[s.index] for s in shards], served=served, dead=dead, retries=retries)


# ----------------------------------------------------------------------------- datasets


def shard_uri(out_uri: str, role: str, shard: Shard, key: str) -> str:
    """A shard's own dataset under the stage's output: ``<out>/shards/<role>-<index>-<key>``."""
    return f"{out_uri.rstrip('/')}/shards/{role}-{shard.index:05d}-{key}"


def committed(uri: str, s3: Any = None) -> DatasetRef | None:
    store, key = split_uri(uri, s3)
    return open_dataset(uri, s3).ref if dataset_exists(store, key) else None


def split_dataset(source: DatasetRef, shards: Sequence[Shard], uri_of: Callable[[Shard], str], s3: Any = None
                  ) -> list[DatasetRef]:
    """Each shard's records of ``source`` as a dataset of its own (kind and format kept); committed
    shards are reused, so a restarted stage reads the source once at most."""
    refs: dict[int, DatasetRef] = {}
    todo: list[Shard] = []
    for s in shards:
        done = committed(uri_of(s), s3)
        if done is not None:
            refs[s.index] = done
        else:
            todo.append(s)
    if todo:
        src = open_dataset(source, s3)
        kind = src.manifest.get("kind") or "samples"
        fmt = src.manifest.get("format") or "jsonl"
        wanted = iter(todo)
        cur = next(wanted, None)
        writer = None
        for i, rec in enumerate(src.iter_dicts()):
            while cur is not None and i >= cur.stop:
                if writer is not None:
                    refs[cur.index] = writer.commit()
                    writer = None
                cur = next(wanted, None)
            if cur is None:
                break
            if i < cur.start:
                continue
            if writer is None:
                writer = writer_for_uri(uri_of(cur), s3, kind=kind, fmt=fmt, part_size=1 << 30,
                                        meta={"source": source.uri, "shard": [cur.start, cur.stop]})
            writer.write(rec)
        if writer is not None and cur is not None:
            refs[cur.index] = writer.commit()
        for s in todo:  # an empty input's one shard: an empty dataset, so the service still runs
            if s.size == 0 and s.index not in refs:
                refs[s.index] = writer_for_uri(uri_of(s), s3, kind=kind, fmt=fmt,
                                               meta={"source": source.uri, "shard": [s.start, s.stop]}).commit()
    missing = [s.index for s in shards if s.index not in refs]
    if missing:
        raise ShardingError("MissingInput", f"{source.uri} has fewer records than planned (shards {missing} empty); "
                            "re-run the stage that produced it")
    return [refs[s.index] for s in shards]


def merge_datasets(parts: Sequence[DatasetRef], out_uri: str, *, key: Callable[[dict[str, Any]], Iterable[str]],
                   kind: str, meta: dict[str, Any] | None = None, s3: Any = None) -> tuple[DatasetRef, int]:
    """The shard outputs as one dataset at ``out_uri``: shard order, then record order; a record
    any of whose ``key(record)`` values an earlier record had is dropped. Returns (ref, dropped).
    Already committed: returned as is."""
    done = committed(out_uri, s3)
    if done is not None:
        return done, 0
    seen: set[str] = set()
    dropped = 0
    fmt = parts[0].format if parts and parts[0].format else "jsonl"
    writer = writer_for_uri(out_uri, s3, kind=kind, fmt=fmt, meta=dict(meta or {}))
    try:
        for ref in parts:
            for rec in open_dataset(ref, s3).iter_dicts():
                keys = [k for k in key(rec) if k]
                if any(k in seen for k in keys):
                    dropped += 1
                    continue
                seen.update(keys)
                writer.write(rec)
        writer.meta["merge_dropped"] = dropped
        return writer.commit(), dropped
    except BaseException:
        writer.abort()
        raise


def sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def weighted_metrics(metrics: Sequence[dict[str, float]], weights: Sequence[int]) -> dict[str, float]:
    """Per-shard metrics as one: a mean weighted by each shard's records (``seconds``: the longest)."""
    out: dict[str, float] = {}
    names = {k for m in metrics for k in m}
    for k in sorted(names):
        if k == "seconds":
            out[k] = max(m.get(k, 0.0) for m in metrics)
            continue
        pairs = [(m[k], w) for m, w in zip(metrics, weights) if k in m]
        total = sum(w for _, w in pairs)
        out[k] = sum(v * w for v, w in pairs) / total if total else (sum(v for v, _ in pairs) / len(pairs) if pairs else 0.0)
    return out


def user_text_key(record: dict[str, Any]) -> str:
    """A sample record's user turns, normalised (the expander's dedup key, ``expand.user_text_key``,
    on a stored record): near-identical requests from two shards merge as one."""
    users = [normalize_text(m.get("content", "")) for m in record.get("context", []) if m.get("role") == "user"]
    text = " | ".join(users)
    return text_key(text, 24) if text.strip(" |") else ""


def first_query_key(record: dict[str, Any]) -> str:
    """A dialogue record's first user request, normalised: the exact part of the synthesizer's
    within-run dedup (``filters.Deduper``), applied across shards at merge."""
    first = next((m.get("content", "") for m in record.get("messages", []) if m.get("role") == "user"), "")
    norm = normalize_text(first)
    return "q:" + norm if norm else ""


# ----------------------------------------------------------------------------- evaluation


class ShardedGenerator:
    """A ``Generator`` over every replica: each ``generate`` call's requests in shards of
    ``shard_size``, run concurrently by ``dispatch``, results in request order. A replica found dead
    is left out of later calls (``dead`` says which and why)."""

    def __init__(self, stage: str, targets: Sequence[str], make: Callable[[str], Any], shard_size: int):
        self.stage, self.targets, self.make, self.shard_size = stage, list(targets), make, shard_size
        self.dead: dict[str, str] = {}
        self.served = {t: 0 for t in self.targets}
        self._gens: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _gen(self, target: str) -> Any:
        with self._lock:
            if target not in self._gens:
                self._gens[target] = self.make(target)
            return self._gens[target]

    def generate(self, requests: list[Any]) -> list[Any]:
        if not requests:
            return []
        live = [t for t in self.targets if t not in self.dead] or self.targets  # all dead: say so once more
        shards = plan_shards(len(requests), self.shard_size)
        report = dispatch(self.stage, shards, live, lambda t, s, _report: self._gen(t).generate(requests[s.start:s.stop]))
        self.dead.update(report.dead)
        for t, n in report.served.items():
            self.served[t] = self.served.get(t, 0) + n
        return [r for part in report.results for r in part]

    def close(self) -> None:
        for g in self._gens.values():
            close = getattr(g, "close", None)
            if callable(close):
                close()
