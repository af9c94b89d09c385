"""``looptool ablate``: the variants built from a manifest (``shared/loop/ablation.py``), bad input in
one line before anything runs, the table, and (slow) a two-round ablation end to end through the real
services: variants share the stages they have in common (counted: every training run the store holds
has distinct inputs, round 1 ran once), a run killed mid-way resumes, and a rerun reuses everything."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from looptool.cli import main
from looptool.shared.loop.ablation import (
    VARIANTS,
    AblationError,
    baseline_round,
    render_csv,
    render_markdown,
    row_of,
    select_variants,
    variant_rounds,
)
from looptool.shared.loop.manifest import load_manifests
from looptool.shared.loop.state import Phase, RoundStatus, StageStatus

R1 = {
    "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "a-r1"},
    "spec": {
        "round": 1,
        "baseModel": {"builtin": "tiny", "tinyHiddenSize": 32, "tinyLayers": 1, "tinyVocabSize": 400},
        "toolset": {"bfcl": {"category": "simple_python", "limit": 4}},
        "synthesis": {"numDialogues": 10, "concurrency": 2, "seed": 3, "heldoutFraction": 0.3, "labelNoise": 0.2, "maxNeeds": 1},
        "training": {"sftEpochs": 1, "grpoSteps": 1, "groupSize": 2, "promptsPerStep": 2, "maxResponseTokens": 16},
        "probe": {"maxTokens": 16},
        "judge": {"backend": "grounding"},
        "expand": {"factor": 1},
        "eval": {"heldout": True, "bfclCategories": ["simple_python"], "bfclLimit": 2, "maxTokens": 16},
    },
}


def chain(**edits: Any) -> list[dict[str, Any]]:
    """Two chained rounds; ``edits``: spec sections merged into both."""
    r1 = json.loads(json.dumps(R1))
    r2 = json.loads(json.dumps(R1))
    r2["metadata"]["name"] = "a-r2"
    del r2["spec"]["baseModel"]
    r2["spec"].update(round=2, previousRound="a-r1")
    r2["spec"]["synthesis"] = {"numDialogues": 4, "concurrency": 2, "seed": 3, "maxNeeds": 1}
    for r in (r1, r2):
        for section, fields in edits.items():
            r["spec"].setdefault(section, {}).update(fields)
    return [r1, r2]


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


# ----------------------------------------------------------------------------- variants


def test_variants_are_built_from_the_manifest(tmp_path):
    rounds = load_manifests(write(tmp_path / "m.yaml", chain()))
    chains = variant_rounds(rounds, "m.yaml", list(VARIANTS))
    assert list(chains) == ["full", "no-jglv", "no-edde", "no-hpr", "baseline"]
    for key, rs in chains.items():
        suffix = next(v.suffix for v in VARIANTS if v.key == key)
        assert [r.name for r in rs] == [f"a-r1-{suffix}", f"a-r2-{suffix}"]
        assert rs[0].spec.previousRound == "" and rs[1].spec.previousRound == f"a-r1-{suffix}"
    full = chains["full"]
    drop = {"previousRound"}
    assert [r.spec.model_dump(exclude=drop) for r in full] == [r.spec.model_dump(exclude=drop) for r in rounds]  # as it is
    for r in chains["no-jglv"]:
        assert not r.spec.judge.enabled and r.spec.expand.factor == 0 and r.spec.judge.candidates == 0
    for r in chains["no-edde"]:
        assert r.spec.judge.enabled and r.spec.expand.factor == 0
    for r in chains["no-hpr"]:
        assert not r.spec.compose.keepHighPerplexity and r.spec.expand.factor == 1
    base = chains["baseline"]
    assert base[0].spec == full[0].spec  # round 1 is the full loop's (one shared run)
    assert not base[1].spec.judge.enabled and base[1].spec.expand.factor == 0


def test_only_the_chosen_variants_and_the_baseline_needs_the_full_loop():
    assert [v.key for v in select_variants(["no-edde", "full"])] == ["full", "no-edde"]
    with pytest.raises(AblationError, match="baseline.*add full"):
        select_variants(["baseline"])
    with pytest.raises(AblationError, match="unknown 'no-judge'"):
        select_variants(["no-judge"])


def _status(train: int, fresh: int, grpo: int) -> RoundStatus:
    st = RoundStatus(phase=Phase.SUCCEEDED)
    st.stages["synthesize"] = StageStatus(counts={"train_samples": train, "fresh_samples": fresh})
    st.stages["train"] = StageStatus(counts={"grpo_steps": grpo, "sft_steps": 2})
    return st


def test_baseline_round_is_count_matched_to_the_full_loop(tmp_path):
    rounds = load_manifests(write(tmp_path / "m.yaml", chain()))
    placeholder = variant_rounds(rounds, "m.yaml", list(VARIANTS))["baseline"][1]
    # the full loop's round 2 trained on 40 samples, 8 of them fresh from its 4 dialogues (2 per dialogue)
    sized = baseline_round(placeholder, rounds[1], _status(train=40, fresh=8, grpo=7))
    assert sized.spec.synthesis.numDialogues == 20 and sized.spec.training.grpoSteps == 7
    assert sized.name == "a-r2-base" and sized.spec.previousRound == "a-r1-base"
    with pytest.raises(AblationError, match="no samples"):
        baseline_round(placeholder, rounds[1], _status(train=40, fresh=0, grpo=7))


# ----------------------------------------------------------------------------- bad input: one line, nothing runs


@pytest.mark.parametrize(
    "edits, args, fields",
    [
        ({"compose": {"dropMastered": False}}, [], ["spec.compose.keepHighPerplexity", "spec.compose.dropMastered"]),
        ({"expand": {"factor": 0}}, [], ["no-edde", "spec.expand.factor"]),
        ({"judge": {"enabled": False}, "expand": {"factor": 0}}, ["--variants", "full,no-jglv"], ["no-jglv", "spec.judge.enabled"]),
        ({"compose": {"keepHighPerplexity": False}}, ["--variants", "full,no-hpr"], ["no-hpr", "spec.compose.keepHighPerplexity"]),
        ({"stopWhen": {"minHeldoutGain": 0.01}}, [], ["spec.stopWhen.minHeldoutGain"]),
        ({}, ["--variants", "baseline"], ["--variants", "add full"]),
    ],
)
def test_a_variant_that_contradicts_the_manifest_is_one_line_naming_the_fields(tmp_path, capsys, edits, args, fields):
    path = write(tmp_path / "m.yaml", chain(**edits))
    store = tmp_path / "store"
    code = main(["ablate", str(path), "--storage-root", str(store), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for f in fields:
        assert f in err, err
    assert not (store / "runs").exists()  # nothing started or written


def test_no_jglv_turns_off_what_judging_implies(tmp_path):
    # judge candidates and EDDE need verdicts: the variant turns them off rather than contradict itself
    rounds = load_manifests(write(tmp_path / "m.yaml", chain(judge={"candidates": 2})))
    for r in variant_rounds(rounds, "m.yaml", select_variants(["full", "no-jglv"]))["no-jglv"]:
        assert (r.spec.judge.enabled, r.spec.judge.candidates, r.spec.expand.factor) == (False, 0, 0)


def test_a_single_round_or_a_chain_out_of_order_is_refused(tmp_path, capsys):
    one = write(tmp_path / "one.yaml", chain()[:1])
    assert main(["ablate", str(one), "--storage-root", str(tmp_path / "s")]) == 2
    assert "at least 2 rounds" in capsys.readouterr().err
    r1, r2 = chain()
    r3 = json.loads(json.dumps(r2))
    r3["metadata"]["name"], r3["spec"]["round"] = "a-r3", 3  # continues from a-r1, not a-r2
    bad = write(tmp_path / "bad.yaml", [r1, r2, r3])
    assert main(["ablate", str(bad), "--storage-root", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "spec.previousRound" in err and "'a-r2'" in err


# ----------------------------------------------------------------------------- the table


def test_table_has_every_variant_and_round_with_grpo_share(tmp_path):
    rounds = load_manifests(write(tmp_path / "m.yaml", chain()))
    chains = variant_rounds(rounds, "m.yaml", list(VARIANTS))
    rows = []
    for i, v in enumerate(VARIANTS):
        for r in chains[v.key]:
            st = _status(train=10 + i, fresh=5, grpo=3)
            st.accuracy = {"heldout": 0.5 + 0.01 * i, "heldout_after_sft": 0.45, "heldout_single": 0.9,
                           "bfcl_simple_python": 0.25, "bfcl_multiple": 0.75}
            st.stages["evaluate"] = StageStatus(metrics={"loopnoise_recall": 0.5})
            rows.append(row_of(v, r, st))
    md = render_markdown(rows)
    for v in VARIANTS:
        assert v.label in md
    full2 = next(r for r in rows if r.variant == "full" and r.round == 2)
    assert full2.grpo_share == pytest.approx(0.05) and full2.bfcl == pytest.approx(0.5)  # held-out breakdowns aside
    assert "| +5.0 |" in md and "same compute, no loop (fresh data): 54.0 (+4.0 pts)" in md
    table = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert len(table) == 10 and {"bfcl_simple_python", "bfcl_multiple", "heldout_after_sft"} <= set(table[0])


# ----------------------------------------------------------------------------- end to end (slow)


def _looptool(root: Path, *args: str, wait: bool = True) -> Any:
    env = dict(os.environ, LOOPTOOL_STORAGE__ROOT=str(root), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "looptool.cli", *args, "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=900)
    return proc.returncode, out


def _status_of(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / "runs" / name / "status.json").read_text())["status"]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "runs").rglob("*")
            if p.is_file() and p.name not in ("status.json", "lease.json")}


@pytest.mark.slow
def test_ablate_end_to_end_shares_stages_resumes_after_a_kill_and_reruns_as_a_noop(tmp_path):
    manifest = write(tmp_path / "m.yaml", chain())
    root = tmp_path / "store"
    # 1. killed once the third variant (no-edde) reached its round 2
    proc = _looptool(root, "ablate", str(manifest), wait=False)
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        if (root / "runs" / "a-r2-noedde" / "status.json").exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout.read() if proc.stdout else "")[-3000:]
    time.sleep(1.0)  # the orphaned services notice their parent died
    # 2. resumed: the finished variants' rounds are not driven again
    code, out = _looptool(root, "ablate", str(manifest))
    assert code == 0, out[-4000:]
    for name in ("a-r1-full", "a-r2-full", "a-r1-nojglv", "a-r2-nojglv"):
        assert f"✓ {name} " not in out, out
    for v in VARIANTS:
        assert v.label in out  # the table, printed
    report = root / "report" / "ablation"
    rows = list(csv.DictReader((report / "ablation.csv").open()))
    assert [(r["variant"], r["round"]) for r in rows] == [(v.key, k) for v in VARIANTS for k in ("1", "2")]
    assert all(r["phase"] == "Succeeded" and r["heldout"] and r["heldout_after_sft"] and r["bfcl_mean"] for r in rows)
    assert (report / "ablation.png").stat().st_size > 0 and (report / "ablation.md").is_file()

    statuses = {f"{k}-{v.suffix}": _status_of(root, f"{k}-{v.suffix}") for v in VARIANTS for k in ("a-r1", "a-r2")}
    for name, st in statuses.items():
        assert st["phase"] == "Succeeded"
        ev = st["stages"]["evaluate"]["metrics"]
        assert "accuracy_heldout_after_sft" in ev and "accuracy_heldout" in ev  # GRPO's share in every report
    # shared stages: round 1's synthesis, training and probe are one run for all five variants
    r1 = [statuses[f"a-r1-{v.suffix}"] for v in VARIANTS]
    for key in (("synthesize", "dialogs"), ("synthesize", "train"), ("probe", "probe_results")):
        assert len({st["stages"][key[0]]["outputs"][key[1]]["uri"] for st in r1}) == 1, key
    assert len({st["checkpointUri"] for st in r1}) == 1
    assert all(st["stages"]["train"]["metrics"]["cached"] == 1.0 for st in r1[1:])
    # counted: the store holds one training run per distinct (dataset, base model) the variants trained on
    trained = sorted(p.parent.name for p in root.glob("runs/*/train-*/result.json"))
    inputs = {(st["stages"]["synthesize"]["outputs"]["train_parquet"]["content_hash"], k) for k, st in
              ((n.split("-")[1], st) for n, st in statuses.items())}
    assert len(trained) == len(inputs), (trained, inputs)
    assert len(trained) < len(statuses)  # 10 rounds, fewer trainings
    assert list(root.glob("runs/*/train-*/model_sft")), "the trainer keeps the post-SFT model"
    # the baseline trained on fresh samples only (no composed data), count-matched to the full loop's round 2
    b2, f2 = statuses["a-r2-base"], statuses["a-r2-full"]
    assert b2["stages"]["synthesize"]["counts"]["train_samples"] == b2["stages"]["synthesize"]["counts"]["fresh_samples"]
    assert abs(b2["stages"]["synthesize"]["counts"]["train_samples"] - f2["stages"]["synthesize"]["counts"]["train_samples"]) \
        <= 0.25 * f2["stages"]["synthesize"]["counts"]["train_samples"]
    assert b2["stages"]["train"]["counts"]["grpo_steps"] == f2["stages"]["train"]["counts"]["grpo_steps"]

    # 3. a rerun reuses everything: no stage runs, no new file
    before = _files(root)
    code, out = _looptool(root, "ablate", str(manifest))
    assert code == 0, out[-3000:]
    assert "✓ " not in out and _files(root) == before


def test_round_report_shows_held_out_after_sft_and_after_grpo():
    from looptool.shared.loop.manifest import parse_round
    from looptool.shared.loop.report import render_markdown as round_markdown
    from looptool.shared.loop.report import round_report

    st = RoundStatus(phase=Phase.SUCCEEDED, accuracy={"heldout": 0.62, "heldout_after_sft": 0.55})
    md = round_markdown([round_report(parse_round(R1), st)], [])
    assert "| heldout | 62.0 |" in md and "| heldout_after_sft | 55.0 |" in md
    assert "| GRPO's share of held-out (points) | +7.0 |" in md
