"""Multi-node training (``spec.training.nnodes > 1``): a KubeRay ``ray.io/v1`` RayJob for a LoopRound.

verl runs on Ray. KubeRay starts a Ray cluster of ``nnodes`` pods — a head and a worker group of
``nnodes - 1`` replicas, each pod with ``training.gpus`` GPUs — and its submitter runs the trainer's
command (the one-node Job's container command, as one shell line) as the Ray job's ``entrypoint`` on
the head. The trainer starts verl's ``main_ppo``, which joins that cluster (Ray's job supervisor sets
``RAY_ADDRESS``; verl calls ``ray.init``) and asks for ``trainer.nnodes × trainer.n_gpus_per_node`` GPUs,
both set from the same spec by ``services/trainer/verl_backend.py``.

Every pod is the one-node Job's trainer pod (``jobs.trainer_pod_spec``: image, env, request / work /
config volumes, GPUs, scheduling, the restricted security context) without a command — KubeRay runs
``ray start`` in it — plus a Memory emptyDir at /dev/shm (NCCL and Ray's object store). Every rank
writes its FSDP checkpoint shards under the shared work directory and verl's TaskRunner may land on any
node, so the work volume must be one ReadWriteMany claim mounted on every pod (:func:`setting_problems`).

The RayJob carries the same labels, annotations (run id, output prefix) and owner reference as the Job;
with a Kueue queue it is created suspended (RayJob is a kind Kueue admits). ``shutdownAfterJobFinishes``
tears the Ray cluster down ``ttlSecondsAfterFinished`` after the job ends; the RayJob itself (and its
status) stays until the round is deleted.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import Any

from looptool.operators import jobs as jobs_
from looptool.operators.settings import TrainerJobSettings
from looptool.shared.loop.manifest import LoopRoundSpec

GROUP = "ray.io"
API_VERSION = "ray.io/v1"
PLURAL = "rayjobs"
KIND = "RayJob"
CRD_NAME = f"{PLURAL}.{GROUP}"
WORKER_GROUP = "gpu-workers"
# KubeRay's name for the submitter container; it fills in the `ray job submit ... -- <entrypoint>` command.
SUBMITTER_CONTAINER = "ray-job-submitter"
# KubeRay names the RayCluster "<rayjob>-<5 chars>" (at most 53), so a RayJob name is a DNS-1035 label of
# at most 47 characters.
MAX_NAME = 47
# KubeRay's defaults for its submitter pod (it runs `ray job submit` and follows the logs).
SUBMITTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "200Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


def is_multi_node(spec: LoopRoundSpec) -> bool:
    return spec.training.nnodes > 1


def rayjob_name(round_name: str, uid: str) -> str:
    """``<round>-train-<hash>``: deterministic (found again after a restart), at most 47 characters and a
    DNS-1035 label (a LoopRound name may contain dots or start with a digit; a RayJob name may not)."""
    digest = hashlib.sha256(f"{round_name}/{uid}".encode()).hexdigest()[:6]
    base = re.sub(r"[^a-z0-9-]+", "-", round_name.lower())
    if not base[:1].isalpha():
        base = "r-" + base
    head = base[: MAX_NAME - len("-train-") - len(digest)].rstrip("-")
    return f"{head}-train-{digest}"


def setting_problems(cfg: TrainerJobSettings) -> list[str]:
    """What in the operator's trainer settings cannot run a multi-node round (one line each)."""
    wv = cfg.workVolume
    if not wv.persistent:
        return ["operator setting 'trainer.workVolume.persistent' is false: multi-node training needs one shared work "
                "directory (every node writes its checkpoint shards there); use a ReadWriteMany claim"]
    if "ReadWriteMany" not in wv.accessModes:
        return [f"operator setting 'trainer.workVolume.accessModes' is {list(wv.accessModes)}: multi-node training mounts "
                "the work volume on every node; add ReadWriteMany (and a storageClassName that supports it)"]
    return []


def missing_crd_message(round_field: str = "spec.training.nnodes") -> str:
    return (f"field '{round_field}': multi-node training runs as a KubeRay RayJob, but this cluster does not serve "
            f"{API_VERSION} {PLURAL} (CRD {CRD_NAME} missing); install the KubeRay operator or set nnodes to 1")


def _ray_pod(round_obj: dict[str, Any], spec: LoopRoundSpec, request: dict[str, Any], cfg: TrainerJobSettings,
             *, head: bool) -> dict[str, Any]:
    # No command: KubeRay runs `ray start` in the first container. The trainer's metrics port only on the
    # head, where the entrypoint (and so the trainer's /metrics) runs.
    pod_spec = jobs_.trainer_pod_spec(round_obj, spec, request, cfg, command=None, metrics_port=head, shm_always=True)
    return {"metadata": jobs_.pod_metadata(round_obj["metadata"]["name"], cfg), "spec": pod_spec}


