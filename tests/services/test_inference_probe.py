"""GCP probing logic with a scripted Generator: classification, perplexity, sampled attempts, lineage,
per-item errors, resume after a crash, idempotence, bad input."""

from __future__ import annotations

import math

import pytest

from looptool.services.inference.probe import classify, perplexity, run_probe
from looptool.shared.errors import InputError
from looptool.shared.loop.manifest import ProbeSpec
from looptool.shared.prompt import build_chat, sample_chat
from looptool.shared.records import (
    ErrorInfo,
    Message,
    ProbeOutcome,
    ProbeResult,
    Progress,
    Sample,
    StageResult,
    Tool,
    ToolCall,
)
from looptool.shared.storage import open_dataset
from looptool.shared.toolcall_format import render_tool_calls

from support.inference import WEATHER, ScriptedGenerator, make_samples, write_samples


def answer(sample: Sample) -> str:
    return render_tool_calls(sample.reference)


def drain(events):
    out = {"progress": [], "errors": [], "result": None}
    for ev in events:
        if isinstance(ev, StageResult):
            out["result"] = ev
        elif isinstance(ev, ErrorInfo):
            out["errors"].append(ev)
        else:
            assert isinstance(ev, Progress)
            out["progress"].append(ev)
    return out


def by_id(samples):
    return {s.id: s for s in samples}


def test_classify_rule():
    assert classify(False, 3, 3, 1.0, 1.5)[0] == ProbeOutcome.FAILED
    assert classify(True, 2, 3, 1.0, 1.5)[0] == ProbeOutcome.BORDERLINE
    assert classify(True, 3, 3, 1.6, 1.5)[0] == ProbeOutcome.BORDERLINE
    assert classify(True, 3, 3, 1.5, 1.5)[0] == ProbeOutcome.MASTERED
    assert classify(True, 0, 0, 1.1, 1.5)[0] == ProbeOutcome.MASTERED
    assert perplexity(0.0) == 1.0 and perplexity(-math.log(2)) == pytest.approx(2.0) and perplexity(float("nan")) == 1.0


def test_probe_classifies_scores_and_records_lineage(tmp_path):
    samples = make_samples(8)
    ids = by_id(samples)
    order = [s.id for s in samples]
    # 0,1: right everywhere (mastered); 2: right greedily, wrong when sampled (borderline);
    # 3: right but unsure (borderline by perplexity); 4: wrong call; 5: garbage text;
    # 6: right call in different key order (mastered); 7: right but inside <think> only (failed)

    def script(r, i):
        sid = r.request_id.split("#")[0]
        s, k = ids[sid], order.index(sid)
        sampled = r.request_id.endswith("#sampled")
        if k == 2 and sampled and i == 1:
            return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nowhere"}}\n</tool_call>'
        if k == 4:
            return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Atlantis"}}\n</tool_call>'
        if k == 5:
            return "<tool_call>{not json"
        if k == 6:
            c = s.reference[0]
            return '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>' % (
                '{"days": %d, "city": "%s"}' % (c.arguments["days"], c.arguments["city"]))
        if k == 7:
            return "<think>" + answer(s) + "</think>I am not sure."
        return answer(s)

    gen = ScriptedGenerator(script, logprob=lambda r, i: -1.0 if order.index(r.request_id.split("#")[0]) == 3 else -0.01)
    src = write_samples(str(tmp_path / "samples"), samples)
    out = drain(run_probe(gen, src, str(tmp_path / "probe"), ProbeSpec(k=2, temperature=0.9, maxTokens=64, highPerplexity={"absolute": 1.5}), round=3, batch_size=3))
    res = out["result"]
    assert res.counts["mastered"] == 3 and res.counts["borderline"] == 2 and res.counts["failed"] == 3
    assert res.counts["errors"] == 0 and not out["errors"]
    assert res.outputs[0].kind == "probe_results" and res.outputs[0].record_count == 8
    assert out["progress"][-1].done == 8 and out["progress"][-1].total == 8
    results = {r.sample.id: r for r in open_dataset(res.outputs[0]).iter(ProbeResult)}
    assert [results[i].outcome.value for i in order] == [
        "mastered", "mastered", "borderline", "borderline", "failed", "failed", "mastered", "failed"]
    r2, r3, r5 = results[order[2]], results[order[3]], results[order[5]]
    assert (r2.sampled_correct, r2.sampled_total) == (1, 2)
    assert r3.perplexity == pytest.approx(math.e) and "perplexity" in r3.reason
    assert r5.parse_error and not r5.correct and "parse_error" in r5.reason
    assert results[order[4]].predicted_calls[0].arguments == {"city": "Atlantis"}
    for r in results.values():
        ev = r.sample.lineage[-1]
        assert (ev.round, ev.stage, ev.action, ev.reason) == (3, "probe", "probed", r.outcome.value)
    # greedy at temperature 0, sampled attempts as one request with n=k and a per-sample seed
    greedy = [r for r in gen.requests if not r.request_id.endswith("#sampled")]
    sampled = [r for r in gen.requests if r.request_id.endswith("#sampled")]
    assert all(r.params.temperature == 0 and r.params.max_tokens == 64 for r in greedy)
    assert all(r.params.temperature == 0.9 and r.params.n == 2 for r in sampled)
    assert len({r.params.seed for r in sampled}) == 8


