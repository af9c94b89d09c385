"""The training Job (with the ConfigMap holding its request and the claim holding its work directory)
for a LoopRound.

Names are deterministic — derived from the round's name and uid — so after an operator restart the
reconciler finds the Job it already created instead of creating a second one. All three objects carry
an ownerReference to the LoopRound: deleting the round garbage-collects them. The work-directory claim
outlives the Job's pods (and a re-created Job), so a retried or preempted trainer resumes from the
checkpoints it left there.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from looptool.operators.kube import owner_reference
from looptool.operators.settings import TrainerJobSettings
from looptool.shared.loop.manifest import LoopRoundSpec

LABEL_ROUND = "looptool.io/round"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "looptool-operator"
ANN_RUN_ID = "looptool.io/run-id"
ANN_OUTPUT = "looptool.io/output-prefix"
REQUEST_DIR = "/etc/looptool/request"
REQUEST_FILE = "request.json"
CONTAINER = "trainer"
# The trainer's work directory (checkpoints, model cache), passed as ``--workdir``.
WORKDIR = "/var/lib/looptool/work"
WORK_VOLUME = "work"
# Kueue admits a Job labelled with a LocalQueue; until then the Job stays suspended.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Exit codes of ``looptool.services.trainer.job``: 2 = a request it can never run (fail the Job at
# once); 3 = cancelled by SIGTERM (pod deleted/evicted: retry without counting, it resumes from the
# last checkpoint); 1 = training failed (counts towards backoffLimit; a retry resumes).
EXIT_BAD_REQUEST = 2
EXIT_CANCELLED = 3


def _owned_name(round_name: str, uid: str, infix: str) -> str:
    digest = hashlib.sha256(f"{round_name}/{uid}".encode()).hexdigest()[:6]
    head = round_name[: 63 - len(infix) - 2 - len(digest)].rstrip("-")
    return f"{head}-{infix}-{digest}"


def job_name(round_name: str, uid: str) -> str:
    """``<round>-train-<hash>``, at most 63 characters (a label value and a DNS label)."""
    return _owned_name(round_name, uid, "train")


def work_claim_name(round_name: str, uid: str) -> str:
    """``<round>-work-<hash>``: the PersistentVolumeClaim of the round's trainer work directory."""
    return _owned_name(round_name, uid, "work")


def queue_name(spec: LoopRoundSpec, cfg: TrainerJobSettings) -> str:
    """The Kueue LocalQueue of the round's training Job ("" = none)."""
    return spec.training.queueName or cfg.queueName


def selector(round_name: str) -> dict[str, str]:
    return {LABEL_ROUND: round_name, LABEL_MANAGED_BY: MANAGED_BY}


def _labels(round_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "looptool",
        LABEL_COMPONENT: "trainer",
        **selector(round_name),
        **(extra or {}),
    }


def request_configmap(round_obj: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    meta = round_obj["metadata"]
    name = job_name(meta["name"], meta["uid"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": _labels(meta["name"]),
            "ownerReferences": [owner_reference(round_obj)],
        },
        "data": {REQUEST_FILE: json.dumps(request, indent=1, sort_keys=True)},
    }


def work_claim(round_obj: dict[str, Any], spec: LoopRoundSpec, cfg: TrainerJobSettings) -> dict[str, Any] | None:
    """The PersistentVolumeClaim of the trainer's work directory, or None when it is an emptyDir."""
    wv = cfg.workVolume
    if not wv.persistent:
        return None
    meta = round_obj["metadata"]
    claim: dict[str, Any] = {
        "accessModes": list(wv.accessModes),
        "resources": {"requests": {"storage": spec.resources.workVolumeSize or wv.size}},
    }
    if wv.storageClassName:
        claim["storageClassName"] = wv.storageClassName
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": work_claim_name(meta["name"], meta["uid"]),
            "namespace": meta["namespace"],
            "labels": _labels(meta["name"]),
            "ownerReferences": [owner_reference(round_obj)],
        },
        "spec": claim,
    }


def trainer_command(cfg: TrainerJobSettings) -> list[str]:
    """``python -m looptool.services.trainer.job --request <file> --workdir <dir> ...``: the Job's container
    command, and (as one shell line) a RayJob's ``entrypoint``."""
    command = [*cfg.command, "--request", f"{REQUEST_DIR}/{REQUEST_FILE}", "--workdir", WORKDIR]
    if cfg.configMap:
        command += ["--config", "/etc/looptool/config/config.yaml"]
    if cfg.metricsPort:
        command += ["--metrics-port", str(cfg.metricsPort)]
    return command


