"""Multi-node training (``spec.training.nnodes > 1``) as a KubeRay RayJob.

The fake Kubernetes API serves KubeRay's own RayJob CRD (vendored from KubeRay v1.7.0's chart,
``tests/support/crds/``): API discovery lists ``rayjobs`` and every RayJob created is validated
against the CRD's OpenAPI schema, strictly (unknown fields are 422, like ``kubectl``). The test plays
KubeRay: it patches the RayJob's status the way the KubeRay operator does and writes the trainer's
``result.json``.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest

from looptool.operators import jobs as jobs_
from looptool.operators import rayjobs
from looptool.operators.reconciler import InvalidSpec, validate
from looptool.operators.settings import TrainerJobSettings
from looptool.services.trainer import verl_backend
from looptool.shared.loop.manifest import parse_round

from support.fake_kube import CRD_DIR, FakeKubeApi, TestStageExecutor, complete_training, crd_errors
from support.waiting import wait_for
from test_operator import LR, TRAINER_IMAGE, condition, events, loopround, operator, phase_is, status

RAYJOB_CRD = str(CRD_DIR / "ray.io_rayjobs.yaml")
RAYJOBS = (rayjobs.API_VERSION, rayjobs.PLURAL)
# Multi-node needs one work volume every node mounts.
SHARED = {"workVolume": {"accessModes": ["ReadWriteMany"], "storageClassName": "filestore"}}
ALLOWED = {"allowedImages": [TRAINER_IMAGE]}  # the image loopround() picks
REQUEST = {"run_id": "run-1", "output_prefix": "s3://looptool/runs/r/train-1"}


def four_by_eight(name: str = "big", **training: Any) -> dict[str, Any]:
    return loopround(name, training={"backend": "verl", "gpus": 8, "nnodes": 4, **training})


def with_uid(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].update(namespace="ml", uid="5f0c4e1a-0000-4000-8000-000000000002")
    return obj


@pytest.fixture
def ray_api():
    with FakeKubeApi(crds=[RAYJOB_CRD]) as server:
        yield server


@pytest.fixture
def executor(tmp_path) -> TestStageExecutor:
    return TestStageExecutor(tmp_path / "store")


def rayjobs_of(api: FakeKubeApi, name: str) -> list[dict[str, Any]]:
    return [j for j in api.list(*RAYJOBS) if (j["metadata"].get("labels") or {}).get("looptool.io/round") == name]


def train_state(api: FakeKubeApi, name: str, state: str) -> Any:
    return lambda: status(api, name) if status(api, name).get("stages", {}).get("train", {}).get("state") == state else None


def kuberay(api: FakeKubeApi, rj: dict[str, Any], **st: Any) -> None:
    """What the KubeRay operator writes to a RayJob's status."""
    api.patch(*RAYJOBS, rj["metadata"]["name"], {"status": st}, sub="status")


def request_of(api: FakeKubeApi, rj: dict[str, Any]) -> dict[str, Any]:
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (cm,) = [v["configMap"]["name"] for v in head["volumes"] if v["name"] == "request"]
    return json.loads(api.get("v1", "configmaps", cm)["data"]["request.json"])


# ------------------------------------------------------------------------------------ the manifest


