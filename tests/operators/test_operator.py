"""The LoopRound operator under ``kopf.testing.KopfRunner`` against a Kubernetes API served over HTTP
on loopback by kmock (``support.fake_kube.FakeKubeApi`` fills kmock's gaps: uids, resource
versions, generations, the status subresource, CRD schema validation, 422 on JSON-patch conflicts).

The data stages run through the TEST EXECUTOR (``support.fake_kube.TestStageExecutor``): real,
small, deterministic datasets in a local store — what is under test here is the Kubernetes behaviour.
The test plays kubelet + trainer: it writes the trainer's ``result.json`` and patches Job status.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from kopf.testing import KopfRunner

from looptool.operators.main import build
from looptool.operators.settings import OperatorSettings, TrainerJobSettings
from looptool.shared.loop.state import ORDER, Phase

from support.fake_kube import FakeApiError, FakeKubeApi, TestStageExecutor, complete_training
from support.waiting import wait_for

LR = ("looptool.io/v1alpha1", "looprounds")
JOBS = ("batch/v1", "jobs")
# A trainer image the rounds below pick: the operators they run under allow it (training.allowedImages).
TRAINER_IMAGE = "registry.example.com/looptool-trainer:1.2"


def loopround(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "baseModel": {"uri": "s3://looptool/models/qwen3-8b"},
        "toolset": {"bfcl": {"category": "simple_python", "limit": 20}},
        "training": {"backend": "verl", "gpus": 4},
        "resources": {
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
            "trainerImage": TRAINER_IMAGE,
        },
    }
    base.update(spec)
    return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name}, "spec": base}


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as server:
        yield server


@pytest.fixture
def executor(tmp_path) -> TestStageExecutor:
    return TestStageExecutor(tmp_path / "store")


@contextlib.contextmanager
def operator(api: FakeKubeApi, executor: TestStageExecutor, **overrides: Any) -> Iterator[KopfRunner]:
    trainer = overrides.pop("trainer", None) or TrainerJobSettings()
    overrides["trainer"] = trainer.model_copy(update={"allowedImages": [*trainer.allowedImages, TRAINER_IMAGE]})
    settings = OperatorSettings(
        namespaces=["default"], apiUrl=api.url, metricsPort=0, pollSeconds=1.0, progressSeconds=0.2,
        retryBackoffSeconds=0.05, **overrides,
    )
    rt, registry, kopf_settings = build(settings, executor)
    try:
        with KopfRunner(["run", "--standalone", "-n", "default"], registry=registry, settings=kopf_settings, timeout=30) as runner:
            yield runner
    finally:
        rt.close()
    # KopfRunner re-raises operator exceptions; a clean exit means the operator never crashed.
    assert runner.exception is None, runner.output[-3000:]
    assert runner.exit_code == 0


def status(api: FakeKubeApi, name: str) -> dict[str, Any]:
    obj = api.get(*LR, name) or {}
    return obj.get("status") or {}


def phase_is(api: FakeKubeApi, name: str, *phases: str) -> Callable[[], bool]:
    return lambda: status(api, name).get("phase") in phases


def jobs_of(api: FakeKubeApi, name: str) -> list[dict[str, Any]]:
    return [j for j in api.list(*JOBS) if (j["metadata"].get("labels") or {}).get("looptool.io/round") == name]


def events(api: FakeKubeApi, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in api.list("v1", "events") if e["involvedObject"]["name"] == name]


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == type_)


def finish_job(api: FakeKubeApi, job: dict[str, Any]) -> str:
    """What the trainer Job + kubelet + job controller do: result.json, then Job Complete."""
    name = job["metadata"]["name"]
    request = json.loads(api.get("v1", "configmaps", name)["data"]["request.json"])
    ckpt = complete_training(request)
    api.patch(*JOBS, name, {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}, sub="status")
    return ckpt


def job_creations(api: FakeKubeApi) -> int:
    return api.creates["jobs"]


# ------------------------------------------------------------------------------------------------ tests


def test_loopround_creates_gpu_training_job_owned_by_the_round(api, executor):
    with operator(api, executor):
        created = api.create(*LR, loopround("r1"))
        job = wait_for(lambda: jobs_of(api, "r1"), what="training Job")[0]
        st = wait_for(lambda: status(api, "r1") if status(api, "r1").get("phase") == "Training" else None, what="Training")

    uid = created["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "name": "r1", "uid": uid, "controller": True, "blockOwnerDeletion": True}
    ]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["image"] == "registry.example.com/looptool-trainer:1.2"
    assert container["command"][3:5] == ["--request", "/etc/looptool/request/request.json"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["restartPolicy"] == "Never"
    # The request the trainer runs with: mounted from a ConfigMap owned by the round as well.
    cm = api.get("v1", "configmaps", job["metadata"]["name"])
    assert cm["metadata"]["ownerReferences"][0]["uid"] == uid
    request = json.loads(cm["data"]["request.json"])
    assert request["base_checkpoint_uri"] == "s3://looptool/models/qwen3-8b"
    assert request["dataset"]["uri"] == st["stages"]["synthesize"]["outputs"]["train_parquet"]["uri"]
    # Status: the finished stage, the running one, conventions.
    assert st["stages"]["synthesize"]["state"] == "Done"
    assert st["stages"]["train"]["state"] == "Running"
    assert st["observedGeneration"] == 1
    assert condition(st, "Ready")["status"] == "False" and condition(st, "SpecValid")["status"] == "True"
    assert ("Normal", "JobCreated", f"training Job {job['metadata']['name']} created (4 x nvidia.com/gpu)") in events(api, "r1")


def test_status_moves_through_all_phases_as_the_job_succeeds(api, executor):
    from prometheus_client import REGISTRY

    with operator(api, executor):
        api.create(*LR, loopround("r2"))
        job = wait_for(lambda: jobs_of(api, "r2"), what="training Job")[0]
        ckpt = finish_job(api, job)
        wait_for(phase_is(api, "r2", "Succeeded", "Failed"), what="terminal phase")
        wait_for(lambda: any(r in ("RoundSucceeded", "RoundFailed") for _, r, _ in events(api, "r2")), what="final Event")

    st = status(api, "r2")
    assert st["phase"] == "Succeeded", st
    # Every write of .status is in kmock's history: the phases appear in state-machine order.
    history = api.kmock.objects[_res(api, "looprounds"), "default", "r2"].history
    seen: list[str] = []
    for version in list(history):
        ph = ((version or {}).get("status") or {}).get("phase") if version is not None else None
        if ph and (not seen or seen[-1] != ph):
            seen.append(ph)
    assert seen == [p.value for p in ORDER[1:]], seen
    assert st["checkpointUri"] == ckpt
    assert st["accuracy"]["heldout"] > 0.5
    assert st["datasetUri"].startswith("file://")
    assert all(st["stages"][s]["state"] == "Done" for s in ("synthesize", "train", "probe", "judge", "expand", "evaluate"))
    assert st["stages"]["probe"]["counts"] == {"mastered": 3, "borderline": 3, "failed": 2}
    assert condition(st, "Ready") | {"lastTransitionTime": None} == {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "round finished", "lastTransitionTime": None}
    assert st["progress"] == "done"
    reasons = [r for _, r, _ in events(api, "r2")]
    assert reasons[0] == "RoundStarted" and reasons[-1] == "RoundSucceeded" and "JobCreated" in reasons
    # Operator metrics: the round's phase gauge and accuracy.
    assert REGISTRY.get_sample_value("looptool_operator_round_phase", {"namespace": "default", "round": "r2", "phase": "Succeeded"}) == 1
    assert REGISTRY.get_sample_value("looptool_operator_round_phase", {"namespace": "default", "round": "r2", "phase": "Training"}) == 0
    assert REGISTRY.get_sample_value("looptool_operator_round_accuracy", {"namespace": "default", "round": "r2", "metric": "heldout"}) == st["accuracy"]["heldout"]


def _res(api: FakeKubeApi, plural: str):
    return next(r for r, _, _ in api.kmock.objects if r.plural == plural)


def trainer_pod(job_name: str, suffix: str, image: str, status: dict) -> dict:
    """The kubelet's view of one of a Job's trainer pods (the operator reads its container statuses)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job_name}-{suffix}", "labels": {"job-name": job_name, "batch.kubernetes.io/job-name": job_name}},
            "spec": {"containers": [{"name": "trainer", "image": image}]},
            "status": status}