def trainer_pod_spec(
    round_obj: dict[str, Any],
    spec: LoopRoundSpec,
    request: dict[str, Any],
    cfg: TrainerJobSettings,
    *,
    command: list[str] | None,
    metrics_port: bool = True,
    shm_always: bool = False,
) -> dict[str, Any]:
    """The trainer pod: image, GPUs, env, request/work/config/shm volumes, scheduling and security context.

    The single-node Job runs ``command`` in it; the Ray head and workers of a RayJob get the same pod
    without a command (KubeRay starts ``ray start`` there). ``shm_always``: a /dev/shm Memory emptyDir
    even when ``shmSize`` is empty (NCCL and Ray's object store need it on every Ray node)."""
    meta = round_obj["metadata"]
    name = job_name(meta["name"], meta["uid"])
    res = spec.resources
    gpus = spec.training.gpus

    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    cpu = res.cpu or cfg.cpu
    memory = res.memory or cfg.memory
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    if gpus > 0:  # extended resources: request == limit
        requests[cfg.gpuResource] = limits[cfg.gpuResource] = str(gpus)

    env: list[dict[str, Any]] = [
        {"name": "LOOPTOOL_ROUND", "value": meta["name"]},
        {"name": "LOOPTOOL_RUN_ID", "value": str(request.get("run_id", ""))},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if cfg.s3Endpoint:
        env.append({"name": "LOOPTOOL_S3_ENDPOINT", "value": cfg.s3Endpoint})
    if cfg.s3Secret:
        env += [
            {"name": "LOOPTOOL_S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": cfg.s3Secret, "key": cfg.s3AccessKeyKey}}},
            {"name": "LOOPTOOL_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": cfg.s3Secret, "key": cfg.s3SecretKeyKey}}},
        ]
    volumes: list[dict[str, Any]] = [{"name": "request", "configMap": {"name": name}}]
    mounts: list[dict[str, Any]] = [{"name": "request", "mountPath": REQUEST_DIR, "readOnly": True}]
    if cfg.workVolume.persistent:
        volumes.append({"name": WORK_VOLUME, "persistentVolumeClaim": {"claimName": work_claim_name(meta["name"], meta["uid"])}})
    else:
        volumes.append({"name": WORK_VOLUME, "emptyDir": {}})
    mounts.append({"name": WORK_VOLUME, "mountPath": WORKDIR})
    if cfg.configMap:
        volumes.append({"name": "config", "configMap": {"name": cfg.configMap}})
        mounts.append({"name": "config", "mountPath": "/etc/looptool/config", "readOnly": True})
    if cfg.shmSize or shm_always:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", **({"sizeLimit": cfg.shmSize} if cfg.shmSize else {})}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    env += cfg.env

    tolerations = list(res.tolerations)
    if gpus > 0:
        tolerations += [t for t in cfg.tolerations if t not in tolerations]
    node_selector = {**cfg.nodeSelector, **res.nodeSelector}

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cfg.trainer_image(res.trainerImage),
        "imagePullPolicy": cfg.imagePullPolicy,
        **({"command": command} if command is not None else {}),
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **({"securityContext": dict(cfg.securityContext)} if cfg.securityContext else {}),
        **({"ports": [{"name": "metrics", "containerPort": cfg.metricsPort, "protocol": "TCP"}]} if cfg.metricsPort and metrics_port else {}),
    }
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": cfg.terminationGracePeriodSeconds,
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec.update(pod_scheduling(spec, cfg, tolerations, node_selector))
    return pod_spec


