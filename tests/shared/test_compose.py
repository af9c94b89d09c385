"""Round composition (Eq. 5), dataset diff and ``looptool data diff``."""

from __future__ import annotations

import pytest

from looptool.shared.compose import compose_next_round, diff_datasets, format_diff, reference_key
from looptool.shared.loop.manifest import ComposeSpec
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
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
)


def w(city: str, **kw) -> ToolCall:
    return ToolCall(name="get_weather", arguments={"city": city, **kw})


def sample(name: str, city: str, source: str = "synthesize") -> Sample:
    s = Sample(context=[Message(role="user", content=f"[{name}] weather in {city}?")], tools=[TOOL], reference=[w(city)], source=source)
    s.add_lineage(1, "synthesize", "created", reason="dialog d-1")
    return s.with_id()


def probe(s: Sample, outcome: ProbeOutcome, correct: bool, pred: list[ToolCall] | None = None, ppl: float = 1.0) -> ProbeResult:
    return ProbeResult(sample=s, prediction="", predicted_calls=pred or [], correct=correct, perplexity=ppl, outcome=outcome,
                       sampled_correct=1 if outcome == ProbeOutcome.BORDERLINE and not correct else 0, sampled_total=4)


M = sample("mastered", "Paris")
B1 = sample("borderline-correct", "Oslo")
B2 = sample("borderline-wrong", "Rome")
F_LABEL = sample("label-wrong", "Lyon")  # reference says Lyon; the user meant Lima
F_MODEL = sample("model-wrong", "Cairo")
F_BOTH = sample("both", "Quito")
F_UNCLEAR = sample("unclear", "Kyiv")
F_UNJUDGED = sample("unjudged", "Lagos")
F_BADFIX = sample("bad-fix", "Bern")
F_TEXT = sample("text-fix", "Dakar")  # the right answer is to ask, not to call


def verdict(s: Sample, d: Decision, corrected=(), reason="because") -> Verdict:
    return Verdict(sample_id=s.id, decision=d, reason=reason, corrected=list(corrected))


def build(tmp_path):
    root = tmp_path.as_uri()
    probes = [
        probe(M, ProbeOutcome.MASTERED, True, [w("Paris")]),
        probe(B1, ProbeOutcome.BORDERLINE, True, [w("Oslo")], ppl=2.7),
        probe(B2, ProbeOutcome.BORDERLINE, False, [w("Roma")]),
        probe(F_LABEL, ProbeOutcome.FAILED, False, [w("Lima")]),
        probe(F_MODEL, ProbeOutcome.FAILED, False, [w("Cairo", unit="celsius")]),
        probe(F_BOTH, ProbeOutcome.FAILED, False, [w("Quito", unit="celsius")]),
        probe(F_UNCLEAR, ProbeOutcome.FAILED, False, [w("Kiev")]),
        probe(F_UNJUDGED, ProbeOutcome.FAILED, False, []),
        probe(F_BADFIX, ProbeOutcome.FAILED, False, [w("Bern", unit="kelvin")]),
        probe(F_TEXT, ProbeOutcome.FAILED, False, []),
    ]
    probes[-1].prediction = "Which city do you mean?"
    # as the judge writes it: the judged copy already carries the new label, the old one in meta
    judged_label = probes[3].model_copy(deep=True)
    judged_label.sample.meta["label_before_judge"] = '[{"name":"get_weather","arguments":{"city":"Lyon"}}]'
    judged_label.sample.reference = [w("Lima")]
    judged_label.sample.add_lineage(1, "judge", "relabelled", reason="label_wrong: the user said Lima")
    verdicts = [
        JudgedSample(probe=judged_label, verdict=verdict(F_LABEL, Decision.LABEL_WRONG, [w("Lima")], "the user said Lima")),
        JudgedSample(probe=probes[4], verdict=verdict(F_MODEL, Decision.MODEL_WRONG, reason="no unit was asked for")),
        JudgedSample(probe=probes[5], verdict=verdict(F_BOTH, Decision.BOTH_ACCEPTABLE)),
        JudgedSample(probe=probes[6], verdict=verdict(F_UNCLEAR, Decision.UNCLEAR)),
        JudgedSample(probe=probes[8], verdict=verdict(F_BADFIX, Decision.LABEL_WRONG, [w("Bern", unit="kelvin")])),
        JudgedSample(probe=probes[9], verdict=verdict(F_TEXT, Decision.LABEL_WRONG, [])),
    ]
    exp = [sample(f"edde-{i}", c, source="edde") for i, c in enumerate(["Tunis", "Accra"])]
    for e in exp:
        e.meta["edde_seed"] = F_MODEL.id
    exp.append(B1.model_copy(deep=True))  # an id already composed: written once
    fresh = [sample(f"fresh-{i}", f"Town{i}", source="fresh") for i in range(20)]

    def ds(name, records, kind="samples"):
        wr = writer_for_uri(f"{root}/{name}", kind=kind)
        wr.write_many(records)
        return wr.commit()

    train = ds("train", [p.sample for p in probes])
    return root, train, ds("probe", probes, "probe_results"), ds("verdicts", verdicts, "verdicts"), ds("exp", exp), ds("fresh", fresh)


