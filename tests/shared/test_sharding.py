"""Sharded data stages (``shared/loop/sharding.py``): the shard plan, the dispatcher's retries and dead
replicas, shard datasets and the merge, the sharded evaluation generator."""

from __future__ import annotations

import threading

import grpc
import pytest

from looptool.services.expander.expand import user_text_key as expander_user_text_key
from looptool.shared.generation import GenRequest, GenResult, SamplingParams
from looptool.shared.loop.sharding import (
    Shard,
    ShardedGenerator,
    ShardingError,
    dispatch,
    first_query_key,
    merge_datasets,
    plan_shards,
    shard_uri,
    split_dataset,
    target_slots,
    user_text_key,
    weighted_metrics,
)
from looptool.shared.records import Message, Sample
from looptool.shared.storage import open_dataset, writer_for_uri

from support.inference import make_samples


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom"):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_plan_is_fixed_size_contiguous_and_independent_of_replicas():
    shards = plan_shards(10, 4)
    assert [(s.index, s.start, s.stop) for s in shards] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert sum(s.size for s in shards) == 10
    assert plan_shards(0, 4) == [] and plan_shards(8, 4)[-1] == Shard(1, 4, 8)
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(5, 0)


def test_dispatch_runs_every_shard_once_on_every_replica_in_shard_order():
    shards = plan_shards(40, 4)
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(3, timeout=10)  # each replica takes a first shard before any finishes

    def run(target, shard, report):
        with lock:
            first = target not in seen
            seen.setdefault(target, []).append(shard.index)
        if first:
            barrier.wait()
        report(shard.size)
        return f"out-{shard.index}"

    progress = []
    rep = dispatch("probe", shards, ["a:1", "b:2", "c:3"], run, on_progress=progress.append)
    assert rep.results == [f"out-{i}" for i in range(10)]
    assert sorted(i for v in seen.values() for i in v) == list(range(10))
    assert set(seen) == {"a:1", "b:2", "c:3"} and sum(rep.served.values()) == 10
    assert not rep.dead and rep.retries == 0
    assert progress and max(p.done for p in progress) == 40 and progress[-1].total == 40


def test_an_unreachable_replica_is_marked_dead_and_its_shards_run_elsewhere():
    calls: list[tuple[str, int]] = []
    tried = threading.Event()

    def run(target, shard, report):
        calls.append((target, shard.index))
        if target == "dead:1":
            tried.set()
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        tried.wait(10)  # the live replica finishes only after the dead one was tried
        return shard.index

    rep = dispatch("judge", plan_shards(12, 2), ["dead:1", "live:2"], run)
    assert rep.results == list(range(6))
    assert list(rep.dead) == ["dead:1"] and "UNAVAILABLE: connection refused" in rep.dead["dead:1"]
    assert sum(1 for t, _ in calls if t == "dead:1") == 1  # never tried again once dead
    assert rep.served == {"dead:1": 0, "live:2": 6} and rep.retries == 1


def test_connection_errors_also_mark_a_replica_dead():
    tried = threading.Event()

    def run(target, shard, report):
        if target == "x:1":
            tried.set()
            raise ConnectionError("inference server at x:1 is not reachable")
        tried.wait(10)
        return shard.index

    rep = dispatch("evaluate", plan_shards(4, 1), ["x:1", "y:2"], run)
    assert rep.results == [0, 1, 2, 3] and list(rep.dead) == ["x:1"]


def test_every_replica_down_names_each_address_tried():
    def run(target, shard, report):
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {target}")

    with pytest.raises(ShardingError) as err:
        dispatch("probe", plan_shards(6, 2), ["10.0.0.1:5", "10.0.0.2:5"], run)
    assert err.value.reason == "ServiceUnavailable"
    assert "10.0.0.1:5 (UNAVAILABLE" in err.value.message and "10.0.0.2:5 (UNAVAILABLE" in err.value.message
    assert "3 of 3 shards left" in err.value.message


def test_bad_input_fails_the_stage_without_retrying():
    calls = []

    def run(target, shard, report):
        calls.append(shard.index)
        if shard.index == 1:
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "dataset: empty")
        return shard.index

    with pytest.raises(ShardingError) as err:
        dispatch("probe", plan_shards(3, 1), ["a:1"], run)
    assert err.value.reason == "ProbeFailed"
    assert "shard 1 (records 1..1): INVALID_ARGUMENT: dataset: empty" in err.value.message
    assert calls.count(1) == 1


def test_an_interrupted_shard_is_retried_up_to_max_attempts():
    attempts = {"n": 0}

    def flaky(target, shard, report):
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise FakeRpcError(grpc.StatusCode.ABORTED, "stage stopped before finishing")
        return "ok"

    rep = dispatch("expand", plan_shards(1, 5), ["a:1"], flaky, max_attempts=3)
    assert rep.results == ["ok"] and rep.retries == 2 and not rep.dead

    def always(target, shard, report):
        raise FakeRpcError(grpc.StatusCode.ABORTED, "again")

    with pytest.raises(ShardingError, match="ExpandFailed.*ABORTED: again"):
        dispatch("expand", plan_shards(1, 5), ["a:1"], always, max_attempts=2)