def test_rayjob_manifest_is_valid_for_kuberays_crd_and_reuses_the_jobs_pod():
    obj = with_uid(four_by_eight(queueName="team-a"))
    spec = parse_round(obj).spec
    cfg = TrainerJobSettings(configMap="looptool-config", s3Secret="s3", s3Endpoint="http://minio:9000", shmSize="64Gi", **SHARED, **ALLOWED)
    rj = rayjobs.ray_job(obj, spec, REQUEST, cfg)
    job = jobs_.training_job(obj, spec, REQUEST, cfg)

    assert crd_errors(RAYJOB_CRD, "v1", rj) == []
    # The schema check is not vacuous: a misspelt field or a wrong type is caught.
    broken = json.loads(json.dumps(rj))
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 3
    broken["spec"]["ttlSecondsAfterFinished"] = "ten"
    assert len(crd_errors(RAYJOB_CRD, "v1", broken)) == 2

    name = rj["metadata"]["name"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert rj["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert rj["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert rj["metadata"]["labels"] == job["metadata"]["labels"]  # the round's labels and the Kueue queue
    assert rj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and rj["spec"]["suspend"] is True
    assert rj["metadata"]["annotations"] == job["metadata"]["annotations"]  # run id, output prefix
    s = rj["spec"]
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] == cfg.rayJobTtlSecondsAfterFinished
    assert s["submissionMode"] == "K8sJobMode" and s["backoffLimit"] == cfg.backoffLimit

    # The entrypoint is the Job's container command; every Ray pod is the Job's trainer pod without it.
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    assert shlex.split(s["entrypoint"]) == job_container["command"]
    head = s["rayClusterSpec"]["headGroupSpec"]
    (workers,) = s["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3
    job_pod = job["spec"]["template"]["spec"]
    pods = {"head": head["template"], "worker": workers["template"]}
    for role, tpl in pods.items():
        (c,) = tpl["spec"]["containers"]
        assert "command" not in c and "args" not in c  # KubeRay runs `ray start` there
        for key in ("image", "env", "volumeMounts", "resources", "securityContext"):
            assert c[key] == job_container[key], (role, key)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        for key in ("volumes", "securityContext", "nodeSelector", "tolerations"):
            assert tpl["spec"][key] == job_pod[key], (role, key)
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in tpl["spec"]["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert tpl["metadata"] == job["spec"]["template"]["metadata"]
    assert head["template"]["spec"]["containers"][0]["ports"] == job_container["ports"]  # the trainer's /metrics
    assert "ports" not in workers["template"]["spec"]["containers"][0]
    assert head["rayStartParams"] == workers["rayStartParams"] == {"num-gpus": "8"}
    # Ray's GPUs are the ones verl is told to use: trainer.nnodes × trainer.n_gpus_per_node.
    overrides = verl_backend.verl_settings(spec.training, model_path="m", train_file="t", val_file="v", reward_path="r", local_dir="d")
    assert (overrides["trainer.nnodes"], overrides["trainer.n_gpus_per_node"]) == (4, 8)
    assert verl_backend.n_gpus(spec.training) == 8 * (1 + workers["replicas"])
    # KubeRay's submitter pod, restricted like the trainer pods.
    sub = s["submitterPodTemplate"]["spec"]
    assert sub["containers"][0]["name"] == "ray-job-submitter" and "command" not in sub["containers"][0]
    assert sub["securityContext"] == job_pod["securityContext"]
    assert sub["containers"][0]["securityContext"] == job_container["securityContext"]
    assert "nvidia.com/gpu" not in json.dumps(sub["containers"][0]["resources"])


def test_shm_volume_on_every_ray_pod_even_without_an_shm_size():
    obj = with_uid(four_by_eight())
    rj = rayjobs.ray_job(obj, parse_round(obj).spec, REQUEST, TrainerJobSettings(shmSize="", **SHARED, **ALLOWED))
    for tpl in (rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"], rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]):
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in tpl["spec"]["volumes"]
    assert "suspend" not in rj["spec"]  # no queue: KubeRay starts it at once
    assert crd_errors(RAYJOB_CRD, "v1", rj) == []


@pytest.mark.parametrize("round_name", ["r1", "9th-round", "team.a.round-12", "x" * 63])
def test_rayjob_names_are_dns1035_labels_of_at_most_47_characters(round_name):
    name = rayjobs.rayjob_name(round_name, "uid-1")
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert name == rayjobs.rayjob_name(round_name, "uid-1") != rayjobs.rayjob_name(round_name, "uid-2")


@pytest.mark.parametrize(("status_", "suspend", "expected"), [
    ({}, True, ("Queued", "Suspended")),
    ({}, False, ("Running", "New")),
    ({"jobDeploymentStatus": "Suspending"}, True, ("Queued", "Suspending")),
    ({"jobDeploymentStatus": "Suspended"}, True, ("Queued", "Suspended")),
    ({"jobDeploymentStatus": "Initializing"}, False, ("Running", "Initializing")),
    ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, False, ("Running", "Running")),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, False, ("Running", "Running")),
    ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1}, False, ("Running", "Retrying")),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, False, ("Succeeded", "Completed")),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, False, ("Failed", "RayJobStopped")),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": "exit code 1"}, False,
     ("Failed", "AppFailed")),
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, False, ("Failed", "DeadlineExceeded")),
    ({"jobDeploymentStatus": "ValidationFailed", "message": "bad spec"}, False, ("Failed", "ValidationFailed")),
])
def test_rayjob_status_maps_onto_the_train_stage(status_, suspend, expected):
    outcome, reason, message = rayjobs.rayjob_outcome({"spec": {"suspend": suspend}, "status": status_})
    assert (outcome, reason) == expected
    if status_.get("message"):
        assert message == status_["message"]
    if outcome == "Failed":
        assert message  # a failed round always says something