def load(uri) -> dict[str, Sample]:
    return {s.id: s for s in open_dataset(uri).iter(Sample)}


def test_each_category_is_routed(tmp_path):
    root, train, probes, verdicts, exp, fresh = build(tmp_path)
    ref, counts = compose_next_round(
        probes, verdicts, exp, fresh, f"{root}/next", ComposeSpec(dropMastered=True, freshSeedFraction=0.5), round=1,
        unclear_policy="drop", dropped_uri=f"{root}/dropped",
    )
    out = load(ref.uri)
    assert ref.record_count == len(out) == counts["total"]
    # mastered dropped, and both_acceptable with it (paper: like mastered); unclear dropped by policy,
    # and so is a correction that does not validate
    assert M.id not in out and F_BOTH.id not in out and F_UNCLEAR.id not in out and F_BADFIX.id not in out
    for kept in (B1, B2, F_LABEL, F_MODEL, F_UNJUDGED, F_TEXT):
        assert kept.id in out
    # label_wrong: the corrected label replaces the reference; id kept; lineage extended
    fixed = out[F_LABEL.id]
    assert fixed.reference == [w("Lima")]
    assert [(e.stage, e.action) for e in fixed.lineage] == [
        ("synthesize", "created"), ("judge", "relabelled"), ("compose", "relabelled"),
    ]
    ev = fixed.lineage[-1]
    assert ev.round == 1 and "Lyon" in ev.reason and "Lima" in ev.reason and "the user said Lima" in ev.reason
    # text answer: no corrected calls, the model asked instead
    assert out[F_TEXT.id].reference == [] and out[F_TEXT.id].reference_text == "Which city do you mean?"
    assert counts["relabel_rejected"] == 1  # Bern/kelvin: not in the unit enum
    # model_wrong / borderline: labels unchanged
    for sid, s in ((F_MODEL.id, F_MODEL), (B1.id, B1), (B2.id, B2)):
        assert out[sid].reference == s.reference
        assert out[sid].lineage[-1].action == "kept"
    assert out[B1.id].lineage[-1].reason.startswith("high_perplexity: correct but unsure, perplexity 2.70")
    assert out[F_MODEL.id].lineage[-1].reason.startswith("model_wrong:")
    # expansions kept with their parent; fresh = 0.5 × the kept set
    edde = [s for s in out.values() if s.source == "edde"]
    assert len(edde) == 2 and all(s.lineage[-1].parent_id == F_MODEL.id for s in edde)
    base = counts["total"] - counts["fresh"]
    assert counts["fresh"] == int(0.5 * base + 0.5)
    assert counts == counts | {
        "mastered_dropped": 1, "borderline": 2, "high_perplexity": 1, "relabelled": 2, "model_wrong": 1,
        "both_acceptable": 1, "unclear_dropped": 2, "failed_unjudged": 1, "expanded": 3, "duplicates": 1, "dropped": 4,
    }
    assert len({s.id for s in out.values()}) == len(out)
    dropped = load(f"{root}/dropped")
    assert set(dropped) == {M.id, F_BOTH.id, F_UNCLEAR.id, F_BADFIX.id}
    assert dropped[F_BOTH.id].lineage[-1].reason.startswith("both_acceptable: the prediction is also right, treated as mastered")
    assert "corrected label rejected" in dropped[F_BADFIX.id].lineage[-1].reason
    assert dropped[M.id].lineage[-1].action == "dropped" and dropped[M.id].lineage[-1].reason.startswith("mastered:")