def test_prompt_is_the_shared_sample_chat():
    s = make_samples(1)[0]
    s.meta["date"] = "2026-01-02"
    s.context.insert(0, Message(role="system", content="The user lives in Paris."))
    from looptool.services.inference.probe import probe_messages

    assert build_chat(probe_messages(s), s.tools) == sample_chat(s)


def test_resume_after_a_crash_probes_every_sample_exactly_once(tmp_path):
    samples = make_samples(23)
    ids = by_id(samples)
    src = write_samples(str(tmp_path / "samples"), samples)
    out_uri = str(tmp_path / "probe")
    calls = {"n": 0}

    def crashing(r, i):
        calls["n"] += 1
        if calls["n"] > 12:  # dies in the 4th batch of 4
            raise SystemExit("killed")
        return answer(ids[r.request_id])

    events = run_probe(ScriptedGenerator(crashing), src, out_uri, ProbeSpec(), round=1, batch_size=4)
    seen_progress = []
    with pytest.raises(SystemExit):
        for ev in events:
            seen_progress.append(ev)
    assert [p.done for p in seen_progress if isinstance(p, Progress)] == [4, 8, 12]
    gen2 = ScriptedGenerator(lambda r, i: answer(ids[r.request_id]))
    out = drain(run_probe(gen2, src, out_uri, ProbeSpec(), round=1, batch_size=4))
    res = out["result"]
    assert res.counts["resumed"] == 12 and len(gen2.requests) == 23 - 12
    got = [r.sample.id for r in open_dataset(res.outputs[0]).iter(ProbeResult)]
    assert sorted(got) == sorted(ids) and len(got) == len(set(got)) == 23
    assert res.counts["mastered"] == 23
    # finished: a third run does no work and returns the same dataset
    gen3 = ScriptedGenerator(lambda r, i: "")
    again = drain(run_probe(gen3, src, out_uri, ProbeSpec(), round=1))["result"]
    assert not gen3.requests and again.outputs[0].content_hash == res.outputs[0].content_hash
    assert again.counts["mastered"] == 23


def test_per_item_errors_do_not_stop_the_batch(tmp_path):
    samples = make_samples(4)
    bad_tool = Tool(name="broken", description="x", parameters={"type": "object", "properties": {"a": {"type": "nonsense"}}})
    samples[1] = Sample(context=samples[1].context, tools=[bad_tool], reference=[ToolCall(name="broken", arguments={})]).with_id()
    samples.append(samples[0].model_copy())  # a duplicate id
    ids = by_id(samples)
    too_long = samples[2].id

    def script(r, i):
        if r.request_id == too_long:
            return Exception("INVALID_ARGUMENT: prompt is 9000 tokens; the context limit is 4096")
        return answer(ids[r.request_id])

    src = write_samples(str(tmp_path / "samples"), samples)
    out = drain(run_probe(ScriptedGenerator(script), src, str(tmp_path / "probe"), ProbeSpec(), round=1))
    res = out["result"]
    assert res.counts["errors"] == 2 and res.counts["mastered"] == 2 and res.counts["duplicates"] == 1
    errs = {e.item_id: e for e in out["errors"]}
    assert errs[samples[1].id].code == "SCHEMA_VIOLATION" and "broken" in errs[samples[1].id].message
    assert errs[too_long].code == "INVALID_ARGUMENT" and "context limit" in errs[too_long].message
    assert res.outputs[0].record_count == 2