def test_multi_node_spec_needs_verl_and_gpus_per_node():
    with pytest.raises(InvalidSpec) as err:
        validate(loopround("cpu4", training={"backend": "cpu", "nnodes": 4}))
    lines = str(err.value).splitlines()
    assert any("spec.training.nnodes" in x and "backend: verl" in x for x in lines)
    assert any("spec.training.gpus" in x for x in lines)
    assert validate(four_by_eight()).spec.training.nnodes == 4


# ------------------------------------------------------------------------------------ the operator


def test_multi_node_round_runs_as_a_rayjob_through_kuberays_status(ray_api, executor):
    api = ray_api
    with operator(api, executor, trainer=TrainerJobSettings(**SHARED)):
        created = api.create(*LR, four_by_eight("mn", queueName="team-a"))
        rj = wait_for(lambda: rayjobs_of(api, "mn"), what="RayJob")[0]
        name = rj["metadata"]["name"]
        # Created (the fake API validated it against KubeRay's CRD), suspended for Kueue, owned by the round.
        assert crd_errors(RAYJOB_CRD, "v1", rj) == []
        assert rj["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        assert rj["spec"]["suspend"] is True and rj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert api.creates["jobs"] == 0  # no batch/v1 Job for a multi-node round
        st = wait_for(train_state(api, "mn", "Queued"), what="queued")
        assert condition(st, "Ready")["reason"] == "Queued" and "'team-a'" in condition(st, "Ready")["message"]
        assert f"rayjob {name} is suspended" in st["stages"]["train"]["message"]
        assert any(r == "JobCreated" and f"training RayJob {name} created (4 nodes" in m for _, r, m in events(api, "mn"))

        # Kueue admits it; KubeRay brings the Ray cluster up, submits, the Ray job runs.
        api.patch(*RAYJOBS, name, {"spec": {"suspend": False}})
        kuberay(api, rj, jobDeploymentStatus="Initializing")
        st = wait_for(train_state(api, "mn", "Running"), what="Running")
        assert st["stages"]["train"]["startedAt"]
        wait_for(lambda: status(api, "mn").get("progress") == "train: starting the Ray cluster", what="initializing progress")
        wait_for(lambda: any(r == "JobAdmitted" for _, r, _ in events(api, "mn")), what="JobAdmitted")
        kuberay(api, rj, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName=f"{name}-abcde")
        wait_for(lambda: status(api, "mn").get("progress") == "train: ray job RUNNING (Running)", what="running progress")

        # Preempted by Kueue (KubeRay suspends it): queued again, not failed.
        kuberay(api, rj, jobDeploymentStatus="Suspended", jobStatus="")
        st = wait_for(train_state(api, "mn", "Queued"), what="queued again")
        assert "again" in st["stages"]["train"]["message"] and st["phase"] == "Training"

        # Resumed and finished: the trainer wrote result.json, KubeRay reports Complete/SUCCEEDED.
        ckpt = complete_training(request_of(api, rj))
        kuberay(api, rj, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        wait_for(phase_is(api, "mn", "Succeeded", "Failed"), what="terminal phase", timeout=30)
    st = status(api, "mn")
    assert st["phase"] == "Succeeded", st
    assert st["checkpointUri"] == ckpt and st["stages"]["train"]["state"] == "Done"
    assert f"rayjob {name} succeeded" in st["stages"]["train"]["message"]
    assert api.creates["rayjobs"] == 1


def test_failed_rayjob_fails_the_round_with_kuberays_reason_and_deleting_the_round_removes_it(ray_api, executor):
    api = ray_api
    with operator(api, executor, trainer=TrainerJobSettings(**SHARED)):
        api.create(*LR, four_by_eight("mf"))
        rj = wait_for(lambda: rayjobs_of(api, "mf"), what="RayJob")[0]
        assert "suspend" not in rj["spec"]
        # The head pod's trainer went out of memory (pods found by the round's labels).
        api.create("v1", "pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{rj['metadata']['name']}-head-x7k2p", "labels": jobs_.selector("mf")},
            "spec": {"containers": [{"name": "trainer", "image": "x"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
        })
        kuberay(api, rj, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                message="Job entrypoint command failed with exit code 1")
        wait_for(phase_is(api, "mf", "Failed"), what="Failed")
        st = status(api, "mf")
        assert st["reason"] == "TrainingJobFailed" and st["stages"]["train"]["state"] == "Failed"
        assert "AppFailed: Job entrypoint command failed with exit code 1" in st["message"]
        assert "OOMKilled (exit 137)" in st["message"]
        # Deleting the round removes its RayJob (and request ConfigMap) at once.
        api.delete(*LR, "mf")
        wait_for(lambda: api.get(*LR, "mf") is None, what="round gone (finalizer released)")
        assert not rayjobs_of(api, "mf")
        assert not [c for c in api.list("v1", "configmaps") if (c["metadata"].get("labels") or {}).get("looptool.io/round") == "mf"]


def test_nnodes_on_a_cluster_without_kuberay_is_an_invalid_spec_and_nothing_is_created(executor):
    with FakeKubeApi() as api, operator(api, executor, trainer=TrainerJobSettings(**SHARED)):
        api.create(*LR, four_by_eight("nokuberay"))
        st = wait_for(lambda: status(api, "nokuberay") if "conditions" in status(api, "nokuberay") else None, what="InvalidSpec")
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "rayjobs.ray.io" in ready["message"] and "spec.training.nnodes" in ready["message"]
        assert condition(st, "SpecValid")["status"] == "False" and st["phase"] == "Pending"
        assert any(t == "Warning" and r == "InvalidSpec" and "rayjobs.ray.io" in m for t, r, m in events(api, "nokuberay"))
        # A one-node round next to it runs as a plain Job.
        api.create(*LR, loopround("single"))
        wait_for(lambda: api.creates["jobs"] == 1, what="the one-node round's Job")
        assert status(api, "nokuberay")["phase"] == "Pending"
        assert executor.calls["synthesize"] == 1  # the one-node round's only; nothing ran for the multi-node one
        assert api.creates["rayjobs"] == 0
        mine = [c for c in api.list("v1", "configmaps") + api.list("v1", "persistentvolumeclaims")
                if (c["metadata"].get("labels") or {}).get("looptool.io/round") == "nokuberay"]
        assert mine == []


def test_multi_node_needs_a_shared_work_volume(ray_api, executor):
    api = ray_api
    with operator(api, executor):  # the default work volume: ReadWriteOnce
        api.create(*LR, four_by_eight("rwo"))
        st = wait_for(lambda: status(api, "rwo") if "conditions" in status(api, "rwo") else None, what="InvalidSpec")
    msg = condition(st, "Ready")["message"]
    assert condition(st, "Ready")["reason"] == "InvalidSpec"
    assert "trainer.workVolume.accessModes" in msg and "ReadWriteMany" in msg
    assert api.creates["rayjobs"] == 0 and executor.calls["synthesize"] == 0
