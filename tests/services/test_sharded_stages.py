"""Sharded data stages over real gRPC replicas on loopback: probe over 3 inference replicas (every
replica serves shards, the merged output hashes the same as one replica's), a replica killed
mid-stage, a dead address in the endpoint list, every replica down; judge and synthesize sharding
and expand sharding (same hash for 1 and N replicas); a round_robin channel over an ``ipv4:``
target; held-out evaluation over replicas with a dead one in the list."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from looptool.services.inference import server as inference_server
from looptool.services.expander import server as expander_server
from looptool.services.inference.client import InferenceClient
from looptool.services.synthesizer import server as synth_server
from looptool.shared.config import InferenceSettings, LoopToolConfig, StorageSettings
from looptool.shared.grpc_util import wait_healthy
from looptool.shared.loop.manifest import parse_round
from looptool.shared.loop.sharding import first_query_key
from looptool.shared.loop.stages import (
    StageContext,
    StageError,
    stage_evaluate,
    stage_expand,
    stage_judge,
    stage_probe,
    stage_synthesize,
)
from looptool.shared.loop.state import RoundStatus
from looptool.shared.records import ProbeResult, Sample
from looptool.shared.storage import open_dataset

from support.inference import make_samples, one_torch_thread, tiny_model_dir, write_samples  # noqa: F401
from support.net import free_ports

N_PROBE = 300
SHARD = 50


def _round(name: str = "r1", **spec):
    return parse_round({
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name},
        "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python", "limit": 10}},
                 "probe": {"maxTokens": 8}, "judge": {"backend": "grounding"}, **spec},
    })


def _cfg(root, model: str = "", shard: int = SHARD) -> LoopToolConfig:
    cfg = LoopToolConfig(
        inference=InferenceSettings(model=model, max_batch_size=16, batch_wait_ms=2, max_context=2048),
        storage=StorageSettings(root=str(root / "store")),
    )
    cfg.services.inference.shard_size = shard
    cfg.services.synthesizer.shard_size = 8
    return cfg


def _ctx(cfg: LoopToolConfig, base, targets: list[str], service: str = "inference", **spec) -> StageContext:
    return StageContext(round=_round(**spec), config=cfg, addresses={service: targets[0]},
                        endpoints={service: targets}, base_uri=base.as_uri(), generator=InferenceClient)


class Counting:
    """Which replica ran which shard: wraps one server's ``StageRuns`` method."""

    def __init__(self, server, method: str):
        self.calls = 0
        self.started = threading.Event()
        runs = server.servicer.stages
        inner = getattr(runs, method)

        def wrapped(*a, **kw):
            self.calls += 1
            self.started.set()
            yield from inner(*a, **kw)

        setattr(runs, method, wrapped)


def _start_replicas(cfg: LoopToolConfig, n: int):
    servers = [inference_server.start(cfg, port=0) for _ in range(n)]
    for s in servers:
        wait_healthy(s.address, 30)
    return servers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    cfg = _cfg(root, str(tiny_model_dir()))
    train = write_samples(str(root / "train"), make_samples(N_PROBE))
    servers = _start_replicas(cfg, 3)
    yield root, cfg, train, servers
    for s in servers:
        s.stop(0)


def _probe(cfg, base, targets, train, **kw) -> tuple[RoundStatus, StageContext]:
    ctx = _ctx(cfg, base, targets)
    status = RoundStatus()
    status.stage("synthesize").outputs["train"] = train
    stage_probe(ctx, status, kw.get("on_progress", lambda p: None))
    return status, ctx


@pytest.fixture(scope="module")
def one_replica_probe(setup):
    root, cfg, train, servers = setup
    status, _ = _probe(cfg, root / "one", [servers[0].address], train)
    return status.stage("probe")


def _ids(ref) -> list[str]:
    return [r.sample.id for r in open_dataset(ref).iter(ProbeResult)]


