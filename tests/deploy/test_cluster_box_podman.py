"""The cluster in a box with its kubelet running the trainer Job in the CPU image with podman
(marker `image`, `make image-test`): ``kubectl apply`` of the demo's small CPU LoopRound -> Succeeded,
the trainer pod's status names the podman container and the image, the checkpoint is in SeaweedFS,
and no container of the box is left once it stops. The kubelet alone: a Job's exit code, the pod's
user and fsGroup on its emptyDir, a deleted Job's container stopped and removed; a stale image runs
as a process (``auto``, with one log line) and is refused by ``runtime="podman"``.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest

from looptool.operators.jobs import job_outcome, training_job
from looptool.operators.settings import TrainerJobSettings
from looptool.shared.loop.manifest import LoopRound

from support.cluster_box import BOX_LABEL, DEMO_ROUND, ClusterBox, LocalKubelet, image_build, image_current, podman
from support.fake_kube import FakeKubeApiProcess
from support.waiting import wait_for

NAME = "demo-cpu-r1"  # DEMO_ROUND's


@pytest.fixture(scope="module")
def cpu_image() -> str:
    build = image_build()
    try:
        return str(build.ensure_image())  # reused when its build inputs are unchanged (make image-test built it)
    except build.BuildError as exc:
        pytest.fail(str(exc))


@pytest.mark.image
@pytest.mark.timeout(3600)  # a rebuild of the image (minutes on a busy 2-core machine) counts here
def test_the_trainer_job_runs_in_the_cpu_image_with_podman(cpu_image, tmp_path):
    with ClusterBox(tmp_path, runtime="podman") as box:
        manifest = box.workdir / f"{NAME}.yaml"
        manifest.write_text(DEMO_ROUND)
        box.kubectl("apply", "-f", str(manifest))
        st = box.wait_round(NAME, timeout=240)
        assert st["phase"] == "Succeeded", json.dumps(st)[:3000]

        ckpt = box.object_hashes(st["checkpointUri"])
        assert any(k.endswith((".safetensors", ".bin", ".pt")) for k in ckpt), ckpt
        assert box.api is not None
        (job,) = box.api.list("batch/v1", "jobs", box.namespace)
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == cpu_image
        (pod,) = [p for p in box.api.list("v1", "pods", box.namespace) if p["metadata"]["labels"].get("job-name") == job["metadata"]["name"]]
        (cs,) = pod["status"]["containerStatuses"]
        assert cs["image"] == cpu_image, cs
        assert re.fullmatch(r"podman://[0-9a-f]{64}", cs["containerID"]), cs
        assert cs["state"]["terminated"]["exitCode"] == 0 and cs["state"]["terminated"]["containerID"] == cs["containerID"], cs
        box_id = f"label={BOX_LABEL}={box.workdir / 'kubelet'}"
    assert podman("ps", "--all", "--quiet", "--filter", box_id).stdout.split() == []


# --- the kubelet alone: one Job at a time, its command swapped ----------------------------------------

ROUND = {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound",
         "metadata": {"name": "r1", "namespace": "default", "uid": "u-1"},
         "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python", "limit": 2}},
                  "training": {"backend": "cpu", "gpus": 0}}}
WRITE_AND_EXIT = ("import os, sys; open('/var/lib/looptool/work/out', 'w').write(os.environ['LOOPTOOL_ROUND'] + str(os.getuid()));"
                  " sys.exit(int(sys.argv[1]))")


def _job(name: str, command: list[str]) -> dict[str, Any]:
    """The operator's trainer Job (an emptyDir work volume, no request ConfigMap) running ``command``."""
    spec = LoopRound.model_validate(ROUND).spec
    cfg = TrainerJobSettings(workVolume={"persistent": False}, metricsPort=0, shmSize="")
    job = training_job({**ROUND, "metadata": {**ROUND["metadata"], "name": name, "uid": f"u-{name}"}}, spec, {"run_id": name}, cfg)
    pod = job["spec"]["template"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if "configMap" not in v]
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "request"]
    pod["containers"][0]["command"] = command
    job["metadata"]["name"] = name
    return job


