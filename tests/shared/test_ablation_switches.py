"""The paper's ablations as manifest switches: without JGLV (judge.enabled: false), without
high-perplexity samples (compose.keepHighPerplexity: false), without EDDE (expand.factor: 0),
SFT only (training.grpoSteps: 0), GRPO only (training.sftWarmStart: false). Each is valid; a switch
that contradicts another field is refused with one line naming both. The Verifying and Expanding
stages run with the judge off: no verdicts, no expansion call, composition keeps labels as they are."""

from __future__ import annotations

import copy

import pytest

from looptool.shared.config import LoopToolConfig, StorageSettings
from looptool.shared.loop.manifest import ManifestError, crd_schema, parse_round
from looptool.shared.loop.stages import StageContext, stage_expand, stage_judge
from looptool.shared.loop.state import RoundStatus
from looptool.shared.records import Message, ProbeOutcome, ProbeResult, Sample, Tool, ToolCall
from looptool.shared.storage import open_dataset, writer_for_uri

BASE = {
    "apiVersion": "looptool.io/v1alpha1",
    "kind": "LoopRound",
    "metadata": {"name": "ablate"},
    "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"file": "tools.json"}},
}


def manifest(**sections) -> dict:
    m = copy.deepcopy(BASE)
    for name, fields in sections.items():
        m["spec"].setdefault(name, {}).update(fields)
    return m


SWITCHES = {
    "without JGLV": {"judge": {"enabled": False}, "expand": {"factor": 0}},
    "without high-perplexity samples": {"compose": {"keepHighPerplexity": False}},
    "without EDDE": {"expand": {"factor": 0}},
    "SFT only": {"training": {"grpoSteps": 0}},
    "GRPO only": {"training": {"sftWarmStart": False}},
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_is_valid_and_in_the_crd_schema(name):
    import jsonschema

    from looptool.operators.crd import to_json_schema

    m = manifest(**SWITCHES[name])
    spec = parse_round(m).spec
    # what the API server would accept (OpenAPI 3.0 → draft 4, as the CRD tests do)
    assert list(jsonschema.Draft4Validator(to_json_schema(crd_schema())).iter_errors(m["spec"])) == []
    if name == "without JGLV":
        assert not spec.judge.enabled and spec.expand.factor == 0
    elif name == "without high-perplexity samples":
        assert not spec.compose.keepHighPerplexity
    elif name == "SFT only":
        assert spec.training.grpoSteps == 0 and spec.training.sftWarmStart
    elif name == "GRPO only":
        assert not spec.training.sftWarmStart


def test_defaults_are_the_full_method():
    spec = parse_round(manifest()).spec
    assert spec.judge.enabled and spec.compose.keepHighPerplexity and spec.expand.factor > 0
    assert spec.training.sftWarmStart and spec.training.grpoSteps is None
    assert (spec.compose.bothWrong, spec.compose.bothAcceptable, spec.compose.freshSeedFraction) == ("drop", "mastered", 0.0)


@pytest.mark.parametrize(
    "sections, fields",
    [
        ({"judge": {"enabled": False, "candidates": 8}, "expand": {"factor": 0}}, ("spec.judge.candidates", "spec.judge.enabled")),
        ({"judge": {"enabled": False}}, ("spec.expand.factor", "spec.judge.enabled")),
        ({"training": {"grpoSteps": 0, "sftWarmStart": False}}, ("spec.training.grpoSteps", "spec.training.sftWarmStart")),
        ({"judge": {"backend": "llm", "model": "s3://m/a", "models": ["s3://m/b", "s3://m/c"]}}, ("spec.judge.model", "spec.judge.models")),
        ({"judge": {"backend": "grounding", "models": ["s3://m/b", "s3://m/c"]}}, ("spec.judge.models", "spec.judge.backend")),
        ({"judge": {"backend": "grounding", "model": "s3://m/b"}}, ("spec.judge.model", "spec.judge.backend")),
        ({"judge": {"backend": "llm", "models": ["s3://m/b", "s3://m/c"], "votes": 3}}, ("spec.judge.votes", "spec.judge.models")),
        ({"judge": {"backend": "llm"}}, ("spec.judge.model", "allowSelfJudge")),
    ],
)
def test_contradictions_are_one_line_naming_both_fields(sections, fields):
    with pytest.raises(ManifestError) as e:
        parse_round(manifest(**sections))
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fields:
        assert f in msg, (f, msg)


# ------------------------------------------------------------------------------ stages with the judge off

TOOL = Tool(name="get_weather", description="weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})


def _sample(city: str) -> Sample:
    return Sample(context=[Message(role="user", content=f"weather in {city}?")], tools=[TOOL],
                  reference=[ToolCall(name="get_weather", arguments={"city": city})]).with_id()


def test_judge_off_skips_verification_and_expansion_and_composes_unjudged(tmp_path):
    store = tmp_path / "store"
    m = manifest(judge={"enabled": False}, expand={"factor": 0}, compose={"keepHighPerplexity": False})
    ctx = StageContext(round=parse_round(m), config=LoopToolConfig(storage=StorageSettings(root=str(store))),
                       addresses={}, base_uri=store.as_uri(), generator=lambda *a, **k: None)  # no service is called
    failed, mastered, unsure = _sample("Paris"), _sample("Oslo"), _sample("Rome")
    probes = [
        ProbeResult(sample=failed, prediction="", outcome=ProbeOutcome.FAILED, reason="wrong city"),
        ProbeResult(sample=mastered, prediction="", outcome=ProbeOutcome.MASTERED, correct=True),
        ProbeResult(sample=unsure, prediction="", outcome=ProbeOutcome.BORDERLINE, correct=True, perplexity=3.0),
    ]

    def ds(name, records, kind="samples"):
        w = writer_for_uri(f"{store.as_uri()}/{name}", kind=kind)
        w.write_many(records)
        return w.commit()

    status = RoundStatus()
    status.stage("synthesize").outputs.update(train=ds("train", [p.sample for p in probes]), fresh=ds("fresh", []))
    status.stage("probe").outputs["probe_results"] = ds("probe", probes, "probe_results")
    status.checkpointUri = "builtin:tiny"
    stage_judge(ctx, status, lambda *a, **k: None)
    assert "verdicts" not in status.stage("judge").outputs and "judge.enabled is false" in status.stage("judge").message
    stage_expand(ctx, status, lambda *a, **k: None)
    st = status.stage("expand")
    assert "expansions" not in st.outputs and "EDDE skipped" in st.message
    nxt = {s.id: s for s in open_dataset(st.outputs["next"]).iter(Sample)}
    assert set(nxt) == {failed.id}  # mastered and (keepHighPerplexity: false) unsure samples leave
    assert nxt[failed.id].lineage[-1].reason.startswith("failed_unjudged: no verdict, label unchanged")
    assert st.counts["next_failed_unjudged"] == 1 and st.counts["next_high_perplexity_dropped"] == 1
    assert status.datasetUri == st.outputs["next"].uri
    # idempotent: a second pass finds the committed composition
    stage_expand(ctx, status, lambda *a, **k: None)
    assert status.datasetUri == st.outputs["next"].uri