def test_failed_job_fails_the_round_with_a_reason(api, executor):
    with operator(api, executor):
        api.create(*LR, loopround("r3"))
        job = wait_for(lambda: jobs_of(api, "r3"), what="training Job")[0]
        name = job["metadata"]["name"]
        # The kubelet's view of the trainer pod: killed for memory.
        api.create("v1", "pods", trainer_pod(name, "x7k2p", "x", {"phase": "Failed", "containerStatuses": [
            {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}))
        api.patch(*JOBS, name, {"status": {"failed": 2, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}}, sub="status")
        wait_for(phase_is(api, "r3", "Failed"), what="Failed")
        wait_for(lambda: any(r == "RoundFailed" for _, r, _ in events(api, "r3")), what="RoundFailed Event")

    st = status(api, "r3")
    assert st["reason"] == "TrainingJobFailed"
    assert "BackoffLimitExceeded" in st["message"] and "OOMKilled (exit 137)" in st["message"]
    assert condition(st, "Ready")["reason"] == "TrainingJobFailed"
    assert st["stages"]["train"]["state"] == "Failed"
    assert "probe" not in st["stages"]
    assert any(t == "Warning" and r == "RoundFailed" for t, r, _ in events(api, "r3"))


def test_a_pod_that_cannot_pull_its_image_gives_the_round_a_condition_while_the_job_stays_active(api, executor):
    with operator(api, executor):
        api.create(*LR, loopround("ip1"))
        job = wait_for(lambda: jobs_of(api, "ip1"), what="training Job")[0]
        name = job["metadata"]["name"]
        # The kubelet's view: the image is not in the registry; it backs off and retries, the Job stays active.
        api.create("v1", "pods", trainer_pod(name, "p1x2q", TRAINER_IMAGE, {"phase": "Pending", "containerStatuses": [
            {"name": "trainer", "ready": False, "image": TRAINER_IMAGE, "state": {
                "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{TRAINER_IMAGE}"'}}}]}))
        api.patch(*JOBS, name, {"status": {"active": 1, "ready": 0}}, sub="status")
        st = wait_for(lambda: status(api, "ip1") if condition(status(api, "ip1"), "Ready")["reason"] == "ImagePullBackOff" else None,
                      what="the image pull condition")
        ready = condition(st, "Ready")
        assert ready["status"] == "False" and TRAINER_IMAGE in ready["message"] and name in ready["message"], ready
        assert st["phase"] == "Training" and st["stages"]["train"]["state"] == "Running"
        wait_for(lambda: [m for t, r, m in events(api, "ip1") if t == "Warning" and r == "TrainerImagePullFailed" and TRAINER_IMAGE in m],
                 what="TrainerImagePullFailed Event")

        # The image arrives (pushed, or the pull secret fixed): the pod runs, the condition clears.
        api.patch("v1", "pods", f"{name}-p1x2q", {"status": {"phase": "Running", "containerStatuses": [
            {"name": "trainer", "ready": True, "image": TRAINER_IMAGE, "state": {"running": {}}}]}}, sub="status")
        api.patch(*JOBS, name, {"status": {"active": 1, "ready": 1}}, sub="status")
        wait_for(lambda: condition(status(api, "ip1"), "Ready")["reason"] == "InProgress", what="the condition to clear")
        finish_job(api, job)
        wait_for(phase_is(api, "ip1", "Succeeded", "Failed"), what="terminal phase")
    assert status(api, "ip1")["phase"] == "Succeeded"
    assert len([r for _, r, _ in events(api, "ip1") if r == "TrainerImagePullFailed"]) == 1


def test_invalid_spec_yields_a_condition_not_a_crash(api, executor):
    # Passes the CRD schema (one field at a time is fine) but not the semantic checks.
    bad = loopround("bad", toolset={"uri": "s3://looptool/toolsets/a", "file": "/tools.json"})
    with operator(api, executor):
        api.create(*LR, bad)
        api.create(*LR, loopround("good"))
        st = wait_for(lambda: status(api, "bad") if "conditions" in status(api, "bad") else None, what="InvalidSpec")
        wait_for(lambda: jobs_of(api, "good"), what="the valid round's Job (the operator keeps working)")
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "toolset" in ready["message"] and "exactly one" in ready["message"]
        assert condition(st, "SpecValid")["status"] == "False"
        assert st["phase"] == "Pending" and st["observedGeneration"] == 1
        assert not jobs_of(api, "bad")
        assert any(t == "Warning" and r == "InvalidSpec" for t, r, _ in events(api, "bad"))

        # Fixing the spec (generation 2) lets the round proceed.
        api.patch(*LR, "bad", {"spec": {"toolset": {"uri": None}}})
        wait_for(lambda: jobs_of(api, "bad"), what="Job after the fix")
        st = status(api, "bad")
        assert st["observedGeneration"] == 2 and condition(st, "SpecValid")["status"] == "True"


def test_schema_invalid_round_is_rejected_by_the_api_and_reported_if_it_slips_through(executor):
    bad = loopround("typo", training={"backend": "tpu", "gpus": 1})
    with FakeKubeApi() as strict:
        with pytest.raises(FakeApiError) as err:
            strict.create(*LR, bad)
        assert err.value.status == 422 and "spec.training.backend" in err.value.message
    # An API server without the schema (e.g. an old CRD): the operator's own validation catches it.
    with FakeKubeApi(validate_schema=False) as lax, operator(lax, executor):
        lax.create(*LR, bad)
        st = wait_for(lambda: status(lax, "typo") if "conditions" in status(lax, "typo") else None, what="InvalidSpec")
        assert condition(st, "Ready")["reason"] == "InvalidSpec"
        assert "spec.training.backend" in condition(st, "Ready")["message"]


def test_operator_restart_mid_round_resumes_without_duplicating_work(api, executor):
    with operator(api, executor):
        api.create(*LR, loopround("r4"))
        wait_for(lambda: jobs_of(api, "r4"), what="training Job")
    assert job_creations(api) == 1 and executor.calls["synthesize"] == 1

    # Second operator process (same state in the API): finds the Job by its name, creates none.
    gate = executor.gates["probe"] = threading.Event()
    with operator(api, executor):
        time.sleep(1.0)
        assert job_creations(api) == 1 and len(jobs_of(api, "r4")) == 1
        finish_job(api, jobs_of(api, "r4")[0])
        wait_for(lambda: status(api, "r4").get("stages", {}).get("probe", {}).get("state") == "Running", what="probe running")
    # Stopped in the middle of a data stage; the third operator re-enters it, nothing before it.
    gate.set()
    with operator(api, executor):
        wait_for(phase_is(api, "r4", "Succeeded", "Failed"), what="terminal phase")
    st = status(api, "r4")
    assert st["phase"] == "Succeeded", st
    assert job_creations(api) == 1
    assert executor.calls["synthesize"] == 1  # finished stages are never redone
    assert executor.calls["probe"] == 2  # the interrupted stage re-entered once (idempotent outputs)
    assert executor.calls["judge"] == executor.calls["expand"] == executor.calls["evaluate"] == 1
    assert any(r == "StageResumed" for _, r, _ in events(api, "r4"))


def test_deleting_a_round_removes_its_job_and_request(api, executor):
    with operator(api, executor):
        api.create(*LR, loopround("r5"))
        job = wait_for(lambda: jobs_of(api, "r5"), what="training Job")[0]
        assert api.get(*LR, "r5")["metadata"]["finalizers"] == ["looptool.io/finalizer"]
        api.delete(*LR, "r5")
        wait_for(lambda: api.get(*LR, "r5") is None, what="round gone (finalizer released)")
        assert api.get(*JOBS, job["metadata"]["name"]) is None
        assert api.get("v1", "configmaps", job["metadata"]["name"]) is None


def test_chained_round_waits_for_and_continues_from_the_previous_round(api, executor):
    with operator(api, executor):
        api.create(*LR, loopround("chain-2", round=2, previousRound="chain-1", baseModel=None))
        st = wait_for(lambda: status(api, "chain-2") if status(api, "chain-2").get("conditions") else None, what="waiting")
        assert condition(st, "Ready")["reason"] == "WaitingForPreviousRound" and st["phase"] == "Pending"

        api.create(*LR, loopround("chain-1"))
        ckpt1 = finish_job(api, wait_for(lambda: jobs_of(api, "chain-1"), what="round 1 Job")[0])
        job2 = wait_for(lambda: jobs_of(api, "chain-2"), what="round 2 Job")[0]
        request = json.loads(api.get("v1", "configmaps", job2["metadata"]["name"])["data"]["request.json"])
        assert request["base_checkpoint_uri"] == ckpt1  # continues from round 1's checkpoint
        assert request["round"] == 2


def test_data_stage_failure_is_retried_then_fails_the_round(api, executor):
    executor.fail["synthesize"] = ("SynthesisFailed", "synthesizer service: UNAVAILABLE: connection refused")
    with operator(api, executor, stageRetries=1):
        api.create(*LR, loopround("r6"))
        wait_for(phase_is(api, "r6", "Failed"), what="Failed")
    st = status(api, "r6")
    assert st["reason"] == "SynthesisFailed" and "UNAVAILABLE" in st["message"]
    assert executor.calls["synthesize"] == 2
    assert [r for _, r, _ in events(api, "r6")].count("StageRetrying") == 1
    assert not jobs_of(api, "r6")


def test_training_job_manifest_is_valid_kubernetes():
    import kubernetes_validate

    from looptool.operators.jobs import request_configmap, training_job, work_claim
    from looptool.shared.loop.manifest import parse_round

    obj = loopround("r7", training={"backend": "verl", "gpus": 4, "queueName": "team-a"})
    obj["metadata"].update(namespace="default", uid="5f0c4e1a-0000-4000-8000-000000000001")
    spec = parse_round(obj).spec
    cfg = TrainerJobSettings(s3Secret="looptool-minio", configMap="looptool-config", activeDeadlineSeconds=86400,
                             priorityClassName="training", imagePullSecrets=["regcred"], allowedImages=[TRAINER_IMAGE])
    req = {"run_id": "r7-abc", "output_prefix": "s3://looptool/runs/r7/train-abc"}
    for manifest in (training_job(obj, spec, req, cfg), request_configmap(obj, req), work_claim(obj, spec, cfg)):
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    job = training_job(obj, spec, req, cfg)
    assert len(job["metadata"]["name"]) <= 63
    # The command line is one the trainer's Job entry point accepts (flags drift = a failing Job).
    from looptool.services.trainer.job import build_parser

    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "looptool.services.trainer.job"]
    args = build_parser().parse_args(command[3:])
    assert (args.request, args.config, args.metrics_port) == ("/etc/looptool/request/request.json", "/etc/looptool/config/config.yaml", 9105)
    assert args.workdir == "/var/lib/looptool/work"
    cpu_only = training_job(obj, parse_round(loopround("r8", training={"backend": "cpu", "gpus": 0})).spec, req, cfg)
    res = cpu_only["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in res["requests"] and "tolerations" in cpu_only["spec"]["template"]["spec"]  # user's only
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} not in cpu_only["spec"]["template"]["spec"]["tolerations"]


def test_job_names_are_deterministic_and_bounded():
    from looptool.operators.jobs import job_name

    assert job_name("r1", "uid-1") == job_name("r1", "uid-1") != job_name("r1", "uid-2")
    long = job_name("x" * 63, "uid")
    assert len(long) <= 63 and long.startswith("x") and "-train-" in long


def test_loopplan_spawns_chained_rounds_and_summarises_them(api, executor):
    template = loopround("x")["spec"]
    plan = {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopPlan", "metadata": {"name": "plan"},
            "spec": {"rounds": 2, "template": template}}
    with operator(api, executor):
        created = api.create("looptool.io/v1alpha1", "loopplans", plan)
        r1 = wait_for(lambda: api.get(*LR, "plan-r1"), what="round 1")
        r2 = wait_for(lambda: api.get(*LR, "plan-r2"), what="round 2")
        assert r1["metadata"]["ownerReferences"][0] | {"uid": None} == {
            "apiVersion": "looptool.io/v1alpha1", "kind": "LoopPlan", "name": "plan", "uid": None,
            "controller": True, "blockOwnerDeletion": True}
        assert r1["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        assert r2["spec"]["previousRound"] == "plan-r1" and r2["spec"]["round"] == 2
        ckpt1 = finish_job(api, wait_for(lambda: jobs_of(api, "plan-r1"), what="round 1 Job")[0])
        job2 = wait_for(lambda: jobs_of(api, "plan-r2"), what="round 2 Job")[0]
        assert json.loads(api.get("v1", "configmaps", job2["metadata"]["name"])["data"]["request.json"])["base_checkpoint_uri"] == ckpt1
        running = api.get("looptool.io/v1alpha1", "loopplans", "plan")["status"]
        assert running["phase"] == "Running" and running["currentRound"] == "plan-r2" and running["completed"] == 1
        finish_job(api, job2)
        st = wait_for(lambda: (api.get("looptool.io/v1alpha1", "loopplans", "plan").get("status") or {}).get("phase") == "Succeeded"
                      and api.get("looptool.io/v1alpha1", "loopplans", "plan")["status"], what="plan Succeeded")
    assert [r["phase"] for r in st["rounds"]] == ["Succeeded", "Succeeded"]
    assert st["completed"] == 2 and all("heldout" in r["accuracy"] for r in st["rounds"])
    assert condition(st, "Ready")["status"] == "True"


def test_trainer_result_json_is_recorded_like_the_trainer_service_does():
    from looptool.operators.executor import ServiceExecutor
    from looptool.shared.config import LoopToolConfig
    from looptool.shared.loop.state import RoundStatus

    result = {  # the shape services/trainer/runner.py writes
        "version": 1, "status": "succeeded", "run_id": "r1-abc", "key": "k", "backend": "verl",
        "checkpoint_uri": "s3://looptool/runs/r1/train-abc/model",
        "metrics": {"reward_mean": 0.62, "kl": 0.01, "note": "text is dropped"},
        "counts": {"examples": 120, "grpo_steps": 3}, "reward_curve": [0.2, 0.4, 0.62],
    }
    st = RoundStatus()
    ServiceExecutor(LoopToolConfig()).record_training_result(st, result)
    assert st.checkpointUri == result["checkpoint_uri"] == st.stages["train"].checkpointUri
    assert st.stages["train"].metrics["reward_step_3"] == 0.62 and "note" not in st.stages["train"].metrics
    assert st.stages["train"].counts == {"examples": 120, "grpo_steps": 3}


# ------------------------------------------------------------------------------------------------ durable, admissible Jobs

PVCS = ("v1", "persistentvolumeclaims")


def claims_of(api: FakeKubeApi, name: str) -> list[dict[str, Any]]:
    return [c for c in api.list(*PVCS) if (c["metadata"].get("labels") or {}).get("looptool.io/round") == name]


def test_work_volume_claim_is_created_once_owned_by_the_round_and_survives_a_new_job(api, executor):
    settings = TrainerJobSettings(workVolume={"storageClassName": "premium-rwo", "size": "300Gi"})
    with operator(api, executor, trainer=settings):
        created = api.create(*LR, loopround("w1", resources={"workVolumeSize": "500Gi"}))
        job = wait_for(lambda: jobs_of(api, "w1"), what="training Job")[0]
        (claim,) = claims_of(api, "w1")
    uid = created["metadata"]["uid"]
    assert claim["metadata"]["ownerReferences"][0]["uid"] == uid
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "premium-rwo",
                             "resources": {"requests": {"storage": "500Gi"}}}  # the round's size wins
    pod = job["spec"]["template"]["spec"]
    work = next(v for v in pod["volumes"] if v["name"] == "work")
    assert work == {"name": "work", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    (container,) = pod["containers"]
    assert {"name": "work", "mountPath": "/var/lib/looptool/work"} in container["volumeMounts"]
    assert container["command"][container["command"].index("--workdir") + 1] == "/var/lib/looptool/work"
    assert pod["terminationGracePeriodSeconds"] == 600
    assert api.creates["persistentvolumeclaims"] == 1
    assert any(r == "WorkVolumeCreated" for _, r, _ in events(api, "w1"))

    # Operator restart: nothing new. Then the Job disappears mid-training (deleted by hand, TTL): the
    # re-created Job mounts the same claim, so the trainer resumes from the checkpoints in it.
    with operator(api, executor, trainer=settings):
        time.sleep(1.0)
        assert api.creates["persistentvolumeclaims"] == 1 and job_creations(api) == 1
        api.delete(*JOBS, job["metadata"]["name"])
        wait_for(lambda: job_creations(api) == 2 and jobs_of(api, "w1"), what="the Job re-created")
        (again,) = claims_of(api, "w1")
        assert again["metadata"]["uid"] == claim["metadata"]["uid"]
        rejob = jobs_of(api, "w1")[0]
        assert {"name": "work", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in rejob["spec"]["template"]["spec"]["volumes"]
        # Deleting the round removes the claim with the Job (ownerReferences; the finalizer does it at once).
        api.delete(*LR, "w1")
        wait_for(lambda: api.get(*LR, "w1") is None, what="round gone")
        assert not claims_of(api, "w1") and not jobs_of(api, "w1")


def test_emptydir_work_volume_when_persistence_is_off(api, executor):
    with operator(api, executor, trainer=TrainerJobSettings(workVolume={"persistent": False})):
        api.create(*LR, loopround("w2"))
        job = wait_for(lambda: jobs_of(api, "w2"), what="training Job")[0]
    assert not api.list(*PVCS) and api.creates["persistentvolumeclaims"] == 0
    assert {"name": "work", "emptyDir": {}} in job["spec"]["template"]["spec"]["volumes"]


def test_queued_job_is_reported_as_queued_until_kueue_admits_it(api, executor):
    with operator(api, executor, trainer=TrainerJobSettings(queueName="cluster-default")):
        api.create(*LR, loopround("q1", training={"backend": "verl", "gpus": 4, "queueName": "team-a"}))
        job = wait_for(lambda: jobs_of(api, "q1"), what="training Job")[0]
        name = job["metadata"]["name"]
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"  # the round's queue wins
        assert job["spec"]["suspend"] is True  # Kueue unsuspends it on admission
        # What the job controller reports for a suspended Job.
        api.patch(*JOBS, name, {"status": {"conditions": [
            {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}]}}, sub="status")
        st = wait_for(lambda: status(api, "q1") if status(api, "q1").get("stages", {}).get("train", {}).get("state") == "Queued" else None,
                      what="queued")
        assert any(r == "JobCreated" and "queued in Kueue LocalQueue 'team-a'" in m for _, r, m in events(api, "q1"))
        assert st["phase"] == "Training" and st["stages"]["train"]["state"] == "Queued"
        assert st["progress"] == "train: queued"
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "Queued")
        assert "'team-a'" in ready["message"] and name in ready["message"]
        assert not st["stages"]["train"]["startedAt"]

        # Kueue admits the Workload: it unsuspends the Job; the job controller flips the condition.
        api.patch(*JOBS, name, {"spec": {"suspend": False}})
        api.patch(*JOBS, name, {"status": {"active": 1, "conditions": [
            {"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed"}]}}, sub="status")
        st = wait_for(lambda: status(api, "q1") if status(api, "q1")["stages"]["train"]["state"] == "Running" else None, what="Running")
        assert condition(st, "Ready")["reason"] == "InProgress" and st["stages"]["train"]["startedAt"]
        wait_for(lambda: any(r == "JobAdmitted" for _, r, _ in events(api, "q1")), what="JobAdmitted")

        # Preempted by Kueue: suspended again -> queued again, not failed and not running.
        api.patch(*JOBS, name, {"spec": {"suspend": True}})
        st = wait_for(lambda: status(api, "q1") if status(api, "q1")["stages"]["train"]["state"] == "Queued" else None, what="queued again")
        assert "again" in st["stages"]["train"]["message"] and st["phase"] == "Training"
        wait_for(lambda: any(r == "JobQueued" for _, r, _ in events(api, "q1")), what="JobQueued Event")
        api.patch(*JOBS, name, {"spec": {"suspend": False}})
        finish_job(api, jobs_of(api, "q1")[0])
        wait_for(phase_is(api, "q1", "Succeeded", "Failed"), what="terminal phase")
    assert status(api, "q1")["phase"] == "Succeeded"
    assert job_creations(api) == 1


def test_operator_default_queue_applies_when_the_round_names_none(api, executor):
    with operator(api, executor, trainer=TrainerJobSettings(queueName="cluster-default")):
        api.create(*LR, loopround("q2"))
        job = wait_for(lambda: jobs_of(api, "q2"), what="training Job")[0]
        st = wait_for(lambda: status(api, "q2") if status(api, "q2").get("stages", {}).get("train", {}).get("state") == "Queued" else None,
                      what="queued from creation (spec.suspend)")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cluster-default"
    assert condition(st, "Ready")["reason"] == "Queued"


def test_invalid_queue_name_is_an_invalid_spec_and_nothing_is_created(executor):
    bad = loopround("badq", training={"backend": "verl", "gpus": 1, "queueName": "Team A/gpu"})
    with FakeKubeApi() as strict:  # the CRD schema carries the label-value pattern
        with pytest.raises(FakeApiError) as err:
            strict.create(*LR, bad)
        assert err.value.status == 422 and "spec.training.queueName" in err.value.message
    with FakeKubeApi(validate_schema=False) as lax, operator(lax, executor):
        lax.create(*LR, bad)
        st = wait_for(lambda: status(lax, "badq") if "conditions" in status(lax, "badq") else None, what="InvalidSpec")
        ready = condition(st, "Ready")
        assert ready["reason"] == "InvalidSpec" and "spec.training.queueName" in ready["message"]
        assert "not a valid Kubernetes label value" in ready["message"] and "LocalQueue" in ready["message"]
        time.sleep(0.5)
        assert not jobs_of(lax, "badq") and not lax.list(*PVCS) and not lax.list("v1", "configmaps")
        assert lax.creates["jobs"] == lax.creates["persistentvolumeclaims"] == lax.creates["configmaps"] == 0


def test_looptool_run_rejects_an_invalid_queue_name_in_one_line(tmp_path, capsys):
    import yaml

    from looptool.cli import main

    manifest = loopround("badq", training={"backend": "cpu", "queueName": "-nope-"})
    path = tmp_path / "round.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["run", str(path), "--storage-root", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spec.training.queueName" in err[0] and "'-nope-' is not a valid Kubernetes label value" in err[0]


def test_job_outcome_of_suspended_jobs():
    from looptool.operators.jobs import job_outcome

    assert job_outcome({"spec": {"suspend": True}}) == ("Queued", "JobSuspended", "")
    assert job_outcome({"spec": {}, "status": {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}]}})[0] == "Queued"
    assert job_outcome({"spec": {}, "status": {"conditions": [{"type": "Suspended", "status": "False", "reason": "JobResumed"}]}})[0] == "Running"
    # A finished Job is finished, whatever its suspend flag says.
    assert job_outcome({"spec": {"suspend": True}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}})[0] == "Failed"


def test_operator_settings_reject_a_bad_default_queue_and_work_volume(tmp_path):
    from looptool.operators.settings import load_settings
    from looptool.shared.config import ConfigError

    path = tmp_path / "operator.yaml"
    path.write_text("trainer:\n  queueName: 'gpu queue'\n  workVolume: {size: lots}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(path))
    text = str(err.value)
    assert "trainer.queueName" in text and "not a valid Kubernetes label value" in text
    assert "trainer.workVolume.size" in text and "'lots' is not a storage size; use a Kubernetes quantity such as 200Gi" in text
