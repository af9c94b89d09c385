"""LoopRound manifests, the shared state machine, and the round report."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from looptool.shared.loop.manifest import ManifestError, crd_schema, load_manifests, parse_round
from looptool.shared.loop.state import (
    ORDER,
    Phase,
    RoundStatus,
    begin,
    fail,
    finish_stage,
    next_phase,
    start_stage,
)

GOOD = {
    "apiVersion": "looptool.io/v1alpha1",
    "kind": "LoopRound",
    "metadata": {"name": "r1"},
    "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python", "limit": 3}}},
}


def _with(path: str, value):
    import copy

    obj = copy.deepcopy(GOOD)
    node = obj
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return obj


def test_demo_manifest_loads_and_chains():
    rounds = load_manifests("examples/demo.yaml")
    assert [r.name for r in rounds] == ["demo-r1", "demo-r2"]
    assert rounds[1].spec.previousRound == "demo-r1"
    assert rounds[0].spec.synthesis.labelNoise > 0


@pytest.mark.parametrize(
    "path,value,needle",
    [
        ("spec.synthesis.numDialogs", 5, "spec.synthesis.numDialogs': unknown field"),
        ("spec.training.groupSize", "four", "spec.training.groupSize"),
        ("spec.training.groupSize", 1, "spec.training.groupSize"),
        ("metadata.name", "Bad_Name", "metadata.name"),
        ("kind", "Job", "kind"),
        ("spec.judge.backend", "oracle", "spec.judge.backend"),
    ],
)
def test_invalid_manifest_names_the_field(path, value, needle):
    with pytest.raises(ManifestError) as exc:
        parse_round(_with(path, value), "m.yaml")
    assert needle in str(exc.value)


def test_model_source_required():
    obj = _with("spec.baseModel", None)
    with pytest.raises(ManifestError, match="baseModel"):
        parse_round(obj)


def test_previous_round_must_come_earlier(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(
        textwrap.dedent(
            """
            apiVersion: looptool.io/v1alpha1
            kind: LoopRound
            metadata: {name: r2}
            spec: {previousRound: r1, toolset: {file: tools.json}}
            ---
            apiVersion: looptool.io/v1alpha1
            kind: LoopRound
            metadata: {name: r1}
            spec: {baseModel: {builtin: tiny}, toolset: {file: tools.json}}
            """
        )
    )
    with pytest.raises(ManifestError, match="previousRound"):
        load_manifests(f)


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("apiVersion: x\nspec: [unclosed\n")
    with pytest.raises(ManifestError, match="line"):
        load_manifests(f)


def test_crd_schema_is_structural():
    schema = crd_schema()

    def walk(node, path="spec"):
        assert "$ref" not in node and "anyOf" not in node, path
        if node.get("type") == "object":
            for k, v in node.get("properties", {}).items():
                walk(v, f"{path}.{k}")
        if node.get("type") == "array":
            walk(node["items"], path + "[]")

    walk(schema)
    assert "toolset" in schema["required"]


def test_state_machine_walks_every_phase_in_order():
    st = RoundStatus()
    assert begin(st) == Phase.SYNTHESIZING
    seen = [Phase.PENDING, st.phase]
    from looptool.shared.loop.state import STAGE_OF

    while st.phase != Phase.SUCCEEDED:
        stage = STAGE_OF[st.phase]
        start_stage(st, stage)
        seen.append(finish_stage(st, stage))
    assert seen == ORDER
    assert st.conditions[-1].type == "Ready" and st.conditions[-1].status == "True"
    assert next_phase(Phase.SUCCEEDED) == Phase.SUCCEEDED


def test_fail_records_reason_and_keeps_outputs():
    from looptool.shared.records import DatasetRef

    st = RoundStatus()
    begin(st)
    start_stage(st, "synthesize").outputs["dialogs"] = DatasetRef(uri="file:///x/d", record_count=3)
    finish_stage(st, "synthesize")
    start_stage(st, "train")
    fail(st, "TrainingFailed", "out of memory")
    assert st.phase == Phase.FAILED and st.reason == "TrainingFailed"
    assert st.stages["train"].state == "Failed"
    assert st.stages["synthesize"].outputs["dialogs"].record_count == 3
    ready = [c for c in st.conditions if c.type == "Ready"][0]
    assert ready.status == "False" and ready.reason == "TrainingFailed"


def test_report_from_statuses(tmp_path):
    from looptool.shared.loop.report import write_report

    rounds = load_manifests("examples/demo.yaml")
    statuses = []
    for i, _ in enumerate(rounds):
        st = RoundStatus(phase=Phase.SUCCEEDED, checkpointUri=f"file:///ck/{i}")
        st.stage("probe").counts.update({"mastered": 10 + i, "borderline": 2, "failed": 5 - i})
        st.stage("judge").counts.update({"label_wrong": 3, "model_wrong": 2})
        st.stage("train").metrics.update({f"reward_step_{k}": 0.1 * k + i for k in range(4)})
        st.stage("evaluate").metrics.update({"noise_precision": 0.75, "noise_recall": 0.6})
        st.accuracy = {"heldout": 0.4 + 0.2 * i, "bfcl_simple_python": 0.1 * i}
        statuses.append(st)
    path, reports = write_report(list(zip(rounds, statuses)), tmp_path)
    md = path.read_text()
    assert "| heldout | 40.0 | 60.0 |" in md
    assert "| probe: mastered | 10 | 11 |" in md
    assert reports[0].reward_curve == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert reports[0].noise_recovery == {"precision": 0.75, "recall": 0.6}
    for png in ("accuracy.png", "reward.png", "stages.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "<table>" in (tmp_path / "report.html").read_text()


def test_synthesis_spec_reaches_the_synthesizer_config():
    from looptool.services.synthesizer.config import parse_config
    from looptool.shared.loop.manifest import SynthesisSpec
    from looptool.shared.loop.stages import synthesis_config_json

    spec = SynthesisSpec(numDialogues=9, maxNeeds=1, toolsPerSample=2, mix={"single": 1.0}, labelNoise=0.1)
    cfg = parse_config(synthesis_config_json(spec))
    assert (cfg.max_needs, cfg.tools_per_dialog, cfg.mix) == (1, 2, {"single": 1.0})
    assert parse_config(synthesis_config_json(SynthesisSpec())).max_needs == 2  # the default keeps follow-ups
    with pytest.raises(ValidationError, match="maxNeeds"):
        SynthesisSpec(maxNeeds=0)