def test_probe_over_three_replicas_hashes_like_one(setup, one_replica_probe):
    root, cfg, train, servers = setup
    counters = [Counting(s, "probe") for s in servers]
    status, _ = _probe(cfg, root / "three", [s.address for s in servers], train)
    st = status.stage("probe")
    one = one_replica_probe.outputs["probe_results"]
    three = st.outputs["probe_results"]
    assert three.content_hash == one.content_hash and three.record_count == N_PROBE
    assert all(c.calls >= 1 for c in counters), [c.calls for c in counters]  # every replica served shards
    assert sum(c.calls for c in counters) == N_PROBE // SHARD
    assert st.counts["shards"] == N_PROBE // SHARD and st.counts["replicas"] == 3 and st.counts["replicas_dead"] == 0
    assert sum(st.counts[k] for k in ("mastered", "borderline", "failed")) == N_PROBE
    assert one_replica_probe.counts["shards"] == N_PROBE // SHARD  # same plan with one replica
    # each shard is its own committed dataset under the stage's output
    assert open_dataset(three).manifest["meta"]["shards"] == N_PROBE // SHARD


def test_a_replica_killed_mid_stage_its_shards_finish_elsewhere(setup, one_replica_probe, tmp_path):
    root, cfg, train, _ = setup
    servers = _start_replicas(cfg, 3)
    victim = Counting(servers[1], "probe")
    box: dict = {}

    def run():
        try:
            box["status"], _ = _probe(cfg, tmp_path / "killed", [s.address for s in servers], train)
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        assert victim.started.wait(60)
        time.sleep(0.3)  # mid-shard
        servers[1].stop(0)
        t.join(300)
    finally:
        for s in servers:
            s.stop(0)
    assert "error" not in box, box.get("error")
    st = box["status"].stage("probe")
    ref = st.outputs["probe_results"]
    ids = _ids(ref)
    assert len(ids) == len(set(ids)) == N_PROBE  # no duplicates, nothing lost
    assert ref.content_hash == one_replica_probe.outputs["probe_results"].content_hash
    assert st.counts["replicas_dead"] == 1 and servers[1].address in st.message
    assert st.counts["shard_retries"] >= 1


def test_an_unreachable_endpoint_is_reported_and_the_stage_goes_on(setup, one_replica_probe, tmp_path):
    root, cfg, train, servers = setup
    (dead,) = free_ports(1)
    targets = [f"127.0.0.1:{dead}", servers[0].address, servers[2].address]
    status, _ = _probe(cfg, tmp_path / "deadlist", targets, train)
    st = status.stage("probe")
    assert st.outputs["probe_results"].content_hash == one_replica_probe.outputs["probe_results"].content_hash
    assert st.counts["replicas_dead"] == 1 and f"127.0.0.1:{dead} (UNAVAILABLE" in st.message


def test_every_replica_down_is_an_error_naming_the_addresses(setup, tmp_path):
    root, cfg, train, _ = setup
    a, b = free_ports(2)
    with pytest.raises(StageError) as err:
        _probe(cfg, tmp_path / "down", [f"127.0.0.1:{a}", f"127.0.0.1:{b}"], train)
    assert err.value.reason == "ServiceUnavailable"
    assert f"127.0.0.1:{a} (UNAVAILABLE" in err.value.message and f"127.0.0.1:{b} (UNAVAILABLE" in err.value.message


def test_a_bad_endpoint_entry_is_one_line_naming_the_field(setup, tmp_path):
    root, cfg, train, _ = setup
    with pytest.raises(StageError, match=r"services.inference.endpoints: 'no-port' is not host:port"):
        _probe(cfg, tmp_path / "bad", ["no-port"], train)


