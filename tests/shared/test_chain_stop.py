"""Stopping a round chain early (``spec.stopWhen.minHeldoutGain``): the shared decision, the local
runner's chain (``looptool.runner.drive_chain``: the reason in the statuses, a rerun stops at the same
round), the operator's LoopPlan (rounds created one by one, the plan Succeeded with reason
ChainStopped, later rounds never created) and hand-chained LoopRounds (the next round stays Pending
with reason ChainStopped) against the fake Kubernetes API."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import pytest

from looptool.shared.loop.chain import CHAIN_STOPPED, STOP_CONDITION, stop_decision
from looptool.shared.loop.lease import StatusStore
from looptool.shared.loop.manifest import LoopRound, ManifestError, StopSpec, parse_round
from looptool.shared.loop.state import Phase, RoundStatus


def done(heldout: float | None) -> RoundStatus:
    return RoundStatus(phase=Phase.SUCCEEDED, accuracy={} if heldout is None else {"heldout": heldout})


# ----------------------------------------------------------------------------- the decision


def test_stops_only_when_the_gain_over_the_previous_round_is_below_the_threshold():
    stop = StopSpec(minHeldoutGain=0.02)
    low = stop_decision("c-r2", stop, done(0.515), done(0.50))
    assert low.stop and low.gain == pytest.approx(0.015)
    assert "spec.stopWhen.minHeldoutGain 0.02" in low.message and "0.5000 → 0.5150" in low.message and "c-r2" in low.message
    assert not stop_decision("c-r2", stop, done(0.53), done(0.50)).stop
    assert not stop_decision("c-r2", stop, done(0.52), done(0.50)).stop  # exactly the threshold: enough
    assert stop_decision("c-r2", stop, done(0.48), done(0.50)).stop  # a loss stops too


def test_no_stop_without_a_threshold_a_previous_round_a_score_or_success():
    stop = StopSpec(minHeldoutGain=0.5)
    assert not stop_decision("c-r2", StopSpec(), done(0.5), done(0.5)).stop  # unset: never
    assert not stop_decision("c-r1", stop, done(0.5), None).stop  # round 1: nothing to compare with
    assert not stop_decision("c-r2", stop, done(None), done(0.5)).stop
    failed = RoundStatus(phase=Phase.FAILED, accuracy={"heldout": 0.5})
    assert not stop_decision("c-r2", stop, failed, done(0.5)).stop


def manifest(name: str, round: int = 1, previous: str = "", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"round": round, "toolset": {"bfcl": {"category": "simple_python", "limit": 4}}, **spec}
    if previous:
        body["previousRound"] = previous
    else:
        body["baseModel"] = {"builtin": "tiny"}
    return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name}, "spec": body}


def test_manifest_refuses_a_stop_rule_without_heldout_accuracy_in_one_line():
    with pytest.raises(ManifestError) as exc:
        parse_round(manifest("x", stopWhen={"minHeldoutGain": 0.01}, eval={"heldout": False}))
    msg = str(exc.value)
    assert "\n" not in msg and "spec.stopWhen.minHeldoutGain" in msg and "spec.eval.heldout" in msg
    with pytest.raises(ManifestError, match="stopWhen.minHeldoutGain"):
        parse_round(manifest("x", stopWhen={"minHeldoutGain": -0.1}))
    with pytest.raises(ManifestError, match="unknown field"):
        parse_round(manifest("x", stopWhen={"minGain": 0.1}))


# ----------------------------------------------------------------------------- the local runner's chain


def test_local_chain_stops_with_the_reason_in_the_statuses_and_a_rerun_stops_there_too(tmp_path, monkeypatch):
    import looptool.runner as runner

    rounds = [parse_round(manifest("c-r1", stopWhen={"minHeldoutGain": 0.05}))] + [
        parse_round(manifest(f"c-r{i}", i, f"c-r{i - 1}", stopWhen={"minHeldoutGain": 0.05})) for i in (2, 3, 4)
    ]
    heldout = {"c-r1": 0.40, "c-r2": 0.50, "c-r3": 0.52, "c-r4": 0.70}  # round 3 gains 0.02 < 0.05
    driven: list[str] = []

    def fake_drive_round(r: LoopRound, ctx: Any, statuses: StatusStore, ui: Any) -> RoundStatus:
        saved, h = statuses.load(r.name)
        if saved is not None and saved.phase == Phase.SUCCEEDED and h == runner.spec_hash(r):
            return saved  # what drive_round does with a finished round
        driven.append(r.name)
        st = done(heldout[r.name])
        statuses.save(r.name, st, runner.spec_hash(r))
        return st

    monkeypatch.setattr(runner, "drive_round", fake_drive_round)
    statuses = StatusStore(tmp_path.as_uri())
    contexts: list[tuple[str, float | None]] = []

    def context(r: LoopRound, previous: RoundStatus | None) -> Any:
        contexts.append((r.name, previous.accuracy.get("heldout") if previous else None))
        return None

    chain = runner.drive_chain(rounds, context, statuses, lambda r: None)
    assert driven == ["c-r1", "c-r2", "c-r3"]
    assert contexts == [("c-r1", None), ("c-r2", 0.40), ("c-r3", 0.50)]  # each round sees the one it continues
    assert chain.stopped is not None and chain.stopped.round == "c-r3" and chain.not_run == ["c-r4"]
    assert chain.succeeded
    r3, _ = statuses.load("c-r3")
    assert r3.phase == Phase.SUCCEEDED
    cond = next(c for c in r3.conditions if c.type == STOP_CONDITION)
    assert cond.reason == CHAIN_STOPPED and "minHeldoutGain 0.05" in cond.message
    r4, _ = statuses.load("c-r4")
    assert r4.phase == Phase.PENDING and r4.reason == CHAIN_STOPPED and "stopped after c-r3" in r4.message
    # the saved file says so too (what `looptool run` leaves for a user to read)
    saved = json.loads((tmp_path / "runs" / "c-r4" / "status.json").read_text())["status"]
    assert saved["reason"] == CHAIN_STOPPED

    driven.clear()
    again = runner.drive_chain(rounds, context, StatusStore(tmp_path.as_uri()), lambda r: None)
    assert driven == [] and again.stopped is not None and again.stopped.round == "c-r3" and again.not_run == ["c-r4"]


def test_a_chain_without_stop_rules_runs_every_round(tmp_path, monkeypatch):
    import looptool.runner as runner

    rounds = [parse_round(manifest("d-r1"))] + [parse_round(manifest(f"d-r{i}", i, f"d-r{i - 1}")) for i in (2, 3)]

    def fake_drive_round(r, ctx, statuses, ui):
        st = done(0.5)  # no gain at all: still runs on, nothing asked it to stop
        statuses.save(r.name, st, runner.spec_hash(r))
        return st

    monkeypatch.setattr(runner, "drive_round", fake_drive_round)
    chain = runner.drive_chain(rounds, lambda r, p: None, StatusStore(tmp_path.as_uri()), lambda r: None)
    assert [r.name for r, _ in chain.results] == ["d-r1", "d-r2", "d-r3"] and chain.stopped is None


# ----------------------------------------------------------------------------- the operator's LoopPlan

TRAINER_IMAGE = "registry.example.com/looptool-trainer:1.2"
LR = ("looptool.io/v1alpha1", "looprounds")
PLANS = ("looptool.io/v1alpha1", "loopplans")


@contextlib.contextmanager
def operator(api: Any, executor: Any) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    from looptool.operators.main import build
    from looptool.operators.settings import OperatorSettings, TrainerJobSettings

    trainer = TrainerJobSettings()
    settings = OperatorSettings(
        namespaces=["default"], apiUrl=api.url, metricsPort=0, pollSeconds=1.0, progressSeconds=0.2, retryBackoffSeconds=0.05,
        trainer=trainer.model_copy(update={"allowedImages": [*trainer.allowedImages, TRAINER_IMAGE]}),
    )
    rt, registry, kopf_settings = build(settings, executor)
    try:
        with KopfRunner(["run", "--standalone", "-n", "default"], registry=registry, settings=kopf_settings, timeout=30) as runner:
            yield runner
    finally:
        rt.close()
    assert runner.exception is None, runner.output[-3000:]


def finish_job(api: Any, round_name: str) -> None:
    """The trainer Job and the job controller: result.json, then Complete."""
    from support.fake_kube import complete_training
    from support.waiting import wait_for

    job = wait_for(lambda: next((j for j in api.list("batch/v1", "jobs")
                                 if (j["metadata"].get("labels") or {}).get("looptool.io/round") == round_name), None),
                   what=f"{round_name} Job")
    name = job["metadata"]["name"]
    complete_training(json.loads(api.get("v1", "configmaps", name)["data"]["request.json"]))
    api.patch("batch/v1", "jobs", name, {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}, sub="status")


def test_loopplan_stops_early_and_never_creates_the_later_rounds(tmp_path):
    from support.fake_kube import FakeKubeApi, TestStageExecutor
    from support.waiting import wait_for

    template = {
        "baseModel": {"uri": "s3://looptool/models/qwen3-8b"},
        "toolset": {"bfcl": {"category": "simple_python", "limit": 20}},
        "training": {"backend": "verl", "gpus": 4},
        "resources": {"trainerImage": TRAINER_IMAGE},
        # the test executor's held-out accuracy rises ~0.1 a round: below 0.2, so the plan stops after round 2
        "stopWhen": {"minHeldoutGain": 0.2},
    }
    plan = {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopPlan", "metadata": {"name": "sp"},
            "spec": {"rounds": 3, "template": template}}
    with FakeKubeApi() as api, operator(api, TestStageExecutor(tmp_path / "store")):
        api.create(*PLANS, plan)
        wait_for(lambda: api.get(*LR, "sp-r1"), what="round 1")
        assert api.get(*LR, "sp-r2") is None  # created once round 1 succeeded with enough gain, not before
        finish_job(api, "sp-r1")
        r2 = wait_for(lambda: api.get(*LR, "sp-r2"), what="round 2")
        assert r2["spec"]["previousRound"] == "sp-r1" and r2["spec"]["stopWhen"] == {"minHeldoutGain": 0.2}
        finish_job(api, "sp-r2")
        st = wait_for(lambda: ((api.get(*PLANS, "sp") or {}).get("status") or {}).get("reason") == CHAIN_STOPPED
                      and api.get(*PLANS, "sp")["status"], what="plan stopped")
        assert api.get(*LR, "sp-r3") is None
    assert st["phase"] == "Succeeded" and st["completed"] == 2
    assert [r["phase"] for r in st["rounds"]] == ["Succeeded", "Succeeded", "NotRun"]
    assert st["rounds"][2]["reason"] == CHAIN_STOPPED
    assert "stopped after sp-r2" in st["message"] and "spec.stopWhen.minHeldoutGain 0.2" in st["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == CHAIN_STOPPED


def test_hand_chained_looprounds_stop_too_the_next_round_stays_pending_with_the_reason(tmp_path):
    from support.fake_kube import FakeKubeApi, TestStageExecutor
    from support.waiting import wait_for

    def lr(name: str, **spec: Any) -> dict[str, Any]:
        body = {"toolset": {"bfcl": {"category": "simple_python", "limit": 20}}, "training": {"backend": "verl", "gpus": 4},
                "resources": {"trainerImage": TRAINER_IMAGE}, **spec}
        return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name}, "spec": body}

    with FakeKubeApi() as api, operator(api, TestStageExecutor(tmp_path / "store")):
        api.create(*LR, lr("h1", baseModel={"uri": "s3://looptool/models/qwen3-8b"}))
        api.create(*LR, lr("h2", round=2, previousRound="h1", stopWhen={"minHeldoutGain": 0.2}))
        api.create(*LR, lr("h3", round=3, previousRound="h2"))
        finish_job(api, "h1")
        finish_job(api, "h2")
        st = wait_for(lambda: ((api.get(*LR, "h3") or {}).get("status") or {}).get("reason") == CHAIN_STOPPED
                      and api.get(*LR, "h3")["status"], what="h3 not started")
        assert not [j for j in api.list("batch/v1", "jobs") if (j["metadata"].get("labels") or {}).get("looptool.io/round") == "h3"]
    assert st["phase"] == "Pending" and "stopped after h2" in st["message"] and "minHeldoutGain 0.2" in st["message"]
    assert any(c["type"] == "Ready" and c["reason"] == CHAIN_STOPPED for c in st["conditions"]), st["conditions"]