def _submitter_pod(round_obj: dict[str, Any], spec: LoopRoundSpec, cfg: TrainerJobSettings) -> dict[str, Any]:
    """KubeRay's default submitter pod, but with the trainer pods' security context (a namespace enforcing the
    `restricted` Pod Security Standard admits it) and placement; no GPUs, so none of the GPU tolerations."""
    container: dict[str, Any] = {
        "name": SUBMITTER_CONTAINER,
        "image": cfg.trainer_image(spec.resources.trainerImage),
        "imagePullPolicy": cfg.imagePullPolicy,
        "resources": {k: dict(v) for k, v in SUBMITTER_RESOURCES.items()},
        **({"securityContext": dict(cfg.securityContext)} if cfg.securityContext else {}),
    }
    node_selector = {**cfg.nodeSelector, **spec.resources.nodeSelector}
    pod_spec = {"restartPolicy": "Never", "containers": [container],
                **jobs_.pod_scheduling(spec, cfg, list(spec.resources.tolerations), node_selector)}
    return {"metadata": jobs_.pod_metadata(round_obj["metadata"]["name"], cfg), "spec": pod_spec}


def ray_job(round_obj: dict[str, Any], spec: LoopRoundSpec, request: dict[str, Any], cfg: TrainerJobSettings) -> dict[str, Any]:
    """The ``ray.io/v1`` RayJob of a multi-node round (see the module docstring)."""
    meta = round_obj["metadata"]
    workers = spec.training.nnodes - 1
    # Ray's GPU count per node, explicit: KubeRay only infers it from resource names ending in "gpu".
    start = {"num-gpus": str(spec.training.gpus)}
    rj_spec: dict[str, Any] = {
        "entrypoint": shlex.join(jobs_.trainer_command(cfg)),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cfg.rayJobTtlSecondsAfterFinished,
        # A retry starts a new Ray cluster; the trainer resumes from the checkpoints on the shared volume.
        "backoffLimit": cfg.backoffLimit,
        "submitterPodTemplate": _submitter_pod(round_obj, spec, cfg),
        "rayClusterSpec": {
            "headGroupSpec": {"rayStartParams": dict(start), "template": _ray_pod(round_obj, spec, request, cfg, head=True)},
            "workerGroupSpecs": [{
                "groupName": WORKER_GROUP,
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": workers,
                "rayStartParams": dict(start),
                "template": _ray_pod(round_obj, spec, request, cfg, head=False),
            }],
        },
    }
    if cfg.activeDeadlineSeconds:
        rj_spec["activeDeadlineSeconds"] = cfg.activeDeadlineSeconds
    if jobs_.queue_name(spec, cfg):
        # Created suspended, as Kueue expects: it unsuspends the RayJob once its Workload is admitted.
        rj_spec["suspend"] = True
    name = rayjob_name(meta["name"], meta["uid"])
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": jobs_.workload_metadata(round_obj, spec, request, cfg, name),
            "spec": rj_spec}


def rayjob_outcome(rj: dict[str, Any]) -> tuple[str, str, str]:
    """("Queued" | "Running" | "Succeeded" | "Failed", reason, message) from a RayJob's spec and status.

    KubeRay's ``jobDeploymentStatus`` is the lifecycle (Initializing → Running → Complete | Failed;
    Suspending/Suspended while Kueue has not admitted it or preempted it; Retrying after a failed
    attempt with ``backoffLimit`` left); ``jobStatus`` is the Ray job's own (PENDING, RUNNING, SUCCEEDED,
    FAILED, STOPPED). Complete means the Ray job ended: it succeeded only if ``jobStatus`` says so."""
    st = rj.get("status") or {}
    dep = st.get("jobDeploymentStatus") or ""
    job = st.get("jobStatus") or ""
    reason, message = st.get("reason") or "", st.get("message") or ""
    if dep == "Complete":
        if job == "SUCCEEDED":
            return "Succeeded", "Completed", message
        return "Failed", reason or f"RayJob{(job or 'Unknown').capitalize()}", message or f"Ray job ended {job or 'without a status'}"
    if dep in ("Failed", "ValidationFailed"):
        return "Failed", reason or dep, message or f"KubeRay reports {dep}" + (f", Ray job {job}" if job else "")
    if dep in ("Suspended", "Suspending") or (not dep and (rj.get("spec") or {}).get("suspend")):
        return "Queued", dep or "Suspended", message
    return "Running", dep or "New", message


def rayjob_progress(rj: dict[str, Any]) -> str:
    st = rj.get("status") or {}
    dep = st.get("jobDeploymentStatus") or "New"
    job = st.get("jobStatus") or "-"
    if dep == "Initializing":
        return "train: starting the Ray cluster"
    if dep == "Retrying":
        return f"train: retrying (ray job {job}, {st.get('failed', 0)} failed attempts)"
    return f"train: ray job {job} ({dep})"
