"""CPU-bound stage work in worker processes (``shared.workers``): synthesis, expansion and the grounding
judge give the same bytes with 1 or 2 worker processes as in-process; a worker that dies is retried or
surfaces as a clear error (never a hang); metrics counted in workers reach the parent's registry."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from looptool.services.expander.expand import ExpandConfig, Expander
from looptool.services.inference.judge import GroundingJudge, run_judge
from looptool.services.synthesizer import server as synth_server
from looptool.services.synthesizer.agents import make_agents
from looptool.services.synthesizer.client import SynthesizerClient
from looptool.services.synthesizer.config import SynthesisConfig
from looptool.services.synthesizer.engine import LocalToolBackend, run_synthesis
from looptool.services.toolsim import server as toolsim_server
from looptool.shared.config import LoopToolConfig
from looptool.shared.grpc_util import wait_healthy
from looptool.shared.loop.manifest import JudgeSpec
from looptool.shared.records import ErrorInfo, Message, ProbeOutcome, ProbeResult, Sample, StageResult, ToolCall
from looptool.shared.storage import open_dataset, writer_for_uri
from looptool.shared.toolcall_format import render_tool_calls
from looptool.shared.toolsets import import_source, store_toolset
from looptool.shared.workers import WorkerCrashed, WorkerPool, pool_size

from support.inference import FLIGHT, WEATHER
from support.worker_tasks import DyingBackend, die_at, pid_and_state, square

pytestmark = pytest.mark.timeout(300)  # a lost worker must fail a test, not hang the suite

@pytest.fixture(scope="module")
def bfcl_tools():
    return import_source("bfcl:simple_python", limit=10).tools


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# ----------------------------------------------------------------------------- the pool itself


def test_pool_size_follows_request_and_setting():
    assert pool_size(3, 2) == 2 and pool_size(1, 8) == 1 and pool_size(None, 4) == 4
    assert pool_size(5, 0) == 0  # 0: no processes
    assert 1 <= pool_size(None, None) <= os.cpu_count()


def test_results_in_order_with_worker_state_and_metrics_aggregated():
    before = {p: _value("looptool_test_workers_items_total", {"parity": p}) for p in ("even", "odd")}
    sizes_before = (_value("looptool_test_workers_sizes_count"), _value("looptool_test_workers_sizes_sum"),
                    _value("looptool_test_workers_sizes_bucket", {"le": "10.0"}))
    with WorkerPool(2, init=functools.partial(int, "1000")) as pool:
        out = list(pool.imap(square, [(x,) for x in range(40)], window=5))
    assert out == [x * x + 1000 for x in range(40)]
    # every increment made in a worker is in this process' registry, once
    assert _value("looptool_test_workers_items_total", {"parity": "even"}) - before["even"] == 20
    assert _value("looptool_test_workers_items_total", {"parity": "odd"}) - before["odd"] == 20
    assert _value("looptool_test_workers_sizes_count") - sizes_before[0] == 40
    assert _value("looptool_test_workers_sizes_sum") - sizes_before[1] == sum(range(40))
    assert _value("looptool_test_workers_sizes_bucket", {"le": "10.0"}) - sizes_before[2] == 11  # 0..10


def test_runs_share_the_processes_but_each_has_its_own_state():
    first = WorkerPool(2, init=functools.partial(int, "1"))
    second = WorkerPool(2, init=functools.partial(int, "2"))
    a, b = first.imap(pid_and_state, [(x,) for x in range(12)], window=3), second.imap(pid_and_state, [(x,) for x in range(12)])
    got_a, got_b = [], []
    for ra, rb in zip(a, b):  # interleaved: the same processes serve both runs
        got_a.append(ra)
        got_b.append(rb)
    assert {state for _, state in got_a} == {1} and {state for _, state in got_b} == {2}
    later = WorkerPool(2, init=functools.partial(int, "3")).map(pid_and_state, [(x,) for x in range(6)])
    assert {state for _, state in later} == {3}
    assert {pid for pid, _ in later} <= {pid for pid, _ in got_a + got_b}  # no new processes for a new run


def test_a_killed_worker_is_retried_on_a_fresh_pool(tmp_path):
    marker = str(tmp_path / "died")
    with WorkerPool(2, max_restarts=1) as pool:
        out = list(pool.imap(die_at, [(x, 7, marker) for x in range(20)]))
        assert pool.restarts == 1
    assert Path(marker).exists() and out == list(range(20))


def test_a_worker_that_keeps_dying_is_a_clear_error_not_a_hang():
    with WorkerPool(2, max_restarts=1) as pool:
        got = []
        with pytest.raises(WorkerCrashed, match=r"worker process died while running item \d+.*Gave up after 1 restart") as err:
            for x in pool.imap(die_at, [(x, 7, "") for x in range(20)], label=lambda a: f"item {a[0]}"):
                got.append(x)
    # what came back is in order and stops before the item that kills its worker; the message names
    # the tasks in flight (the first of them is the first not returned), item 7 among them
    assert got == list(range(len(got))) and len(got) <= 7
    first = int(re.search(r"running item (\d+)", str(err.value)).group(1))
    last = int(m.group(1)) if (m := re.search(r"… item (\d+)", str(err.value))) else first
    assert first == len(got) and first <= 7 <= last


# ----------------------------------------------------------------------------- synthesis


def _synth(tools, uri, processes, backend=None, **kw):
    cfg = SynthesisConfig()
    return run_synthesis(tools, 24, 7, uri, cfg, make_agents(cfg), backend or LocalToolBackend(), concurrency=2,
                         processes=processes, **kw)


def _files(uri: str) -> dict[str, bytes]:
    """A dataset's files, byte for byte; the manifest without its ``created_at`` (the wall clock)."""
    root = Path(uri.removeprefix("file://"))
    out = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = json.loads(out.pop("_manifest.json"))
    assert manifest.pop("created_at")
    out["_manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return out


def test_synthesis_same_bytes_with_threads_and_1_or_2_worker_processes(bfcl_tools, tmp_path):
    turns = "looptool_synthesizer_assistant_turns_total"
    runs = {}
    for processes in (0, 1, 2):
        before = {k: _value(turns, {"kind": k}) for k in ("call", "parallel", "summary", "clarification", "no_tool")}
        res, dialogs, errors = _synth(bfcl_tools, (tmp_path / f"p{processes}").as_uri(), processes)
        assert res is not None and not errors
        turns_counted = {k: _value(turns, {"kind": k}) - v for k, v in before.items()}
        runs[processes] = (res, [d.id for d in dialogs], turns_counted, _files((tmp_path / f"p{processes}").as_uri()))
    base = runs[0]
    assert sum(base[2].values()) > 0
    for processes in (1, 2):
        res, ids, turns_counted, files = runs[processes]
        assert res.outputs[0].content_hash == base[0].outputs[0].content_hash
        assert res.counts == base[0].counts and ids == base[1]
        assert files == base[3]  # byte for byte, manifest included
        assert turns_counted == base[2]  # the workers' metric increments reached this process


def _session_seed(index: int, seed: int = 7) -> int:
    from looptool.services.synthesizer.engine import dialog_seed

    return dialog_seed(seed, index) & 0x7FFFFFFFFFFFFFFF


def test_synthesis_survives_one_killed_worker_with_identical_output(bfcl_tools, tmp_path):
    ref, _, _ = _synth(bfcl_tools, (tmp_path / "ref").as_uri(), 0)
    marker = str(tmp_path / "died")
    res, _, errors = _synth(bfcl_tools, (tmp_path / "retried").as_uri(), 2, DyingBackend(_session_seed(9), marker))
    assert Path(marker).exists() and not errors
    assert res is not None and res.outputs[0].content_hash == ref.outputs[0].content_hash and res.counts == ref.counts


def test_synthesis_worker_that_keeps_dying_ends_the_run_with_a_clear_error_and_resumes(bfcl_tools, tmp_path):
    ref, _, _ = _synth(bfcl_tools, (tmp_path / "ref").as_uri(), 0)
    uri = (tmp_path / "crash").as_uri()
    cfg = SynthesisConfig(part_size=4)
    res, _, errors = run_synthesis(bfcl_tools, 24, 7, uri, cfg, make_agents(cfg), DyingBackend(_session_seed(13)),
                                   concurrency=2, processes=2)
    assert res is None
    assert [e.code for e in errors] == ["WORKER_CRASHED"]
    assert re.search(r"worker process died while running dialogues \d+-\d+.*Gave up after 1 restart", errors[0].message)
    # the dialogues before it are durable: a rerun resumes after them and commits the same bytes
    again, _, errors = run_synthesis(bfcl_tools, 24, 7, uri, cfg, make_agents(cfg), LocalToolBackend(),
                                     concurrency=2, processes=2)
    assert not errors and again.counts["resumed"] > 0
    ref_cfg, _, _ = run_synthesis(bfcl_tools, 24, 7, (tmp_path / "ref4").as_uri(), cfg, make_agents(cfg), LocalToolBackend())
    assert again.outputs[0].content_hash == ref_cfg.outputs[0].content_hash


def test_grpc_synthesis_workers_open_their_own_toolsim_channels(bfcl_tools, tmp_path):
    """Through the services: concurrency 2 runs two worker processes, each with its own channel to the
    remote simulator; the bytes equal an in-process run with an embedded simulator."""
    ref, _, _ = _synth(bfcl_tools, (tmp_path / "ref").as_uri(), 0)
    cfg = LoopToolConfig()
    cfg.services.synthesizer.processes = 2  # whatever this machine's CPU count
    toolsim = toolsim_server.start(None, port=0)
    synth = synth_server.start(cfg, port=0, toolsim_address=toolsim.address)
    try:
        wait_healthy(toolsim.address, 20)
        wait_healthy(synth.address, 20)
        calls = "looptool_toolsim_calls_total"
        before = _value(calls, {"mode": "schema"})
        toolset = store_toolset(bfcl_tools, (tmp_path / "toolset").as_uri())
        with SynthesizerClient(synth.address) as client:
            res, _, errors = client.synthesize(toolset, 24, seed=7, concurrency=2, output_prefix=(tmp_path / "grpc").as_uri())
        assert not errors and res.outputs[0].content_hash == ref.outputs[0].content_hash
        assert _value(calls, {"mode": "schema"}) > before  # the remote simulator (this process) served the calls
    finally:
        synth.stop(0)
        toolsim.stop(0)


# ----------------------------------------------------------------------------- expansion


def _sample(text: str, tools, calls) -> Sample:
    return Sample(context=[Message(role="user", content=text)], tools=tools, reference=calls, source="synthesize").with_id()


def _verdicts(root: str):
    from looptool.shared.records import Decision, JudgedSample, Verdict

    rows = []
    for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Perth", "Turin"]):
        s = _sample(f"Weather in {city} for {i + 2} days?", [WEATHER, FLIGHT],
                    [ToolCall(name="get_weather", arguments={"city": city, "days": i + 2})])
        wrong = [ToolCall(name="get_weather", arguments={"city": "London"})]
        probe = ProbeResult(sample=s, prediction=render_tool_calls(wrong), predicted_calls=wrong)
        rows.append(JudgedSample(probe=probe, verdict=Verdict(sample_id=s.id, decision=Decision.MODEL_WRONG, reason="city")))
    w = writer_for_uri(f"{root}/verdicts", kind="verdicts")
    w.write_many(rows)
    return w.commit()


def test_expansion_same_bytes_in_process_and_with_1_or_2_workers(tmp_path):
    root = tmp_path.as_uri()
    verdicts = _verdicts(root)
    cfg = ExpandConfig(flushEvery=4)
    results = {p: Expander(cfg, processes=p).run(verdicts, f"{root}/out{p}", 3, 5, 1) for p in (0, 1, 2)}
    assert results[0].counts["written"] > 0
    for p in (1, 2):
        assert results[p].outputs[0].content_hash == results[0].outputs[0].content_hash
        assert results[p].counts == results[0].counts
        assert _files(f"{root}/out{p}") == _files(f"{root}/out0")


# ----------------------------------------------------------------------------- the grounding judge


def test_grounding_judge_same_verdicts_in_process_and_with_1_or_2_workers(tmp_path):
    rows = []
    for i in range(23):
        label = [ToolCall(name="get_weather", arguments={"city": "Lyon" if i % 3 else "Paris", "days": 3})]
        pred = render_tool_calls([ToolCall(name="get_weather", arguments={"city": "Paris" if i % 2 else "Berlin", "days": 3})])
        s = Sample(context=[Message(role="user", content=f"Weather in Paris for 3 days? #{i}")], tools=[WEATHER, FLIGHT],
                   reference=label).with_id()
        rows.append(ProbeResult(sample=s, prediction=pred, outcome=ProbeOutcome.FAILED))
    w = writer_for_uri(str(tmp_path / "probe"), kind="probe_results")
    w.write_many(rows)
    ref = w.commit()
    verdict_total = "looptool_inference_judge_verdicts_total"
    out = {}
    for p in (0, 1, 2):
        before = _value(verdict_total, {"decision": "label_wrong"})
        events = list(run_judge(GroundingJudge(), ref, str(tmp_path / f"v{p}"), JudgeSpec(backend="grounding"), round=1,
                                batch_size=8, processes=p))
        assert not [e for e in events if isinstance(e, ErrorInfo)]
        res = [e for e in events if isinstance(e, StageResult)][0]
        out[p] = (res, _value(verdict_total, {"decision": "label_wrong"}) - before)
    assert out[0][0].counts["label_wrong"] > 0 and out[0][1] == out[0][0].counts["label_wrong"]
    for p in (1, 2):
        assert out[p][0].outputs[0].content_hash == out[0][0].outputs[0].content_hash
        assert out[p][0].counts == out[0][0].counts and out[p][1] == out[0][1]
        assert list(open_dataset(out[p][0].outputs[0]).iter_dicts()) == list(open_dataset(out[0][0].outputs[0]).iter_dicts())