def test_a_balanced_target_gets_a_worker_per_address_and_is_given_up_after_failures_in_a_row():
    assert target_slots("ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3") == 3
    assert target_slots("10.0.0.1:50051") == 1
    assert target_slots("dns:///localhost:50051") >= 1
    calls = []

    def run(target, shard, report):
        calls.append(target)
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "no ready subchannel")

    with pytest.raises(ShardingError, match="ServiceUnavailable"):
        dispatch("probe", plan_shards(2, 1), ["dns:///svc:1"], run, max_attempts=3, slots=lambda t: 1)
    assert len(calls) == 3  # retried through the balancer, then given up


def _dataset(uri: str, samples: list[Sample]):
    w = writer_for_uri(uri, kind="samples")
    w.write_many(samples)
    return w.commit()


def test_split_then_merge_is_the_source_and_reuses_committed_shards(tmp_path):
    samples = make_samples(23)
    src = _dataset(str(tmp_path / "src"), samples)
    shards = plan_shards(23, 5)
    out = (tmp_path / "out").as_uri()
    parts = split_dataset(src, shards, lambda s: shard_uri(out, "in", s, "k"))
    assert [p.record_count for p in parts] == [5, 5, 5, 5, 3]
    assert parts[1].uri.endswith("/shards/in-00001-k")
    again = split_dataset(src, shards, lambda s: shard_uri(out, "in", s, "k"))
    assert again == parts  # committed shards are reused, not rewritten
    merged, dropped = merge_datasets(parts, out, key=lambda r: [r["id"]], kind="samples")
    assert dropped == 0 and merged.content_hash == src.content_hash and merged.record_count == 23
    assert merge_datasets(parts, out, key=lambda r: [r["id"]], kind="samples")[0] == merged


def test_merge_keeps_the_first_record_of_a_key_in_shard_order(tmp_path):
    a, b, c = make_samples(3)
    p0 = _dataset(str(tmp_path / "p0"), [a, b])
    p1 = _dataset(str(tmp_path / "p1"), [b, c])  # b again (e.g. two shards produced it)
    merged, dropped = merge_datasets([p0, p1], str(tmp_path / "m"), key=lambda r: [r["id"]], kind="samples")
    assert dropped == 1
    assert [s.id for s in open_dataset(merged).iter(Sample)] == [a.id, b.id, c.id]
    flipped, _ = merge_datasets([p1, p0], str(tmp_path / "m2"), key=lambda r: [r["id"]], kind="samples")
    assert flipped.content_hash != merged.content_hash  # order is part of the content


def test_user_text_key_is_the_expanders_rule():
    s = Sample(context=[Message(role="system", content="x"), Message(role="user", content="Weather in  PARIS?")])
    rec = s.model_dump(mode="json")
    assert user_text_key(rec) == expander_user_text_key(s) != ""
    assert user_text_key({"context": [{"role": "system", "content": "x"}]}) == ""


def test_weighted_metrics():
    m = weighted_metrics([{"acc": 1.0, "seconds": 2.0}, {"acc": 0.0, "seconds": 5.0}], [3, 1])
    assert m == {"acc": 0.75, "seconds": 5.0}


class _Gen:
    def __init__(self, name: str, gate: threading.Event, fail: bool = False):
        self.name, self.fail, self.calls, self.gate = name, fail, 0, gate

    def generate(self, requests):
        self.calls += 1
        if self.fail:
            self.gate.set()
            raise ConnectionError(f"{self.name} is not reachable")
        self.gate.wait(10)  # the live replicas finish only after the dead one was tried
        return [GenResult(error=f"{self.name}:{r.request_id}") for r in requests]


def test_sharded_generator_keeps_request_order_and_drops_a_dead_replica():
    gate = threading.Event()
    gens = {"a:1": _Gen("a", gate), "b:2": _Gen("b", gate, fail=True), "c:3": _Gen("c", gate)}
    g = ShardedGenerator("evaluate", list(gens), gens.__getitem__, shard_size=2)
    reqs = [GenRequest([Message(role="user", content=str(i))], [], SamplingParams(), str(i)) for i in range(9)]
    out = g.generate(reqs)
    assert [r.error.split(":")[1] for r in out] == [str(i) for i in range(9)]
    assert list(g.dead) == ["b:2"] and gens["b:2"].calls == 1
    g.generate(reqs[:4])
    assert gens["b:2"].calls == 1  # left out of later calls
    assert g.served["a:1"] + g.served["c:3"] == 7


def test_a_failed_shard_aborts_the_shards_still_running():
    cancelled = threading.Event()
    aborts = []

    def run(target, shard, report):
        if shard.index == 0:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "dataset replaced")
        assert cancelled.wait(10), "the running shard was not cancelled"
        raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled by the stage")

    def on_abort():
        aborts.append(1)
        cancelled.set()

    with pytest.raises(ShardingError, match="FAILED_PRECONDITION: dataset replaced"):
        dispatch("judge", plan_shards(4, 1), ["a:1", "b:2"], run, on_abort=on_abort)
    assert aborts == [1]


def test_first_query_key_is_the_normalised_first_user_request():
    d = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Book a  FLIGHT, to Rome!"},
                      {"role": "user", "content": "later"}]}
    assert first_query_key(d) == "q:book a flight to rome"
    assert first_query_key({"messages": [{"role": "assistant", "content": "hi"}]}) == ""
