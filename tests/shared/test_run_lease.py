"""One runner per round (shared/loop/lease.py): the lease (acquire, a second holder refused naming the
first, stale takeover, release, wait) and compare-and-swap status writes (a stale version fails and
re-reads; a late failure from a runner that lost its lease cannot replace Succeeded). Every test runs
on the local store and on a real S3 server (SeaweedFS, conditional PUTs)."""

from __future__ import annotations

import logging
import subprocess
import threading
import uuid

import pytest

from looptool.shared.loop.lease import (
    Holder,
    LeaseHeld,
    LeaseLost,
    RoundLease,
    StatusConflict,
    StatusStore,
    lease_uri,
    pid_alive,
)
from looptool.shared.loop.state import Phase, RoundStatus, fail, finish_stage
from looptool.shared.storage import split_uri
from looptool.shared.storage.base import NotFound, PreconditionFailed


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(base URI, s3 settings) of a fresh store: a local directory or a fresh SeaweedFS bucket."""
    if request.param == "local":
        return tmp_path.as_uri(), None
    server = request.getfixturevalue("seaweed")
    return f"s3://lease-{uuid.uuid4().hex[:12]}", server.settings()


def lease(where, name: str = "r1", **kw) -> RoundLease:
    base, s3 = where
    return RoundLease.for_round(base, name, s3, **kw)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


# ----------------------------------------------------------------------------- the store's CAS


def test_put_if_is_a_compare_and_swap(where):
    base, s3 = where
    store, key = split_uri(base.rstrip("/") + "/runs/x/obj.json", s3)
    with pytest.raises(NotFound):
        store.get_tagged(key)
    t1 = store.put_if(key, b"one", None)
    with pytest.raises(PreconditionFailed):
        store.put_if(key, b"other", None)  # create-only: it exists
    data, tag = store.get_tagged(key)
    assert (data, tag) == (b"one", t1)
    t2 = store.put_if(key, b"two", t1)
    with pytest.raises(PreconditionFailed):
        store.put_if(key, b"three", t1)  # stale tag
    assert store.get_tagged(key) == (b"two", t2)


# ----------------------------------------------------------------------------- the lease


def test_second_holder_is_refused_naming_the_first(where):
    first = lease(where, host="node-a", pid=None).acquire()
    try:
        second = lease(where, host="node-b")
        with pytest.raises(LeaseHeld) as exc:
            second.acquire()
        msg = str(exc.value)
        assert "\n" not in msg
        assert f"host node-a pid {first.pid} since {first.holder.since}" in msg
        assert lease_uri(where[0], "r1").split("/runs/")[1] in msg
        assert "--wait" in msg
        first.renew()  # the refusal did not disturb the holder
    finally:
        first.release()
    lease(where, host="node-b").acquire().release()  # released: free for the next runner


def test_lease_of_a_dead_process_is_taken_over_with_a_log_line(where, caplog):
    gone = lease(where, pid=dead_pid()).acquire()  # same host, its process has exited
    gone._stop.set()
    taker = lease(where)
    with caplog.at_level(logging.WARNING, logger="looptool.lease"):
        taker.acquire()
    try:
        assert any("taking over the lease" in r.getMessage() and "is gone" in r.getMessage() for r in caplog.records)
        assert taker.holder is not None and taker.holder.pid == taker.pid
        with pytest.raises(LeaseLost, match="lost the lease"):
            gone.renew()  # the old holder learns it on its next heartbeat or status write
    finally:
        taker.release()


def test_expired_heartbeat_on_another_host_is_taken_over_only_after_its_ttl(where):
    clock = Clock()
    far = lease(where, host="far-away", pid=4242, ttl_s=30, clock=clock).acquire()
    far._stop.set()  # its heartbeats stopped (host down, network cut)
    near = lease(where, host="here", ttl_s=30, clock=clock)
    clock.t += 29
    with pytest.raises(LeaseHeld, match="host far-away pid 4242"):
        near.acquire()
    clock.t += 2  # 31 s without a heartbeat: over the ttl
    near.acquire()
    try:
        with pytest.raises(LeaseLost):
            far.renew()
    finally:
        near.release()


def test_only_one_of_many_contenders_takes_over_a_stale_lease(where):
    lease(where, pid=dead_pid()).acquire()._stop.set()
    contenders = [lease(where) for _ in range(6)]
    results: list[Holder | None] = [None] * len(contenders)
    won = [False] * len(contenders)
    start = threading.Barrier(len(contenders))

    def go(i: int) -> None:
        start.wait()
        results[i] = contenders[i].try_acquire()
        won[i] = results[i] is None

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1
    winner = contenders[won.index(True)]
    assert all(r is None or r.token == winner.holder.token for r in results)


def test_heartbeat_renews_and_wait_gets_the_lease_once_released(where):
    holder = lease(where, ttl_s=0.4).acquire()
    first_beat = holder.holder.heartbeat
    got: list[RoundLease] = []
    waiter = threading.Thread(target=lambda: got.append(lease(where).acquire(wait=True, poll_s=0.05, timeout_s=60)))
    waiter.start()
    # the heartbeat thread (every ttl/4) keeps the lease live while the waiter polls
    base, s3 = where
    store, key = split_uri(lease_uri(base, "r1"), s3)
    from support.waiting import wait_for

    wait_for(lambda: Holder.parse(store.get_tagged(key)[0]).heartbeat > first_beat, what="a heartbeat")
    assert not got
    holder.release()
    waiter.join(timeout=60)
    assert got and got[0].holder is not None
    got[0].release()


# ----------------------------------------------------------------------------- status compare-and-swap


def test_status_write_with_a_stale_version_fails_and_rereads(where):
    base, s3 = where
    a, b = StatusStore(base, s3), StatusStore(base, s3)
    assert a.load("r1") == (None, "")
    assert b.load("r1") == (None, "")
    a.save("r1", RoundStatus(phase=Phase.SYNTHESIZING), "h")
    assert a.version("r1") == 1
    with pytest.raises(StatusConflict, match="since version 0 was read .now version 1."):
        b.save("r1", RoundStatus(phase=Phase.TRAINING), "h")
    assert b.version("r1") == 1  # re-read
    assert StatusStore(base, s3).load("r1")[0].phase == Phase.SYNTHESIZING
    b.save("r1", RoundStatus(phase=Phase.TRAINING), "h")  # now on the current version
    with pytest.raises(StatusConflict):
        a.save("r1", RoundStatus(phase=Phase.PROBING), "h")
    assert StatusStore(base, s3).load("r1")[0].phase == Phase.TRAINING


def test_late_failure_of_a_runner_that_lost_its_lease_cannot_replace_succeeded(where):
    base, s3 = where
    clock = Clock()
    # Runner A starts the round, then stalls (its heartbeat stops) in the last stage.
    a = StatusStore(base, s3)
    a_lease = lease(where, host="node-a", pid=1111, ttl_s=30, clock=clock).acquire()
    a_lease._stop.set()
    a.leases["r1"] = a_lease
    a.load("r1")
    st_a = RoundStatus(phase=Phase.EVALUATING)
    a.save("r1", st_a, "h")
    # Runner B takes the expired lease over and finishes the round.
    clock.t += 60
    b = StatusStore(base, s3)
    b.leases["r1"] = lease(where, host="node-b", ttl_s=30, clock=clock).acquire()
    st_b, _ = b.load("r1")
    finish_stage(st_b, "evaluate")
    assert st_b.phase == Phase.SUCCEEDED
    b.save("r1", st_b, "h")
    # A wakes up and records a failure: refused before anything is written.
    fail(st_a, "EvaluateFailed", "late")
    with pytest.raises(LeaseLost, match="host node-b"):
        a.save("r1", st_a, "h")
    # Even without the lease check (a runner with no lease), the stale version cannot overwrite.
    a.leases.clear()
    with pytest.raises(StatusConflict):
        a.save("r1", st_a, "h")
    # And a writer on the current version still cannot turn Succeeded into Failed for the same spec.
    with pytest.raises(StatusConflict, match="refusing to replace its Succeeded status"):
        a.save("r1", st_a, "h")
    assert StatusStore(base, s3).load("r1")[0].phase == Phase.SUCCEEDED
    # A changed spec starts the round over (not a late failure).
    a.save("r1", RoundStatus(), "new-hash")
    b.leases["r1"].release()
