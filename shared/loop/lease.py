"""One runner per round: a lease object beside the round's status, and compare-and-swap status writes.

Two ``looptool run`` of the same manifest and store used to both do all the work, and the round's
saved status was last-writer-wins. Now:

* **Lease** (``<base>/runs/<round>/lease.json``): created with a create-only conditional write
  (local store: under an exclusive ``flock`` of the directory; S3: ``If-None-Match: *``). It names its
  holder (host, pid, since) and carries a heartbeat the holder renews with ``If-Match`` writes every
  ``ttl/4`` seconds and before every status write. A second runner sees the holder and waits
  (``--wait``) or stops with one line naming it. A lease is *stale* when its holder released it, when
  the holder's process is gone (same host), or when its heartbeat is older than its ttl (any host;
  this assumes clocks agree to well within the ttl). A stale lease is taken over with a conditional
  write, so only one of several contenders wins, and the takeover is logged.
* **Status** (``status.json``): a ``version`` that every write increments, written with a
  conditional write against the tag of the version last read. A writer with a stale version gets
  ``StatusConflict`` (after re-reading), never overwrites. A Succeeded status is not replaced by a
  non-Succeeded one for the same spec (only a changed spec starts a round over).

On Kubernetes the operator owns ``.status`` of the LoopRound object instead; there the object's
``metadata.resourceVersion`` is the compare-and-swap token (see ``operators/reconciler.py``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from looptool.shared.logs import get_logger
from looptool.shared.loop.chain import run_uri, status_uri
from looptool.shared.loop.state import Phase, RoundStatus
from looptool.shared.storage import split_uri
from looptool.shared.storage.base import NotFound, ObjectStore, PreconditionFailed, StorageError

log = get_logger("looptool.lease")

DEFAULT_TTL_S = 60.0


def lease_uri(base_uri: str, round_name: str) -> str:
    """A round's lease, beside its status: ``<base>/runs/<round>/lease.json``."""
    return run_uri(base_uri, round_name, "lease.json")


class LeaseHeld(RuntimeError):
    """Another live runner holds the round; the message is one line naming it."""

    def __init__(self, round_name: str, holder: "Holder", uri: str):
        self.round_name, self.holder, self.uri = round_name, holder, uri
        super().__init__(
            f"round {round_name} is being run by {holder.describe()} (lease {uri}); "
            "wait for it to finish, pass --wait, or stop that runner"
        )


class LeaseLost(StorageError):
    """This runner no longer holds the round's lease (taken over after its heartbeat expired)."""


