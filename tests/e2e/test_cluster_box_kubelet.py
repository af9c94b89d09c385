"""The cluster box's local kubelet (tests/support/cluster_box.py) as the Job controller: the operator's
real trainer Job shape (operators/jobs.py) with the container command swapped for one exit code;
Pod and Job status as the operator reads them (jobs.job_outcome, jobs.pod_failure_details)."""

from __future__ import annotations

import sys

import pytest

from looptool.operators.jobs import job_outcome, pod_failure_details, training_job
from looptool.operators.settings import TrainerJobSettings
from looptool.shared.loop.manifest import LoopRound

from support.cluster_box import LocalKubelet, failure_policy_action
from support.fake_kube import FakeKubeApiProcess
from support.waiting import wait_for

ROUND = {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound",
         "metadata": {"name": "r1", "namespace": "default", "uid": "u-1"},
         "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python", "limit": 2}},
                  "training": {"backend": "cpu", "gpus": 0}}}


MISSING = "registry.invalid/looptool/no-such-trainer:0"


def _job(name: str, exit_code: int, backoff_limit: int, image: str = "") -> dict:
    r = LoopRound.model_validate(ROUND)
    cfg = TrainerJobSettings(backoffLimit=backoff_limit, workVolume={"persistent": False}, metricsPort=0, shmSize="",
                             allowedImages=[MISSING])
    if image:
        r.spec.resources.trainerImage = image
    job = training_job({**ROUND, "metadata": {**ROUND["metadata"], "name": name, "uid": f"u-{name}"}}, r.spec, {"run_id": name}, cfg)
    pod = job["spec"]["template"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if "configMap" not in v]  # no request ConfigMap here
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "request"]
    pod["containers"][0]["command"] = [sys.executable, "-c", f"import sys; print('exiting {exit_code}'); sys.exit({exit_code})"]
    job["metadata"]["name"] = name  # not <round>-train-<hash>: one Job per test
    return job


def test_failure_policy_of_the_operators_job():
    job = _job("j", 0, 1)
    assert failure_policy_action(job, "trainer", 2) == ("FailJob", 0)
    assert failure_policy_action(job, "trainer", 3) == ("Ignore", 1)
    assert failure_policy_action(job, "trainer", 137) == ("Count", -1)
    assert failure_policy_action(job, "other", 2) == ("Count", -1)


@pytest.fixture(scope="module")
def kubelet(tmp_path_factory):
    api = FakeKubeApiProcess()
    api.start()
    k = LocalKubelet(api, ["default"], tmp_path_factory.mktemp("kubelet"), interval=0.1, retry_delay=0.1,
                     images=(TrainerJobSettings().image,), runtime="process")  # the commands are this host's python
    k.start()
    try:
        yield api
    finally:
        k.stop()
        api.stop()


def _finished(api, name: str) -> dict:
    def done():
        job = api.get("batch/v1", "jobs", name)
        return job if job and job_outcome(job)[0] in ("Succeeded", "Failed") else None

    return wait_for(done, timeout=60, what=f"job {name} to finish")


def _pods(api, name: str) -> list[dict]:
    return [p for p in api.list("v1", "pods") if p["metadata"]["labels"].get("job-name") == name]


def test_a_job_that_exits_0_completes(kubelet):
    kubelet.create("batch/v1", "jobs", _job("ok", 0, 1))
    job = _finished(kubelet, "ok")
    assert job_outcome(job)[0] == "Succeeded" and job["status"]["succeeded"] == 1 and job["status"]["active"] == 0
    (pod,) = _pods(kubelet, "ok")
    assert pod["status"]["phase"] == "Succeeded"


def test_exit_2_fails_the_job_at_once_by_its_pod_failure_policy(kubelet):
    kubelet.create("batch/v1", "jobs", _job("bad", 2, 3))
    job = _finished(kubelet, "bad")
    assert job_outcome(job)[:2] == ("Failed", "PodFailurePolicy")
    pods = _pods(kubelet, "bad")
    assert len(pods) == 1 and "exit 2" in pod_failure_details(pods) and "exiting 2" in pod_failure_details(pods)


def test_exit_1_is_retried_up_to_the_backoff_limit(kubelet):
    kubelet.create("batch/v1", "jobs", _job("flaky", 1, 1))
    job = _finished(kubelet, "flaky")
    assert job_outcome(job)[:2] == ("Failed", "BackoffLimitExceeded")
    assert job["status"]["failed"] == 2 and len(_pods(kubelet, "flaky")) == 2


def test_a_deleted_job_loses_its_pods(kubelet):
    kubelet.create("batch/v1", "jobs", _job("gone", 0, 1))
    _finished(kubelet, "gone")
    assert _pods(kubelet, "gone")
    kubelet.delete("batch/v1", "jobs", "gone")
    wait_for(lambda: not _pods(kubelet, "gone"), timeout=30, what="the deleted Job's pods to go")


def test_a_job_whose_image_is_missing_stays_active_with_its_pod_waiting_on_the_pull(kubelet):
    kubelet.create("batch/v1", "jobs", _job("noimage", 0, 1, image=MISSING))

    def backing_off():
        pods = _pods(kubelet, "noimage")
        waiting = [((p["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting", {}) for p in pods]
        return pods if waiting and waiting[-1].get("reason") == "ImagePullBackOff" else None

    (pod,) = wait_for(backing_off, timeout=30, what="the pod to back off pulling its image")
    assert pod["status"]["phase"] == "Pending"
    assert f'Back-off pulling image "{MISSING}"' in pod_failure_details([pod])
    job = kubelet.get("batch/v1", "jobs", "noimage")
    assert job_outcome(job)[0] == "Running" and job["status"]["active"] == 1 and job["status"]["ready"] == 0