def pod_scheduling(
    spec: LoopRoundSpec, cfg: TrainerJobSettings, tolerations: list[dict[str, Any]] | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Pod-level fields every trainer pod shares: placement, identity, pull secrets, security context."""
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if cfg.affinity:
        out["affinity"] = cfg.affinity
    if cfg.serviceAccountName:
        out["serviceAccountName"] = cfg.serviceAccountName
    if cfg.priorityClassName:
        out["priorityClassName"] = cfg.priorityClassName
    if cfg.imagePullSecrets:
        out["imagePullSecrets"] = [{"name": s} for s in cfg.imagePullSecrets]
    if cfg.podSecurityContext:
        out["securityContext"] = dict(cfg.podSecurityContext)
    return out


def pod_metadata(round_name: str, cfg: TrainerJobSettings) -> dict[str, Any]:
    # The operator's own labels win: it finds its Jobs and pods by them.
    return {"labels": {**cfg.podLabels, **_labels(round_name)}, "annotations": dict(cfg.podAnnotations)}


def workload_metadata(
    round_obj: dict[str, Any], spec: LoopRoundSpec, request: dict[str, Any], cfg: TrainerJobSettings, name: str
) -> dict[str, Any]:
    """``metadata`` of the training workload (Job or RayJob): labels (with the Kueue queue), the run id
    and output prefix the operator reads back, and the owner reference to the LoopRound."""
    meta = round_obj["metadata"]
    labels = {**cfg.jobLabels, **_labels(meta["name"])}
    queue = queue_name(spec, cfg)
    if queue:
        labels[LABEL_KUEUE_QUEUE] = queue
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": labels,
        "annotations": {
            **cfg.jobAnnotations,
            ANN_RUN_ID: str(request.get("run_id", "")),
            ANN_OUTPUT: str(request.get("output_prefix", "")),
        },
        "ownerReferences": [owner_reference(round_obj)],
    }


def training_job(
    round_obj: dict[str, Any], spec: LoopRoundSpec, request: dict[str, Any], cfg: TrainerJobSettings
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs ``python -m looptool.services.trainer.job --request <file> --workdir <dir>``."""
    meta = round_obj["metadata"]
    name = job_name(meta["name"], meta["uid"])
    pod_spec = {"restartPolicy": "Never", **trainer_pod_spec(round_obj, spec, request, cfg, command=trainer_command(cfg))}
    job_spec: dict[str, Any] = {
        "backoffLimit": cfg.backoffLimit,
        # A bad request fails at once; a pod evicted/preempted (spot GPUs, drains) does not count.
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_REQUEST]}},
                {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_CANCELLED]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": pod_metadata(meta["name"], cfg), "spec": pod_spec},
    }
    if cfg.activeDeadlineSeconds:
        job_spec["activeDeadlineSeconds"] = cfg.activeDeadlineSeconds
    if queue_name(spec, cfg):
        # Created suspended, as Kueue expects: it unsuspends the Job once its Workload is admitted.
        job_spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": workload_metadata(round_obj, spec, request, cfg, name), "spec": job_spec}


def job_outcome(job: dict[str, Any]) -> tuple[str, str, str]:
    """("Queued" | "Running" | "Succeeded" | "Failed", reason, message) from a Job's spec and status.

    Queued: the Job is suspended (``spec.suspend``, or the job controller's ``Suspended`` condition
    while it tears pods down) — waiting for admission by Kueue, or preempted and waiting again."""
    status = job.get("status") or {}
    suspended: dict[str, Any] | None = None
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return "Succeeded", c.get("reason") or "Completed", c.get("message") or ""
        if c.get("type") == "Failed":
            return "Failed", c.get("reason") or "JobFailed", c.get("message") or ""
        if c.get("type") == "Suspended":
            suspended = c
    if status.get("succeeded") and not status.get("active") and not (job.get("spec") or {}).get("completions", 1) > status["succeeded"]:
        return "Succeeded", "Completed", ""
    if (job.get("spec") or {}).get("suspend") or suspended is not None:
        c = suspended or {}
        return "Queued", c.get("reason") or "JobSuspended", c.get("message") or ""
    return "Running", "", ""


# Waiting reasons of a container whose image cannot be had: the kubelet retries for ever, the Job
# stays active, so nothing fails unless the operator says so.
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def image_pull_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(waiting reason, one line naming the pod, image and kubelet message) of the first training pod
    stuck on its image, else None."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        images = {c.get("name"): c.get("image", "") for c in (pod.get("spec") or {}).get("containers") or []}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            w = (cs.get("state") or {}).get("waiting") or {}
            if w.get("reason") in IMAGE_PULL_REASONS:
                image = cs.get("image") or images.get(cs.get("name"), "?")
                return w["reason"], (f"pod {name} cannot pull trainer image {image!r}: {w['reason']}: {w.get('message', '')}".strip()
                                     + "; check training.image / spec.resources.trainerImage and imagePullSecrets")
    return None


def pod_failure_details(pods: list[dict[str, Any]]) -> str:
    """The most telling reason a training pod did not run: a waiting reason (ImagePullBackOff,
    Unschedulable) or the trainer's termination reason/exit code/message."""
    notes: list[str] = []
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        st = pod.get("status") or {}
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason"):
                notes.append(f"{name}: {c['reason']}: {c.get('message', '')}".strip())
        for cs in st.get("containerStatuses") or []:
            state = cs.get("state") or {}
            if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
                w = state["waiting"]
                notes.append(f"{name}: {w.get('reason')}: {w.get('message', '')}".strip())
            term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                msg = (term.get("message") or "").strip().splitlines()[-3:]
                notes.append(f"{name}: {term.get('reason', 'Error')} (exit {term.get('exitCode')}) {' | '.join(msg)}".strip())
    return "; ".join(notes[:3])