@pytest.fixture
def api():
    a = FakeKubeApiProcess()
    a.start()
    yield a
    a.stop()


def _terminated(api: FakeKubeApiProcess, job: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        pods = [p for p in api.list("v1", "pods") if p["metadata"]["labels"].get("job-name") == job]
        cs = (pods[-1]["status"].get("containerStatuses") or [{}])[0] if pods else {}
        return cs if "terminated" in cs.get("state", {}) else None

    return wait_for(done, timeout=90, what=f"the pod of job {job} to terminate")


@pytest.mark.image
@pytest.mark.timeout(3600)
def test_the_kubelet_runs_a_job_in_podman_as_the_pod_security_context_says_and_stops_it(cpu_image, api, tmp_path):
    kubelet = LocalKubelet(api, ["default"], tmp_path, interval=0.1, retry_delay=0.1, runtime="podman")
    kubelet.start()
    try:
        # Exit 2 (a bad request): FailJob at once, by the pod failure policy; uid 1000 wrote to the emptyDir.
        api.create("batch/v1", "jobs", _job("bad", ["python", "-c", WRITE_AND_EXIT, "2"]))
        cs = _terminated(api, "bad")
        assert cs["state"]["terminated"]["exitCode"] == 2 and cs["containerID"].startswith("podman://") and cs["image"] == cpu_image, cs
        (job,) = [j for j in api.list("batch/v1", "jobs") if j["metadata"]["name"] == "bad"]
        assert job_outcome(job)[0] == "Failed" and job["status"]["failed"] == 0, job["status"]
        (out,) = (tmp_path / "pods" / "default").glob("bad-*/volumes/work/out")
        assert out.read_text() == "bad1000"  # LOOPTOOL_ROUND, then the uid

        # A running container: deleting its Job stops and removes it.
        api.create("batch/v1", "jobs", _job("long", ["python", "-c", "import time; time.sleep(600)"]))
        name = wait_for(lambda: podman("ps", "--filter", "label=io.kubernetes.pod.namespace=default", "--filter",
                                       f"label={BOX_LABEL}={tmp_path}", "--format", "{{.Names}}").stdout.strip(),
                        timeout=90, what="the long job's container")
        assert name.startswith("k8s_trainer_long-") and name.endswith("_default"), name
        api.delete("batch/v1", "jobs", "long")
        wait_for(lambda: podman("container", "exists", name).returncode == 1, timeout=60, what=f"{name} removed")
    finally:
        kubelet.stop()
    assert not kubelet.errors, kubelet.errors


@pytest.mark.image
@pytest.mark.timeout(3600)
def test_a_stale_image_runs_as_a_process_and_the_kubelet_says_why(cpu_image, api, tmp_path, monkeypatch):
    monkeypatch.setattr(image_build(), "inputs_hash", lambda: "0" * 64)  # as after a source edit
    current, why = image_current(cpu_image)
    assert not current and "stale" in why
    with pytest.raises(RuntimeError, match="runtime podman: .* is stale"):
        with ClusterBox(tmp_path / "box", runtime="podman"):
            pass
    said: list[str] = []
    kubelet = LocalKubelet(api, ["default"], tmp_path, interval=0.1, retry_delay=0.1, images=(cpu_image,), log=said.append)
    kubelet.start()
    try:
        # This host's python: exits 0 as a process; in the image that path does not exist.
        api.create("batch/v1", "jobs", _job("stale", [sys.executable, "-c", "import sys; sys.exit(int(sys.argv[1]))", "0"]))
        cs = _terminated(api, "stale")
        assert cs["state"]["terminated"]["exitCode"] == 0 and "containerID" not in cs, cs
    finally:
        kubelet.stop()
    assert said == [f"kubelet: pods of {cpu_image} run as local processes: {why}"]