def test_judge_shards_hash_like_one_replica_and_round_robin_spreads(setup, one_replica_probe, tmp_path):
    root, cfg, train, servers = setup
    probe = one_replica_probe.outputs["probe_results"]
    cfg = cfg.model_copy(deep=True)
    cfg.services.inference.shard_size = 20

    def judge(targets, base):
        ctx = _ctx(cfg, base, targets)
        status = RoundStatus()
        status.stage("probe").outputs["probe_results"] = probe
        stage_judge(ctx, status, lambda p: None)
        return status.stage("judge")

    one = judge([servers[0].address], tmp_path / "j1")
    counters = [Counting(s, "judge") for s in servers[:2]]
    # one balanced target: a round_robin channel over both replicas, two RPCs at a time
    balanced = "ipv4:" + ",".join(s.address for s in servers[:2])
    two = judge([balanced], tmp_path / "j2")
    assert one.outputs["verdicts"].content_hash == two.outputs["verdicts"].content_hash
    assert one.outputs["verdicts"].record_count == one_replica_probe.counts["failed"] > 0
    assert two.counts["shards"] == -(-N_PROBE // 20)
    assert all(c.calls >= 1 for c in counters), [c.calls for c in counters]


@pytest.fixture(scope="module")
def synthesizers():
    servers = [synth_server.start(None, port=0, toolsim_address="embedded") for _ in range(2)]
    for s in servers:
        wait_healthy(s.address, 30)
    yield servers
    for s in servers:
        s.stop(0)


def test_synthesis_shards_hash_like_one_replica(synthesizers, tmp_path):
    cfg = _cfg(tmp_path)
    spec = {"synthesis": {"numDialogues": 28, "concurrency": 2, "seed": 3}}

    def synthesize(targets, base):
        ctx = _ctx(cfg, base, targets, service="synthesizer", **spec)
        status = RoundStatus()
        stage_synthesize(ctx, status, lambda p: None)
        return status.stage("synthesize")

    one = synthesize([synthesizers[0].address], tmp_path / "s1")
    two = synthesize([s.address for s in synthesizers], tmp_path / "s2")
    for name in ("dialogs", "train", "heldout", "fresh"):
        assert one.outputs[name].content_hash == two.outputs[name].content_hash, name
    assert two.counts["shards"] == 4 and one.counts["shards"] == 4  # ceil(28 / 8), whatever the replicas
    dialogs = list(open_dataset(two.outputs["dialogs"]).iter_dicts())
    indices = [int(d["meta"]["index"]) for d in dialogs]
    assert indices == sorted(indices) and max(indices) >= 24  # shards cover the whole index range
    assert max(Counter(d["id"] for d in dialogs).values()) == 1
    firsts = [first_query_key(d) for d in dialogs]
    assert len(firsts) == len(set(firsts))  # no repeated first request across shards


def test_evaluation_spreads_over_replicas_with_the_same_accuracy(setup, tmp_path):
    root, cfg, train, servers = setup
    heldout = write_samples(str(tmp_path / "heldout"), make_samples(40, start=500))

    def evaluate(targets, base):
        ctx = _ctx(cfg, base, targets, eval={"maxTokens": 8})
        status = RoundStatus()
        status.stage("synthesize").outputs["heldout"] = heldout
        stage_evaluate(ctx, status, lambda p: None)
        return status.stage("evaluate")

    one = evaluate([servers[0].address], tmp_path / "e1")
    (dead,) = free_ports(1)
    two = evaluate([servers[0].address, f"127.0.0.1:{dead}", servers[1].address], tmp_path / "e2")
    assert one.metrics["accuracy_heldout"] == two.metrics["accuracy_heldout"]
    assert one.counts["n_heldout"] == two.counts["n_heldout"] == 40
    assert two.counts["replicas"] == 3 and two.counts["replicas_dead"] == 1 and f"127.0.0.1:{dead}" in two.message


def test_expansion_shards_hash_like_one_replica(setup, one_replica_probe, tmp_path):
    root, cfg, train, servers = setup
    cfg = cfg.model_copy(deep=True)
    cfg.services.inference.shard_size = 40
    cfg.services.expander.shard_size = 16
    probe = one_replica_probe.outputs["probe_results"]
    ctx = _ctx(cfg, tmp_path / "judged", [servers[0].address])
    status = RoundStatus()
    status.stage("synthesize").outputs["train"] = train
    status.stage("probe").outputs["probe_results"] = probe
    stage_judge(ctx, status, lambda p: None)
    assert status.stage("judge").counts["model_wrong"] > 16  # more seeds than one shard
    expanders = [expander_server.start(cfg, port=0) for _ in range(2)]
    try:
        outs = []
        for targets, tag in (([expanders[0].address], "x1"), ([e.address for e in expanders], "x2")):
            ctx = _ctx(cfg, tmp_path / tag, targets, service="expander", expand={"factor": 2})
            st = status.model_copy(deep=True)
            stage_expand(ctx, st, lambda p: None)
            outs.append(st.stage("expand"))
    finally:
        for e in expanders:
            e.stop(0)
    one, two = outs
    assert one.outputs["expansions"].content_hash == two.outputs["expansions"].content_hash
    assert one.outputs["next"].content_hash == two.outputs["next"].content_hash
    assert two.counts["shards"] == one.counts["shards"] >= 2 and two.outputs["expansions"].record_count > 0
    ids = [s.id for s in open_dataset(two.outputs["expansions"]).iter(Sample)]
    assert len(ids) == len(set(ids))