def test_keep_policies_and_determinism(tmp_path):
    root, train, probes, verdicts, exp, fresh = build(tmp_path)
    spec = ComposeSpec(dropMastered=False, freshSeedFraction=0.0)
    a, ca = compose_next_round(probes, verdicts, exp, fresh, f"{root}/a", spec, round=2, unclear_policy="keep")
    b, cb = compose_next_round(probes, verdicts, exp, fresh, f"{root}/b", spec, round=2, unclear_policy="keep")
    assert a.content_hash == b.content_hash and ca == cb
    out = load(a.uri)
    assert M.id in out and out[M.id].lineage[-1].reason.startswith("mastered:")
    assert F_UNCLEAR.id in out and out[F_UNCLEAR.id].reference == F_UNCLEAR.reference
    assert out[F_BADFIX.id].reference == F_BADFIX.reference  # rejected correction → unclear → kept as is
    assert ca["mastered_kept"] == 1 and ca["unclear_kept"] == 2 and ca["fresh"] == 0
    ids = [s.id for s in open_dataset(a.uri).iter(Sample)]
    assert ids[:3] == [M.id, B1.id, B2.id]  # probe order first
    # a committed output is returned as is
    again, cagain = compose_next_round(probes, verdicts, exp, fresh, f"{root}/a", spec, round=2, unclear_policy="keep")
    assert again == a and cagain == ca
    with pytest.raises(ValueError):
        compose_next_round(probes, verdicts, exp, None, f"{root}/c", spec, round=2, unclear_policy="maybe")  # type: ignore[arg-type]


def test_no_verdicts_keeps_failed_samples(tmp_path):
    root, train, probes, verdicts, exp, fresh = build(tmp_path)
    ref, counts = compose_next_round(probes, None, None, None, f"{root}/nojudge", ComposeSpec(), round=1)
    assert counts["failed_unjudged"] == 7 and counts["relabelled"] == 0 and counts["total"] == 9


def test_diff_and_cli(tmp_path, capsys):
    root, train, probes, verdicts, exp, fresh = build(tmp_path)
    ref, counts = compose_next_round(probes, verdicts, exp, fresh, f"{root}/next", ComposeSpec(freshSeedFraction=0.5), round=1,
                                     unclear_policy="drop")
    d = diff_datasets(train, ref, examples=3)
    assert d.removed == 4  # mastered, both_acceptable (as mastered), unclear, rejected correction
    assert d.relabelled == 2  # Lyon → Lima, and the text fix
    assert d.added == counts["expanded"] - 1 + counts["fresh"]
    assert d.unchanged == 10 - 4 - 2
    assert d.by_source["edde"]["added"] == 2 and d.by_source["fresh"]["added"] == counts["fresh"]
    assert d.by_source["synthesize"] == {"added": 0, "removed": 4, "relabelled": 2, "unchanged": 4}
    ex = {e.id: e for e in d.relabel_examples}
    assert ex[F_LABEL.id].old == [w("Lyon")] and ex[F_LABEL.id].new == [w("Lima")]
    assert "r1 compose/relabelled (label_wrong)" in d.lineage_b
    # why samples left comes from the composition's dropped dataset (<out>-dropped by default)
    assert d.lineage_removed == {
        "r1 compose/dropped (unclear)": 2, "r1 compose/dropped (both_acceptable)": 1, "r1 compose/dropped (mastered)": 1,
    }
    assert reference_key([w("a"), w("b")]) == reference_key([w("b"), w("a")])

    from looptool.cli import main

    assert main(["data", "diff", train.uri, ref.uri, "--show", "2"]) == 0
    text = capsys.readouterr().out
    assert "relabelled        2" in text and "removed           4" in text
    assert 'get_weather(city="Lyon")' in text and 'get_weather(city="Lima")' in text
    assert "by source" in text and "edde" in text and "compose/kept (borderline)" in text
    assert text == format_diff(diff_datasets(train, ref, examples=2)) + "\n"
    assert main(["data", "diff", train.uri, ref.uri, "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["relabelled"] == 2