def test_sampled_attempt_errors_keep_the_greedy_result(tmp_path):
    samples = make_samples(2)
    ids = by_id(samples)

    def script(r, i):
        if r.request_id.endswith("#sampled"):
            return Exception("UNAVAILABLE: endpoint down")
        return answer(ids[r.request_id])

    src = write_samples(str(tmp_path / "samples"), samples)
    out = drain(run_probe(ScriptedGenerator(script), src, str(tmp_path / "probe"), ProbeSpec(k=3), round=1))
    assert out["result"].counts["mastered"] == 2 and out["result"].counts["errors"] == 0
    assert out["result"].counts["sampled_errors"] == 2 and len(out["errors"]) == 2


def test_empty_or_wrong_kind_dataset_is_a_clear_error(tmp_path):
    empty = write_samples(str(tmp_path / "empty"), [])
    with pytest.raises(InputError, match="empty"):
        list(run_probe(ScriptedGenerator(lambda r, i: ""), empty, str(tmp_path / "p"), ProbeSpec(), round=1))
    from looptool.shared.storage import writer_for_uri

    w = writer_for_uri(str(tmp_path / "tools"), kind="tools")
    w.write(WEATHER)
    with pytest.raises(InputError, match="not samples"):
        list(run_probe(ScriptedGenerator(lambda r, i: ""), w.commit(), str(tmp_path / "p2"), ProbeSpec(), round=1))


def test_a_cancelled_chunk_is_not_written_and_the_stage_stops(tmp_path):
    samples = make_samples(6)
    ids = by_id(samples)
    calls = {"n": 0}

    def script(r, i):
        calls["n"] += 1
        if calls["n"] > 3:  # second chunk: the caller went away mid-chunk
            return Exception("CANCELLED: request cancelled by the caller")
        return answer(ids[r.request_id])

    src = write_samples(str(tmp_path / "samples"), samples)
    out = drain(run_probe(ScriptedGenerator(script), src, str(tmp_path / "probe"), ProbeSpec(), round=1, batch_size=3))
    assert out["result"] is None and not out["errors"]  # no per-item errors for a cancellation
    resumed = drain(run_probe(ScriptedGenerator(lambda r, i: answer(ids[r.request_id])), src, str(tmp_path / "probe"),
                              ProbeSpec(), round=1, batch_size=3))["result"]
    assert resumed.counts["resumed"] == 3 and resumed.counts["mastered"] == 6


def test_resumed_probe_with_the_real_backend_writes_the_same_bytes(tmp_path):
    """Kill-and-resume reproducibility on the CPU backend: chunks are flushed whole and handed to the
    backend atomically, so the resumed run cuts the same batches and the content hash is identical."""
    from support.inference import one_torch_thread, tiny_model_dir  # noqa: F401

    from looptool.services.inference.backends.hf import TransformersBackend

    backend = TransformersBackend(str(tiny_model_dir()), max_batch_size=6, batch_wait_ms=20)
    try:
        samples = make_samples(14)
        src = write_samples(str(tmp_path / "samples"), samples)
        spec = ProbeSpec(k=2, temperature=1.0, maxTokens=12, highPerplexity={"absolute": 1.5})
        full = drain(run_probe(backend, src, str(tmp_path / "full"), spec, round=1, batch_size=4))["result"]

        class DiesAfter:
            def __init__(self, n):
                self.n = n

            def generate(self, requests):
                self.n -= 1
                if self.n < 0:
                    raise SystemExit("killed")
                return backend.generate(requests)

        with pytest.raises(SystemExit):
            list(run_probe(DiesAfter(2), src, str(tmp_path / "resumed"), spec, round=1, batch_size=4))
        resumed = drain(run_probe(backend, src, str(tmp_path / "resumed"), spec, round=1, batch_size=4))["result"]
        assert resumed.counts["resumed"] == 8
        assert resumed.outputs[0].content_hash == full.outputs[0].content_hash
    finally:
        backend.close()
