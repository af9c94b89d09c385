"""Composition as the paper's Eq. 5: model-wrong + label-fixed + EDDE + high-perplexity + fresh seed;
mastered, both-acceptable (as mastered) and both-wrong samples leave; unclear ("cannot tell") is its
own policy; every kept or dropped sample says why in its lineage."""

from __future__ import annotations

import pytest

from looptool.shared.compose import compose_next_round, percentile, round_half_up
from looptool.shared.loop.manifest import ComposeSpec, ManifestError, PerplexityThreshold, ProbeSpec, parse_round
from looptool.shared.records import (
    Decision,
    JudgedSample,
    Message,
    ProbeOutcome,
    ProbeResult,
    Sample,
    Tool,
    ToolCall,
    Verdict,
)
from looptool.shared.storage import open_dataset, writer_for_uri

TOOL = Tool(
    name="get_weather",
    description="Get the weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def w(city: str) -> ToolCall:
    return ToolCall(name="get_weather", arguments={"city": city})


def sample(name: str, city: str, source: str = "synthesize") -> Sample:
    return Sample(context=[Message(role="user", content=f"[{name}] weather in {city}?")], tools=[TOOL], reference=[w(city)],
                  source=source).with_id()


def probe(s: Sample, outcome: ProbeOutcome, correct: bool, ppl: float = 1.0, pred: str = "") -> ProbeResult:
    return ProbeResult(sample=s, prediction="", predicted_calls=[w(pred or "Nowhere")] if not correct else s.reference,
                       correct=correct, perplexity=ppl, outcome=outcome)


def judged(p: ProbeResult, d: Decision, corrected=()) -> JudgedSample:
    return JudgedSample(probe=p, verdict=Verdict(sample_id=p.sample.id, decision=d, reason=f"judge says {d.value}",
                                                 analysis="a", correct_approach="b", corrected=list(corrected)))


MASTERED = sample("mastered", "Paris")
HIGH_PPL = sample("high-ppl", "Oslo")
MODEL_WRONG = sample("model-wrong", "Cairo")
LABEL_WRONG = sample("label-wrong", "Lyon")
BOTH_OK = sample("both-acceptable", "Quito")
BOTH_WRONG = sample("both-wrong", "Kyiv")
UNCLEAR = sample("unclear", "Bern")


def write(uri: str, records, kind: str = "samples"):
    w_ = writer_for_uri(uri, kind=kind)
    w_.write_many(records)
    return w_.commit()


def build(tmp_path, fresh_samples: list[Sample] | None = None):
    root = tmp_path.as_uri()
    probes = [
        probe(MASTERED, ProbeOutcome.MASTERED, True, 1.01),
        probe(HIGH_PPL, ProbeOutcome.BORDERLINE, True, 2.5),
        probe(MODEL_WRONG, ProbeOutcome.FAILED, False),
        probe(LABEL_WRONG, ProbeOutcome.FAILED, False, pred="Lima"),
        probe(BOTH_OK, ProbeOutcome.FAILED, False, pred="Quito"),
        probe(BOTH_WRONG, ProbeOutcome.FAILED, False),
        probe(UNCLEAR, ProbeOutcome.FAILED, False),
    ]
    verdicts = [
        judged(probes[2], Decision.MODEL_WRONG),
        judged(probes[3], Decision.LABEL_WRONG, [w("Lima")]),
        judged(probes[4], Decision.BOTH_ACCEPTABLE),
        judged(probes[5], Decision.BOTH_WRONG),
        judged(probes[6], Decision.UNCLEAR),
    ]
    edde = [sample(f"edde-{i}", c, source="edde") for i, c in enumerate(["Tunis", "Accra"])]
    return (
        root,
        write(f"{root}/probe", probes, "probe_results"),
        write(f"{root}/verdicts", verdicts, "verdicts"),
        write(f"{root}/edde", edde),
        write(f"{root}/fresh", fresh_samples) if fresh_samples is not None else None,
    )


def load(uri) -> dict[str, Sample]:
    return {s.id: s for s in open_dataset(uri).iter(Sample)}


def reason(s: Sample) -> str:
    return s.lineage[-1].reason


def test_eq5_defaults(tmp_path):
    root, probes, verdicts, edde, _ = build(tmp_path)
    ref, counts = compose_next_round(probes, verdicts, edde, None, f"{root}/next", ComposeSpec(), round=2)
    out, dropped = load(ref.uri), load(f"{root}/next-dropped")
    # kept: model-wrong + label-fixed + EDDE + high-perplexity (+ unclear: "cannot tell" keeps its label by default)
    assert set(out) == {MODEL_WRONG.id, LABEL_WRONG.id, HIGH_PPL.id, UNCLEAR.id} | {s.id for s in open_dataset(edde).iter(Sample)}
    # dropped: mastered, both acceptable (as mastered), both wrong
    assert set(dropped) == {MASTERED.id, BOTH_OK.id, BOTH_WRONG.id}
    assert out[LABEL_WRONG.id].reference == [w("Lima")]
    # lineage says why, category first
    assert reason(out[MODEL_WRONG.id]).startswith("model_wrong: label kept; judge: judge says model_wrong")
    assert reason(out[LABEL_WRONG.id]).startswith("label_wrong:")
    assert reason(out[HIGH_PPL.id]).startswith("high_perplexity: correct but unsure, perplexity 2.50")
    assert reason(out[UNCLEAR.id]).startswith("unclear:") and "unclear_policy=keep" in reason(out[UNCLEAR.id])
    assert reason(dropped[MASTERED.id]).startswith("mastered: greedy answer correct")
    assert reason(dropped[BOTH_OK.id]).startswith("both_acceptable: the prediction is also right, treated as mastered")
    assert reason(dropped[BOTH_WRONG.id]).startswith("both_wrong: label and prediction wrong (bothWrong=drop)")
    assert all(s.lineage[-1].action == "dropped" and s.lineage[-1].round == 2 for s in dropped.values())
    assert counts == counts | {"mastered_dropped": 1, "both_acceptable": 1, "both_wrong_dropped": 1, "both_wrong_kept": 0,
                               "unclear_kept": 1, "high_perplexity": 1, "model_wrong": 1, "relabelled": 1, "expanded": 2,
                               "dropped": 3, "total": 6}


def test_both_wrong_and_unclear_are_separate_policies(tmp_path):
    root, probes, verdicts, edde, _ = build(tmp_path)
    # unclear dropped, both_wrong kept: the two never share a policy
    ref, counts = compose_next_round(probes, verdicts, edde, None, f"{root}/a", ComposeSpec(bothWrong="keep"), round=1,
                                     unclear_policy="drop")
    out, dropped = load(ref.uri), load(f"{root}/a-dropped")
    assert BOTH_WRONG.id in out and UNCLEAR.id in dropped
    assert reason(out[BOTH_WRONG.id]).startswith("both_wrong: label kept (bothWrong=keep)")
    assert reason(dropped[UNCLEAR.id]).startswith("unclear:") and counts["unclear_dropped"] == 1 and counts["both_wrong_kept"] == 1


def test_both_acceptable_as_mastered_follows_drop_mastered_or_is_kept(tmp_path):
    root, probes, verdicts, edde, _ = build(tmp_path)
    keep_all, _ = compose_next_round(probes, verdicts, edde, None, f"{root}/a", ComposeSpec(dropMastered=False), round=1)
    out = load(keep_all.uri)
    assert MASTERED.id in out and BOTH_OK.id in out
    assert reason(out[BOTH_OK.id]).startswith("both_acceptable:") and "dropMastered=false" in reason(out[BOTH_OK.id])
    kept, _ = compose_next_round(probes, verdicts, edde, None, f"{root}/b", ComposeSpec(bothAcceptable="keep"), round=1)
    out = load(kept.uri)
    assert MASTERED.id not in out and BOTH_OK.id in out and "bothAcceptable=keep" in reason(out[BOTH_OK.id])


def test_keep_high_perplexity_off_treats_them_as_mastered(tmp_path):
    root, probes, verdicts, edde, _ = build(tmp_path)
    ref, counts = compose_next_round(probes, verdicts, edde, None, f"{root}/a", ComposeSpec(keepHighPerplexity=False), round=1)
    dropped = load(f"{root}/a-dropped")
    assert HIGH_PPL.id not in load(ref.uri) and HIGH_PPL.id in dropped
    assert "keepHighPerplexity=false treats it as mastered" in reason(dropped[HIGH_PPL.id])
    assert counts["high_perplexity"] == 0 and counts["high_perplexity_dropped"] == 1


def test_fresh_seed_samples_enter_through_the_rule(tmp_path):
    new = [sample(f"new-{i}", f"Town{i}", source="fresh") for i in range(10)]
    # this round's fresh output: samples the probe placed (mastered, both_wrong, model_wrong) and new ones
    fresh = [MASTERED, BOTH_WRONG, MODEL_WRONG, *new]
    root, probes, verdicts, edde, fresh_ref = build(tmp_path, fresh)
    none, c0 = compose_next_round(probes, verdicts, edde, fresh_ref, f"{root}/f0", ComposeSpec(), round=1)
    assert c0["fresh"] == 0 and none.record_count == c0["total"] == 6  # default 0: the next round synthesizes new ones
    assert c0["fresh_placed"] == 1 and c0["fresh_rejected"] == 1  # model_wrong kept already; both_wrong never

    spec = ComposeSpec(freshSeedFraction=0.5)
    ref, counts = compose_next_round(probes, verdicts, edde, fresh_ref, f"{root}/f", spec, round=1)
    out, dropped = load(ref.uri), load(f"{root}/f-dropped")
    base = 6
    assert counts["fresh"] == round_half_up(0.5 * base) == 3 and counts["total"] == base + 3
    # in fresh order: the mastered one comes back as seed data (and leaves the dropped set), then new ones
    assert MASTERED.id in out and MASTERED.id not in dropped
    assert reason(out[MASTERED.id]).startswith("fresh: seed sample of this round, kept as seed data although mastered:")
    assert [s.id for s in new[:2]] == [sid for sid in out if sid in {s.id for s in new}]
    assert reason(out[new[0].id]) == "fresh: new seed sample"
    # a both_wrong sample is never seed data; a sample already kept is not written twice
    assert BOTH_WRONG.id in dropped and BOTH_WRONG.id not in out
    assert counts["fresh_rejected"] == 1 and counts["fresh_placed"] == 1 and counts["dropped"] == 2
    assert counts["mastered_dropped"] == 1  # what the probe found; "fresh" says where it went
    # the fraction is a cap, relative to everything above
    big, cb = compose_next_round(probes, verdicts, edde, fresh_ref, f"{root}/g", ComposeSpec(freshSeedFraction=10), round=1)
    assert cb["fresh"] == 1 + len(new)


def test_calibrated_high_perplexity_percentile(tmp_path):
    root = tmp_path.as_uri()
    samples = [sample(f"c{i}", f"City{i}") for i in range(11)]
    ppls = [1.0 + i / 10 for i in range(11)]  # 1.0 .. 2.0, all correct; the probe (percentile mode) said mastered
    probes = write(f"{root}/probe", [probe(s, ProbeOutcome.MASTERED, True, p) for s, p in zip(samples, ppls)], "probe_results")
    assert percentile(ppls, 80) == pytest.approx(1.8)
    ref, counts = compose_next_round(probes, None, None, None, f"{root}/next", ComposeSpec(), round=1,
                                     high_perplexity=PerplexityThreshold(percentile=80))
    out = load(ref.uri)
    assert set(out) == {samples[9].id, samples[10].id} and counts["high_perplexity"] == 2 and counts["mastered_dropped"] == 9
    assert "> 1.80 (round percentile)" in reason(out[samples[10].id])
    assert open_dataset(ref.uri).manifest["meta"]["perplexity_threshold"] == pytest.approx(1.8)
    # absolute mode: the probe's classification stands (all mastered here)
    ref2, c2 = compose_next_round(probes, None, None, None, f"{root}/abs", ComposeSpec(), round=1,
                                  high_perplexity=PerplexityThreshold(absolute=1.5))
    assert c2["total"] == 0 and c2["mastered_dropped"] == 11


def test_perplexity_threshold_field():
    assert ProbeSpec().highPerplexity.absolute == 1.5 and ProbeSpec().highPerplexity.fixed() == 1.5
    pct = ProbeSpec(highPerplexity={"percentile": 90}).highPerplexity
    assert pct.percentile == 90 and pct.absolute is None and pct.fixed() == float("inf")
    base = {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r"},
            "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"file": "t.json"}}}
    for bad, fragment in (({"highPerplexity": 1.5}, "write {absolute: 1.5}"),
                          ({"highPerplexity": {"absolute": 1.5, "percentile": 90}}, "not both"),
                          ({"highPerplexity": {"percentile": 100}}, "percentile")):
        with pytest.raises(ManifestError) as e:
            parse_round({**base, "spec": {**base["spec"], "probe": bad}})
        assert "spec.probe.highPerplexity" in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)