class StatusConflict(StorageError):
    """The saved status changed since this writer read it; nothing was written."""


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` on this machine alive (a zombie counts as gone)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:  # "pid (comm) S ...": state after the last ')'
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str  # ISO time the holder acquired the lease
    token: str  # unique per acquisition: tells this holder from a later one with the same pid
    heartbeat: float  # wall-clock seconds of the last renewal
    ttl_s: float
    released: bool = False

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} since {self.since}"

    def stale(self, now: float, this_host: str) -> str:
        """Why the lease may be taken over, or "" while its holder is live."""
        if self.released:
            return "released"
        if self.host == this_host and not pid_alive(self.pid):
            return f"its holder ({self.describe()}) is gone"
        age = now - self.heartbeat
        if age > self.ttl_s:
            return f"its holder's heartbeat ({self.describe()}) is {age:.0f}s old, over its {self.ttl_s:.0f}s ttl"
        return ""

    @classmethod
    def parse(cls, data: bytes) -> "Holder":
        try:
            raw = json.loads(data)
            return cls(
                host=str(raw["host"]), pid=int(raw["pid"]), since=str(raw["since"]), token=str(raw["token"]),
                heartbeat=float(raw["heartbeat"]), ttl_s=float(raw["ttl_s"]), released=bool(raw.get("released", False)),
            )
        except (ValueError, KeyError, TypeError):  # unreadable: treat as an expired lease
            return cls(host="?", pid=0, since="?", token="", heartbeat=0.0, ttl_s=0.0)

    def dump(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()


class RoundLease:
    """The lease of one round. ``acquire()``, then ``renew()`` (a background thread does it every
    ``ttl/4``; status writes do it too) and ``release()``; or use it as a context manager."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        round_name: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
    ):
        self.store, self.key, self.round_name = store, key, round_name
        self.ttl_s, self.clock = ttl_s, clock
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.holder: Holder | None = None
        self._tag: str | None = None
        self._lost = ""
        self._lock = threading.Lock()  # renewals from the heartbeat thread and from status writes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_round(cls, base_uri: str, round_name: str, s3: Any = None, **kw: Any) -> "RoundLease":
        store, key = split_uri(lease_uri(base_uri, round_name), s3)
        return cls(store, key, round_name, **kw)

    @property
    def uri(self) -> str:
        return self.store.uri(self.key)

    # ------------------------------------------------------------------ acquire / release

    def _mine(self, since: str | None = None) -> Holder:
        now = self.clock()
        return Holder(self.host, self.pid, since or _now_iso(now), uuid.uuid4().hex, now, self.ttl_s)

    def try_acquire(self) -> Holder | None:
        """Take the lease if it is free or stale; else return its live holder."""
        mine = self._mine()
        try:
            self._tag = self.store.put_if(self.key, mine.dump(), None)
            self.holder, self._lost = mine, ""
            return None
        except PreconditionFailed:
            pass
        try:
            data, tag = self.store.get_tagged(self.key)
        except NotFound:  # released and deleted in between: try again
            return self.try_acquire()
        current = Holder.parse(data)
        why = current.stale(self.clock(), self.host)
        if not why:
            return current
        try:
            self._tag = self.store.put_if(self.key, mine.dump(), tag)
        except (PreconditionFailed, NotFound):  # another contender took it over first
            data, _ = self.store.get_tagged(self.key)
            return Holder.parse(data)
        if why != "released":
            log.warning(f"round {self.round_name}: taking over the lease {self.uri}: {why}")
        self.holder, self._lost = mine, ""
        return None

    def acquire(self, wait: bool = False, poll_s: float = 2.0, timeout_s: float | None = None) -> "RoundLease":
        """Hold the lease, or raise ``LeaseHeld`` naming its holder (``wait``: poll until it is free
        or stale, at most ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        announced = ""
        while True:
            holder = self.try_acquire()
            if holder is None:
                self._start_heartbeat()
                return self
            if not wait or (deadline is not None and time.monotonic() > deadline):
                raise LeaseHeld(self.round_name, holder, self.uri)
            if holder.token != announced:
                announced = holder.token
                log.info(f"round {self.round_name}: waiting for {holder.describe()} to finish (lease {self.uri})")
            time.sleep(poll_s)

    def release(self) -> None:
        """Mark the lease released (a conditional write: a lease already taken over is left alone)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if self.holder is None or self._lost:
                self.holder = None
                return
            done = Holder(**{**asdict(self.holder), "heartbeat": self.clock(), "released": True})
            try:
                self.store.put_if(self.key, done.dump(), self._tag)
            except (PreconditionFailed, NotFound):
                pass
            except StorageError as exc:  # the lease expires on its own
                log.warning(f"round {self.round_name}: could not release the lease {self.uri}: {exc}")
            self.holder = None

    def __enter__(self) -> "RoundLease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ heartbeat

    def renew(self) -> None:
        """Renew the heartbeat with a conditional write; ``LeaseLost`` when someone else holds the
        lease now (or this runner never held it)."""
        with self._lock:
            if self.holder is None:
                raise LeaseLost(f"round {self.round_name}: this runner does not hold the lease {self.uri}")
            if self._lost:
                raise LeaseLost(self._lost)
            beat = Holder(**{**asdict(self.holder), "heartbeat": self.clock()})
            try:
                self._tag = self.store.put_if(self.key, beat.dump(), self._tag)
            except (PreconditionFailed, NotFound):
                try:
                    other = Holder.parse(self.store.get_tagged(self.key)[0]).describe()
                except StorageError:
                    other = "nobody (deleted)"
                self._lost = f"round {self.round_name}: lost the lease {self.uri} to {other}; stopped without writing"
                raise LeaseLost(self._lost) from None
            self.holder = beat

    def check(self) -> None:
        """Before a write that only the holder may do: renew (proves we still hold it)."""
        self.renew()

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        every = max(0.05, self.ttl_s / 4)

        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    self.renew()
                except LeaseLost as exc:
                    log.error(str(exc))
                    return
                except StorageError as exc:  # transient: the next beat retries; expiry is the backstop
                    log.warning(f"round {self.round_name}: heartbeat failed: {exc}")

        self._thread = threading.Thread(target=beat, name=f"lease-{self.round_name}", daemon=True)
        self._thread.start()


class StatusStore:
    """Round status persisted beside the round's outputs (``status.json``), written with
    compare-and-swap: ``{"version", "spec_hash", "status", "writer"}``. ``leases`` (round name →
    ``RoundLease``) makes every write of a leased round renew its lease first."""

    def __init__(self, base_uri: str, s3: Any = None):
        self.base_uri, self.s3 = base_uri.rstrip("/"), s3
        self.leases: dict[str, RoundLease] = {}
        self._seen: dict[str, tuple[str | None, int, str, Phase | None]] = {}  # name → (tag, version, hash, phase)

    def _key(self, name: str) -> tuple[ObjectStore, str]:
        return split_uri(status_uri(self.base_uri, name), self.s3)

    def load(self, name: str) -> tuple[RoundStatus | None, str]:
        store, key = self._key(name)
        try:
            data, tag = store.get_tagged(key)
        except NotFound:
            self._seen[name] = (None, 0, "", None)
            return None, ""
        raw = json.loads(data)
        status = RoundStatus.model_validate(raw["status"])
        h = raw.get("spec_hash", "")
        self._seen[name] = (tag, int(raw.get("version", 0)), h, status.phase)
        return status, h

    def version(self, name: str) -> int:
        """The version last read or written (0: none)."""
        return self._seen.get(name, (None, 0, "", None))[1]

    def save(self, name: str, status: RoundStatus, spec_hash: str) -> None:
        lease = self.leases.get(name)
        if lease is not None:
            lease.check()
        if name not in self._seen:
            self.load(name)
        tag, version, saved_hash, saved_phase = self._seen[name]
        if saved_phase == Phase.SUCCEEDED and saved_hash == spec_hash and status.phase != Phase.SUCCEEDED:
            raise StatusConflict(
                f"round {name}: refusing to replace its Succeeded status (version {version}) with {status.phase.value}; "
                "change the spec or pass --fresh to run it again"
            )
        writer = lease.holder.describe() if lease is not None and lease.holder else f"host {socket.gethostname()} pid {os.getpid()}"
        doc = {"version": version + 1, "spec_hash": spec_hash, "status": status.to_k8s(), "writer": writer}
        store, key = self._key(name)
        try:
            new_tag = store.put_if(key, json.dumps(doc, indent=1).encode(), tag)
        except PreconditionFailed:
            self.load(name)  # re-read: the caller sees the current version
            now = self.version(name)
            raise StatusConflict(
                f"round {name}: its status changed since version {version} was read (now version {now}); "
                "another runner wrote it: nothing was written"
            ) from None
        self._seen[name] = (new_tag, version + 1, spec_hash, status.phase)

    def delete(self, name: str) -> None:
        store, key = self._key(name)
        store.delete(key)
        self._seen[name] = (None, 0, "", None)
