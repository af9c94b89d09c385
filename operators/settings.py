"""Operator settings: what the chart renders into ``operator.yaml`` (and what the CLI flags override)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from looptool.shared.config import ConfigError, format_validation_error
from looptool.shared.loop.manifest import QUANTITY_PATTERN, check_label_value, check_quantity


# The Kubernetes `restricted` Pod Security Standard, satisfied by default (the image runs as uid 1000).
# fsGroup makes the work volume writable; OnRootMismatch skips a recursive chown of large checkpoints.
def _restricted_pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _restricted_container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


AccessMode = Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]
DEFAULT_ACCESS_MODES: tuple[AccessMode, ...] = ("ReadWriteOnce",)


class WorkVolumeSettings(BaseModel):
    """The trainer's work directory (checkpoints, model cache): a PersistentVolumeClaim per round, owned by
    the LoopRound, so a retried or preempted Job resumes from its last checkpoint."""

    model_config = ConfigDict(extra="forbid")
    persistent: bool = Field(
        True, description="false = an emptyDir (CPU demo clusters without a default StorageClass; a retry starts over)"
    )
    storageClassName: str = Field("", description="StorageClass of the claim (empty = the cluster default)")
    size: str = Field("200Gi", min_length=1, pattern=QUANTITY_PATTERN, description="requested size (spec.resources.workVolumeSize overrides)")
    accessModes: list[AccessMode] = Field(
        default_factory=lambda: list(DEFAULT_ACCESS_MODES), min_length=1
    )
    _size = field_validator("size", mode="before")(check_quantity)


class TrainerJobSettings(BaseModel):
    """How training Jobs are built (cluster-wide defaults; a LoopRound's spec.resources overrides some)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field("ghcr.io/looptool/looptool:0.1.0", description="trainer image (the default; spec.resources.trainerImage may pick one of allowedImages)")
    # The Job holds the S3 credentials: letting a LoopRound name any image would hand them to code of
    # its author's choice. So a round may only pick `image` or one of these exact references.
    allowedImages: list[str] = Field(default_factory=list, description="other trainer images a LoopRound's spec.resources.trainerImage may name")
    imagePullPolicy: str = "IfNotPresent"
    imagePullSecrets: list[str] = Field(default_factory=list)
    command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "looptool.services.trainer.job"],
        description="the request file path is appended as `--request <path>`",
    )
    serviceAccountName: str = ""
    gpuResource: str = Field("nvidia.com/gpu", description="extended resource name requested per GPU")
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="merged under spec.resources.nodeSelector")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="added to spec.resources.tolerations when the Job requests GPUs",
    )
    affinity: dict[str, Any] = Field(default_factory=dict)
    priorityClassName: str = ""
    cpu: str = Field("4", description="CPU request (spec.resources.cpu overrides)")
    memory: str = Field("32Gi", description="memory request and limit (spec.resources.memory overrides)")
    shmSize: str = Field("8Gi", description="/dev/shm size (NCCL, dataloaders); empty = no shm volume")
    metricsPort: int = Field(9105, ge=0, le=65535, description="container port 'metrics' (the trainer's /metrics; scraped by the chart's PodMonitor); 0 = none")
    backoffLimit: int = Field(1, ge=0)
    activeDeadlineSeconds: int = Field(0, ge=0, description="0 = no deadline")
    configMap: str = Field("", description="ConfigMap with config.yaml (LoopTool config) mounted at /etc/looptool/config")
    s3Endpoint: str = Field("", description="S3 endpoint URL, exposed as LOOPTOOL_S3_ENDPOINT")
    s3Secret: str = Field("", description="Secret with S3 credentials (keys below), exposed as LOOPTOOL_S3_* env")
    s3AccessKeyKey: str = "accessKey"
    s3SecretKeyKey: str = "secretKey"
    env: list[dict[str, Any]] = Field(default_factory=list, description="extra container env entries")
    podLabels: dict[str, str] = Field(default_factory=dict)
    podAnnotations: dict[str, str] = Field(default_factory=dict)
    jobLabels: dict[str, str] = Field(default_factory=dict, description="extra labels on the Job object")
    jobAnnotations: dict[str, str] = Field(default_factory=dict, description="extra annotations on the Job object")
    queueName: str = Field(
        "", description="Kueue LocalQueue for every trainer Job (label kueue.x-k8s.io/queue-name); spec.training.queueName overrides"
    )
    _queue_name = field_validator("queueName", mode="before")(check_label_value)
    podSecurityContext: dict[str, Any] = Field(
        default_factory=_restricted_pod_security_context, description="pod securityContext (default: Pod Security `restricted`)"
    )
    securityContext: dict[str, Any] = Field(
        default_factory=_restricted_container_security_context, description="trainer container securityContext"
    )
    terminationGracePeriodSeconds: int = Field(
        600, ge=0, description="time between SIGTERM and SIGKILL: the trainer stops at a step boundary and saves a checkpoint"
    )
    workVolume: WorkVolumeSettings = Field(default_factory=WorkVolumeSettings)
    rayJobTtlSecondsAfterFinished: int = Field(
        600, ge=0,
        description="multi-node rounds (KubeRay RayJob): seconds the finished Ray cluster is kept (pods, logs) before KubeRay deletes it",
    )

    def image_problem(self, requested: str) -> str:
        """Empty when a round may run ``requested`` (empty = the default image), else one line naming the field."""
        if not requested or requested == self.image or requested in self.allowedImages:
            return ""
        allowed = ", ".join([self.image, *self.allowedImages])
        return (
            f"field 'spec.resources.trainerImage': {requested!r} is not an allowed trainer image; "
            f"use one of: {allowed} (or leave it empty), or ask the cluster admin to add it to training.allowedImages"
        )

    def trainer_image(self, requested: str) -> str:
        """The image a round's Job runs; never one outside the allow-list (checked again here, not only in validation)."""
        problem = self.image_problem(requested)
        if problem:
            raise ValueError(problem)
        return requested or self.image


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespaces: list[str] = Field(default_factory=list, description="namespaces to watch; empty = all (needs a ClusterRole)")
    apiUrl: str = Field("", description="Kubernetes API URL (tests/dev); empty = in-cluster or kubeconfig")
    metricsPort: int = Field(9100, ge=0, le=65535)
    pollSeconds: float = Field(15.0, gt=0, description="re-check a running Job at least this often (Job events wake it sooner)")
    progressSeconds: float = Field(5.0, gt=0, description="how often data-stage progress is written to status")
    maxConcurrentStages: int = Field(4, ge=1, description="data stages running at once across all rounds")
    stageRetries: int = Field(2, ge=0, description="retries of a data stage that failed before the round fails")
    retryBackoffSeconds: float = Field(10.0, ge=0)
    apiWorkers: int = Field(16, ge=1, description="threads for Kubernetes API calls")
    finalizer: str = "looptool.io/finalizer"
    loopPlans: bool = Field(True, description="also handle LoopPlan resources (N chained rounds)")
    trainer: TrainerJobSettings = Field(default_factory=TrainerJobSettings)


def load_settings(path: str | None = None, overrides: dict[str, Any] | None = None) -> OperatorSettings:
    data: dict[str, Any] = {}
    source = "operator settings"
    if path:
        source = path
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: operator settings file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: malformed YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    try:
        return OperatorSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
