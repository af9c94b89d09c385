"""Typed records that cross service boundaries.

One place for each concept: tools, calls, messages, dialogues, samples (with lineage),
judge verdicts, dataset references and round reports. Conversion to and from the
protobuf messages lives in ``looptool.shared.proto_convert``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from looptool.shared import jsoncodec


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, UTF-8 kept (exactly ``json.dumps(value,
    sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, written faster: shared/jsoncodec.py)."""
    return jsoncodec.dumps_text(value)


def text_key(text: str, length: int = 64) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8): the one way a content
    key (a sample, dialogue, dataset or run id) is hashed. Each key keeps the length it was first
    stored with, so ids in existing datasets stay valid."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def content_key(value: Any, length: int = 64, prefix: str = "") -> str:
    """``prefix`` + :func:`text_key` of ``canonical_json(value)``: a stable key of JSON-able content."""
    return prefix + hashlib.sha256(jsoncodec.dumps(value)).hexdigest()[:length]


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Tool(Record):
    """An OpenAI-format function: ``name``, ``description``, JSON Schema ``parameters``."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolCall(Record):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str = ""

    def key(self) -> str:
        """Order-independent identity of a call (name + canonical arguments)."""
        return self.name + canonical_json(self.arguments)


Role = Literal["system", "user", "assistant", "tool"]


class Message(Record):
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    name: str = ""
    tool_call_id: str = ""
    reasoning: str = ""


class Stage(str, Enum):
    IMPORT = "import"
    SYNTHESIZE = "synthesize"
    CONVERT = "convert"
    TRAIN = "train"
    PROBE = "probe"
    JUDGE = "judge"
    EXPAND = "expand"
    COMPOSE = "compose"
    EVALUATE = "evaluate"
    NOISE = "noise"


class LineageEvent(Record):
    round: int = 0
    stage: str
    action: str  # created | probed | relabelled | expanded | dropped | kept | corrupted
    reason: str = ""
    parent_id: str = ""
    at: str = ""  # optional wall-clock time; empty by default so content hashes stay reproducible


class Sample(Record):
    """Context messages + tools + reference calls: the unit of training, probing, judging, expansion."""

    id: str = ""
    context: list[Message]
    tools: list[Tool] = Field(default_factory=list)
    reference: list[ToolCall] = Field(default_factory=list)
    reference_text: str = ""
    lineage: list[LineageEvent] = Field(default_factory=list)
    meta: dict[str, str] = Field(default_factory=dict)
    source: str = ""

    def content_id(self) -> str:
        """Stable id derived from content (context, tool names, reference), not from lineage."""
        payload = {
            "context": [m.model_dump(exclude={"reasoning"}) for m in self.context],
            "tools": sorted(t.name for t in self.tools),
            "reference": [c.model_dump(exclude={"id"}) for c in self.reference],
        }
        return content_key(payload, 20, prefix="s-")

    def with_id(self) -> "Sample":
        if not self.id:
            self.id = self.content_id()
        return self

    def add_lineage(self, round: int, stage: Stage | str, action: str, reason: str = "", parent_id: str = "") -> None:
        stage_value = stage.value if isinstance(stage, Stage) else stage
        self.lineage.append(
            LineageEvent(round=round, stage=stage_value, action=action, reason=reason, parent_id=parent_id)
        )


class Dialog(Record):
    id: str = ""
    messages: list[Message]
    tools: list[Tool] = Field(default_factory=list)
    plan: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, str] = Field(default_factory=dict)


class Decision(str, Enum):
    LABEL_WRONG = "label_wrong"
    MODEL_WRONG = "model_wrong"
    BOTH_ACCEPTABLE = "both_acceptable"
    BOTH_WRONG = "both_wrong"  # the judge is sure neither side is right (paper: dropped)
    UNCLEAR = "unclear"  # the judge cannot tell (or its answer was unusable)


class Verdict(Record):
    sample_id: str
    decision: Decision
    reason: str = ""
    corrected: list[ToolCall] = Field(default_factory=list)
    # The paper's judge also returns an error analysis and the correct approach; EDDE's generator reads both.
    analysis: str = ""
    correct_approach: str = ""
    votes: int = 1
    total_votes: int = 1
    raw: str = ""


class DatasetRef(Record):
    uri: str
    content_hash: str = ""
    record_count: int = 0
    format: Literal["jsonl", "parquet"] = "jsonl"
    kind: str = "samples"

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, v: str) -> str:
        if not (v.startswith("file://") or v.startswith("s3://") or v.startswith("/")):
            raise ValueError(f"dataset uri {v!r} must start with file://, s3:// or be an absolute path")
        return v


class Progress(Record):
    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


class ErrorInfo(Record):
    code: str
    message: str
    field: str = ""
    item_id: str = ""


class StageResult(Record):
    outputs: list[DatasetRef] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    checkpoint_uri: str = ""


def result_to_stage(result: dict[str, Any], cached: bool | None = None) -> StageResult:
    """A training run's ``result.json`` (``services/trainer/runner.py``) as a StageResult: numeric
    metrics (booleans are not numbers here), the reward curve as ``reward_step_<i>``, integer counts,
    and ``metrics["cached"]`` (1.0 when the run was reused) when ``cached`` is given. The trainer
    service and the operator both read results through this."""
    metrics = {k: float(v) for k, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for i, r in enumerate(result.get("reward_curve") or [], start=1):
        if isinstance(r, (int, float)):
            metrics[f"reward_step_{i}"] = float(r)
    if cached is not None:
        metrics["cached"] = 1.0 if cached else 0.0
    counts = {k: int(v) for k, v in (result.get("counts") or {}).items() if isinstance(v, (int, float))}
    return StageResult(checkpoint_uri=str(result.get("checkpoint_uri") or ""), metrics=metrics, counts=counts)


class StageReport(Record):
    stage: str
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    outputs: list[DatasetRef] = Field(default_factory=list)


class RoundReport(Record):
    """What one round did and measured; the runner writes one per round."""

    round: int
    name: str = ""
    phase: str = "Pending"
    reason: str = ""
    stages: list[StageReport] = Field(default_factory=list)
    accuracy: dict[str, float] = Field(default_factory=dict)  # category -> accuracy
    reward_curve: list[float] = Field(default_factory=list)
    checkpoint_uri: str = ""
    dataset: DatasetRef | None = None
    noise_recovery: dict[str, float] = Field(default_factory=dict)  # this round's JGLV vs noise injected this round
    loop_noise: dict[str, float] = Field(default_factory=dict)  # all injected noise so far, after this round


class ProbeOutcome(str, Enum):
    MASTERED = "mastered"
    BORDERLINE = "borderline"
    FAILED = "failed"


class ProbeResult(Record):
    """Greedy capability probing (GCP) of one sample."""

    sample: Sample
    prediction: str  # greedy output text
    predicted_calls: list[ToolCall] = Field(default_factory=list)
    parse_error: str = ""
    correct: bool = False
    score: float = 0.0
    reason: str = ""  # why the greedy answer is wrong (from the reward check)
    perplexity: float = 1.0
    sampled_correct: int = 0  # of k sampled attempts
    sampled_total: int = 0
    outcome: ProbeOutcome = ProbeOutcome.FAILED


class JudgedSample(Record):
    """A failed probe result with the judge's verdict (JGLV); input to expansion and composition."""

    probe: ProbeResult
    verdict: Verdict
