"""The round state machine, shared by the local runner and the Kubernetes operator.

Pending → Synthesizing → Training → Probing → Verifying → Expanding → Evaluating → Succeeded,
or Failed (with a reason) from any running phase. Status follows Kubernetes conventions.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from looptool.shared.loop.function_split import FunctionSplit
from looptool.shared.records import DatasetRef, utcnow


class Phase(str, Enum):
    PENDING = "Pending"
    SYNTHESIZING = "Synthesizing"
    TRAINING = "Training"
    PROBING = "Probing"
    VERIFYING = "Verifying"
    EXPANDING = "Expanding"
    EVALUATING = "Evaluating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


ORDER = [
    Phase.PENDING,
    Phase.SYNTHESIZING,
    Phase.TRAINING,
    Phase.PROBING,
    Phase.VERIFYING,
    Phase.EXPANDING,
    Phase.EVALUATING,
    Phase.SUCCEEDED,
]
TERMINAL = {Phase.SUCCEEDED, Phase.FAILED}
# The stage (work unit) each running phase performs.
STAGE_OF = {
    Phase.SYNTHESIZING: "synthesize",
    Phase.TRAINING: "train",
    Phase.PROBING: "probe",
    Phase.VERIFYING: "judge",
    Phase.EXPANDING: "expand",
    Phase.EVALUATING: "evaluate",
}


def next_phase(phase: Phase) -> Phase:
    if phase in TERMINAL:
        return phase
    return ORDER[ORDER.index(phase) + 1]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""
    lastTransitionTime: str = Field(default_factory=utcnow)


class StageStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str = "Pending"  # Pending | Running | Done | Failed
    done: int = 0
    total: int = 0
    startedAt: str = ""
    finishedAt: str = ""
    outputs: dict[str, DatasetRef] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    checkpointUri: str = ""
    message: str = ""


class RoundStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: Phase = Phase.PENDING
    reason: str = ""
    message: str = ""
    observedGeneration: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    checkpointUri: str = ""
    datasetUri: str = ""  # the composed dataset the next round trains on
    accuracy: dict[str, float] = Field(default_factory=dict)
    functionSplit: FunctionSplit | None = None  # a BFCL toolset's train/test functions (synthesize)
    progress: str = ""  # printer column, e.g. "probe 120/200"

    def stage(self, name: str) -> StageStatus:
        return self.stages.setdefault(name, StageStatus())

    def set_condition(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        value = "Unknown" if status is None else ("True" if status else "False")
        for c in self.conditions:
            if c.type == type_:
                if c.status != value:
                    c.lastTransitionTime = utcnow()
                c.status, c.reason, c.message = value, reason, message
                return
        self.conditions.append(Condition(type=type_, status=value, reason=reason, message=message))

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def start_stage(status: RoundStatus, stage: str) -> StageStatus:
    st = status.stage(stage)
    if st.state != "Running":
        st.state, st.startedAt, st.message = "Running", utcnow(), ""
    status.set_condition("Ready", False, "InProgress", f"stage {stage} running")
    return st


def finish_stage(status: RoundStatus, stage: str) -> Phase:
    """Mark the current stage done and move to the next phase."""
    st = status.stage(stage)
    st.state, st.finishedAt = "Done", utcnow()
    status.phase = next_phase(status.phase)
    if status.phase == Phase.SUCCEEDED:
        status.set_condition("Ready", True, "Succeeded", "round finished")
        status.progress = "done"
    return status.phase


def fail(status: RoundStatus, reason: str, message: str) -> None:
    stage = STAGE_OF.get(status.phase)
    if stage:
        st = status.stage(stage)
        st.state, st.finishedAt, st.message = "Failed", utcnow(), message
    status.phase, status.reason, status.message = Phase.FAILED, reason, message
    status.set_condition("Ready", False, reason, message)


def begin(status: RoundStatus) -> Phase:
    if status.phase == Phase.PENDING:
        status.phase = Phase.SYNTHESIZING
    return status.phase
