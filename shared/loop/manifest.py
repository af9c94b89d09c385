"""The ``LoopRound`` manifest: the YAML a user ``kubectl apply``s, also what ``looptool run`` reads.

``apiVersion: looptool.io/v1alpha1``, ``kind: LoopRound``, ``metadata``, ``spec``. The CRD's OpenAPI
schema is generated from these models (``crd_schema()``), so the operator, the local runner and the
chart validate the same thing. Field names are camelCase, as Kubernetes users expect.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from looptool.shared.config import LimitsSettings
from looptool.shared.errors import InputError
from looptool.shared.limits import read_text_bounded

API_VERSION: Final = "looptool.io/v1alpha1"
GROUP = "looptool.io"
VERSION = "v1alpha1"
KIND: Final = "LoopRound"
PLURAL = "looprounds"
# A Kubernetes label value (what `kueue.x-k8s.io/queue-name` must be): at most 63 characters.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A storage size (Kubernetes quantity), or empty.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?)?$"


def check_label_value(value: object) -> object:
    """Reject a string that cannot be a label value, saying what would be valid (non-strings pass on
    to the type check)."""
    if isinstance(value, str) and (len(value) > 63 or not re.fullmatch(LABEL_VALUE_PATTERN, value)):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes label value; name a Kueue LocalQueue of the round's namespace: "
            "at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return value


def check_quantity(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a storage size; use a Kubernetes quantity such as 200Gi or 1Ti")
    return value


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelRef(Spec):
    uri: str = Field("", description="Model directory URI (file://, s3://) or local path; empty with builtin set")
    builtin: Literal["", "tiny"] = Field("", description="'tiny': build a small model from scratch (CPU demo)")
    tinyHiddenSize: int = Field(128, ge=16)
    tinyLayers: int = Field(4, ge=1)
    tinyVocabSize: int = Field(2048, ge=300)

    @model_validator(mode="after")
    def _one(self) -> "ModelRef":
        if not self.uri and not self.builtin:
            raise ValueError("set baseModel.uri (a model directory) or baseModel.builtin ('tiny')")
        return self


class BfclToolsetSource(Spec):
    category: str = Field("simple_python", description="BFCL category whose function docs form the toolset")
    limit: int = Field(0, ge=0, description="use at most this many functions (0 = all)")
    names: list[str] = Field(default_factory=list, description="only these function names")
    offset: int = Field(0, ge=0)


class ToolsetRef(Spec):
    uri: str = Field("", description="a committed toolset dataset")
    file: str = Field("", description="a JSON file of OpenAI function/tool definitions")
    bfcl: BfclToolsetSource | None = None

    @model_validator(mode="after")
    def _one(self) -> "ToolsetRef":
        if sum(bool(x) for x in (self.uri, self.file, self.bfcl)) != 1:
            raise ValueError("set exactly one of toolset.uri, toolset.file or toolset.bfcl")
        return self


class DatasetRefs(Spec):
    seed: str = Field("", description="extra seed samples dataset URI added to this round's training data")
    heldout: str = Field("", description="held-out samples dataset URI (default: split from synthesis)")


# The assistant turns a training sample can be made from; the reference trains on tool-call turns.
SampleKind = Literal["call", "parallel", "clarification", "no_tool", "summary", "text"]
DEFAULT_SAMPLE_KINDS: tuple[SampleKind, ...] = ("call", "parallel", "clarification", "no_tool")


class SynthesisSpec(Spec):
    numDialogues: int = Field(200, ge=0)
    concurrency: int = Field(4, ge=1)
    seed: int = 0
    agents: Literal["programmatic", "llm"] = Field(
        "programmatic", description="llm: Planner/User/Assistant/Tool are LLM agents; programmatic: schema-driven agents"
    )
    heldoutFraction: float = Field(0.2, ge=0, lt=1)
    labelNoise: float = Field(0.0, ge=0, le=1, description="fraction of training labels corrupted on purpose (JGLV demo)")
    toolsPerSample: int = Field(3, ge=1, description="tools shown per sample (target + distractors)")
    maxNeeds: int = Field(
        2, ge=1, le=8, description="most user requests per dialogue (1 = no follow-up requests, so contexts stay short)"
    )
    mix: dict[str, float] = Field(
        default_factory=dict,
        description="weights of planned need kinds: single, parallel, sequential, clarification, no_tool (empty = synthesizer default)",
    )
    sampleKinds: list[SampleKind] = Field(
        default_factory=lambda: list(DEFAULT_SAMPLE_KINDS),
        description="assistant turns that become training samples (the reference uses tool-call turns)",
    )


class VerlSpec(Spec):
    """verl (backend: verl) batch/LR/length settings. Defaults: the paper's 8B recipe on 8 GPUs.
    clipLow/clipHigh, klCoef, temperature, seed, gpus and nnodes come from ``training`` itself."""

    trainBatchSize: int = Field(128, ge=1, description="prompts per step (data.train_batch_size)")
    rolloutN: int = Field(16, ge=2, description="rollouts per prompt (actor_rollout_ref.rollout.n)")
    learningRate: float = Field(1e-6, gt=0)
    maxPromptLength: int = Field(4096, ge=16)
    maxResponseLength: int = Field(1024, ge=8)
    totalTrainingSteps: int = Field(0, ge=0, description="most GRPO steps (trainer.total_training_steps); 0 = training.epochs decide")
    ppoMiniBatchSize: int = Field(32, ge=1, description="prompts per actor update (actor.ppo_mini_batch_size)")
    ppoMicroBatchSizePerGpu: int = Field(4, ge=1)
    logProbMicroBatchSizePerGpu: int = Field(8, ge=1)
    tensorParallelSize: int = Field(2, ge=1, description="vLLM rollout tensor parallel size")
    gpuMemoryUtilization: float = Field(0.6, gt=0, le=1)
    saveFreq: int = Field(20, ge=1, description="verl checkpoint every N steps (the last step always saves)")
    overrides: list[str] = Field(default_factory=list, description="extra Hydra overrides, e.g. 'trainer.logger=[console,wandb]'")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        # strict specs would only say "unknown field"; say where the setting went
        if isinstance(data, dict) and "totalEpochs" in data:
            raise ValueError("totalEpochs was removed: set training.epochs instead (GRPO passes over the round's data, both backends)")
        return data


class TrainingSpec(Spec):
    backend: Literal["cpu", "verl"] = "cpu"
    sftWarmStart: bool = Field(True, description="supervised warm start on reference calls before GRPO")
    sftEpochs: float = Field(3.0, ge=0)
    sftLearningRate: float = Field(3e-3, gt=0)
    grpoSteps: int | None = Field(
        None, ge=0, description="CPU GRPO steps; unset = `epochs` passes over the round's data (ceil(rows / promptsPerStep) steps each); 0 = SFT only"
    )
    groupSize: int = Field(4, ge=2, description="rollouts per prompt (GRPO group)")
    promptsPerStep: int = Field(4, ge=1)
    learningRate: float = Field(1e-4, gt=0)
    klCoef: float = Field(0.0, ge=0)
    clipLow: float = Field(0.2, ge=0)
    clipHigh: float = Field(0.28, ge=0)
    temperature: float = Field(1.0, gt=0)
    maxPromptTokens: int = Field(1024, ge=16)
    maxResponseTokens: int = Field(96, ge=8)
    epochs: int = Field(
        2, ge=1, description="GRPO passes over the round's data (paper: 2 per iteration); verl trainer.total_epochs, CPU steps unless grpoSteps is set"
    )
    seed: int = 0
    gpus: int = Field(0, ge=0, description="GPUs per training Job (verl)")
    queueName: str = Field(
        "", max_length=63, pattern=LABEL_VALUE_PATTERN,
        description="Kueue LocalQueue of the training Job (label kueue.x-k8s.io/queue-name; empty = the operator's default)",
    )
    nnodes: int = Field(1, ge=1)
    # --- CPU trainer details (trainer service, issue 5); additive, defaults keep the old behaviour ---
    sftBatchSize: int = Field(16, ge=1, description="SFT sequences per optimizer step")
    microBatchSize: int = Field(
        0, ge=0, description="sequences per forward/backward (gradient accumulation); 0 = the whole batch at once"
    )
    ppoEpochs: int = Field(1, ge=1, description="policy updates per rollout batch (CPU GRPO)")
    ppoMiniBatches: int = Field(1, ge=1, description="mini-batches (optimizer steps) per rollout batch and epoch")
    lrSchedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmupRatio: float = Field(0.05, ge=0, lt=1, description="share of optimizer steps spent warming the LR up")
    weightDecay: float = Field(0.0, ge=0)
    maxGradNorm: float = Field(1.0, gt=0)
    checkpointEvery: int = Field(10, ge=0, description="save a resumable checkpoint every N steps (GRPO steps; SFT optimizer steps); 0 = at phase ends only")
    rewardPartialCredit: bool = Field(False, description="reward partial credit for well-formed wrong calls (shared reward)")
    # baseModel.tiny* (when baseModel.builtin is 'tiny') override these; same defaults
    tinyHiddenSize: int = Field(ModelRef.model_fields["tinyHiddenSize"].default, ge=16, description="builtin:tiny base model: hidden size")
    tinyLayers: int = Field(ModelRef.model_fields["tinyLayers"].default, ge=1, description="builtin:tiny base model: layers")
    tinyVocabSize: int = Field(
        ModelRef.model_fields["tinyVocabSize"].default, ge=300, description="builtin:tiny base model: BPE vocabulary size"
    )
    verl: VerlSpec = Field(default_factory=VerlSpec, description="verl backend settings (GPU)")

    _queue_name = field_validator("queueName", mode="before")(check_label_value)


class PerplexityThreshold(Spec):
    """Where "high perplexity" starts. An absolute value suits one model; a percentile of the round's
    perplexities (of correct greedy answers) adapts to the model's size and the data's difficulty."""

    absolute: float | None = Field(None, ge=1, description="a fixed perplexity (exp of the mean negative token log-probability)")
    percentile: float | None = Field(
        None, gt=0, lt=100, description="the round's percentile of correct greedy answers' perplexities (composition computes it)"
    )

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            raise ValueError(f"write {{absolute: {data}}} (or {{percentile: 90}}) instead of a bare number")
        return data

    @model_validator(mode="after")
    def _one(self) -> "PerplexityThreshold":
        if self.absolute is not None and self.percentile is not None:
            raise ValueError("set one of absolute or percentile, not both")
        if self.absolute is None and self.percentile is None:
            self.absolute = 1.5  # the historical default
        return self

    def fixed(self) -> float:
        """The threshold the probe applies per sample: the absolute one, or +inf in percentile mode
        (every correct greedy answer is ``mastered`` there; composition applies the percentile)."""
        return self.absolute if self.absolute is not None else float("inf")


class ProbeSpec(Spec):
    k: int = Field(0, ge=0, description="extra sampled attempts per sample (borderline detection)")
    temperature: float = Field(0.7, ge=0)
    maxTokens: int = Field(96, ge=8)
    highPerplexity: PerplexityThreshold = Field(
        default_factory=PerplexityThreshold,
        description="correct greedy answers above this perplexity are kept as high-perplexity (correct but unsure): "
        "{absolute: 1.5} or {percentile: 90} (the round's least confident 10% of correct answers; scales with the model)",
    )


class JudgeSpec(Spec):
    enabled: bool = Field(True, description="false: no JGLV (ablation): the Verifying phase writes no verdicts, labels stay as they are")
    # Default: llm when the manifest names a judge model, else grounding (llm needs a judge other than the
    # policy, which only the user can name). No CRD default, so the API server does not fill one in first.
    backend: Literal["llm", "grounding"] = Field(
        default_factory=lambda: "grounding",
        description="llm: a judge model (judge.model / judge.models); grounding: rule-based check of values against the "
        "context. Default: llm when judge.model or judge.models is set, else grounding",
    )
    votes: int = Field(1, ge=1, description="self-consistency: judgements sampled from one judge model, majority wins (1 = greedy)")
    unclearPolicy: Literal["drop", "keep"] = Field(
        "keep", description="verdict 'unclear' (the judge cannot tell; not 'both_wrong'): keep the sample with its label, or drop it"
    )
    model: str = Field(
        "", description="judge model URI/name; backend llm needs one other than the policy (paper: a stronger model) unless allowSelfJudge"
    )
    models: list[str] = Field(
        default_factory=list,
        description="a panel of judge models instead of judge.model: each judges greedily, a strict majority decides "
        "(the reference needs 2 of 3); no majority = unclear",
    )
    allowSelfJudge: bool = Field(
        False, description="backend llm without judge.model: the policy's own model (or the judge service's) judges; off by default"
    )
    candidates: int = Field(
        0, ge=0, le=32,
        description="sampled answers drawn from the probed model for a failed sample whose greedy answer leaves the "
        "verdict unclear; the first one the judge accepts as the fix relabels the sample (0 = greedy answer only)",
    )
    candidateTemperature: float = Field(1.0, gt=0, le=2, description="sampling temperature of those candidates")
    candidateMaxTokens: int = Field(96, ge=8, description="most new tokens per candidate (like probe.maxTokens)")

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backend" not in data and (data.get("model") or data.get("models")):
            return {**data, "backend": "llm"}  # naming a judge model means judging with it
        return data


class ExpandSpec(Spec):
    factor: int = Field(4, ge=0)
    filterMastered: bool = False
    generator: Literal["programmatic", "llm"] = "programmatic"
    seed: int = 0
    # Structure switches (services/expander/structure.py). Off by default: the paper's EDDE keeps the
    # failure's structure; multi-turn context is kept by default (flattening loses what the seed tested).
    changeCalls: bool = Field(
        False, description="expansions may change the call count and order within the seed's toolset "
        "(drop a call, add a call to one of its tools, reorder parallel calls); false keeps the seed's calls")
    siblingTools: bool = Field(
        False, description="expansions may swap a call's tool for a sibling in the seed's toolset (same required-"
        "parameter types, or similar names); false keeps the seed's functions")
    keepContext: bool = Field(
        True, description="a seed with earlier turns keeps them verbatim (up to its last user turn, which the new "
        "request replaces); false writes single-turn samples (system messages + the new request)")
    rewriteContext: bool = Field(
        False, description="with keepContext: the seed's old argument values (strings) in the kept turns become the "
        "new values, so the history mentions the same entities as the new request")


class ComposeSpec(Spec):
    """The next round's data (paper, Eq. 5): model-wrong + label-fixed + EDDE + high-perplexity + fresh seed."""

    dropMastered: bool = Field(True, description="drop samples mastered at high confidence from the next round")
    # 0 = the paper: Eq. 5's "fresh seed" term is the next round's own synthesis (added to its training
    # set); > 0 also carries this round's fresh samples the rule did not keep (mastered ones) as seed data.
    freshSeedFraction: float = Field(
        0.0, ge=0,
        description="extra seed data: this round's fresh synthesized samples the rule did not keep (mastered or never "
        "probed; never ones dropped as wrong), up to this fraction of the kept set (0 = none: the next round synthesizes new ones)",
    )
    bothWrong: Literal["drop", "keep"] = Field("drop", description="verdict both_wrong (label and prediction wrong): paper drops them")
    bothAcceptable: Literal["mastered", "keep"] = Field(
        "mastered", description="verdict both_acceptable: 'mastered' (paper: like an exact match, dropped when dropMastered) or keep"
    )
    keepHighPerplexity: bool = Field(
        True, description="keep correct-but-unsure (high-perplexity) samples; false (ablation) treats them as mastered"
    )


class EvalSpec(Spec):
    bfclCategories: list[str] = Field(default_factory=list)
    bfclLimit: int = Field(0, ge=0, description="entries per category, a seeded sample (0 = all)")
    heldout: bool = True
    maxTokens: int = Field(128, ge=8)
    # A BFCL toolset is split by function: synthesis trains on one part, BFCL scores entries whose
    # functions were never trained on (the paper's setting), unless overlap is allowed.
    allowOverlap: bool = Field(False, description="score BFCL entries whose functions the model trained on (the scorecard says so)")
    testFraction: float = Field(0.5, ge=0, lt=1, description="share of a BFCL toolset's functions kept out of training")
    splitSeed: int = Field(0, description="seed of the function split (keep it across chained rounds)")


class StopSpec(Spec):
    """When a chain stops early (paper: gains flatten after a few iterations). Checked after this
    round succeeds, against the round before it in the chain (round 1 has nothing to compare with)."""

    minHeldoutGain: float | None = Field(
        None, ge=0, le=1,
        description="stop the chain after this round when its held-out accuracy gained less than this over the "
        "previous round's (a fraction: 0.01 = one point); later rounds are not run. Unset = never stop",
    )


class Resources(Spec):
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    trainerImage: str = ""
    cpu: str = ""
    memory: str = ""
    workVolumeSize: str = Field(
        "", pattern=QUANTITY_PATTERN, description="size of the trainer's work volume claim, e.g. 500Gi (empty = the operator's default)"
    )

    _work_volume_size = field_validator("workVolumeSize", mode="before")(check_quantity)


class LoopRoundSpec(Spec):
    round: int = Field(1, ge=1)
    previousRound: str = Field("", description="name of the LoopRound this one continues from")
    baseModel: ModelRef | None = None
    toolset: ToolsetRef
    datasets: DatasetRefs = Field(default_factory=DatasetRefs)
    synthesis: SynthesisSpec = Field(default_factory=SynthesisSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    expand: ExpandSpec = Field(default_factory=ExpandSpec)
    compose: ComposeSpec = Field(default_factory=ComposeSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    stopWhen: StopSpec = Field(default_factory=StopSpec, description="stop the chain early after this round")
    resources: Resources = Field(default_factory=Resources)
    storage: str = Field("", description="base URI for this round's outputs (default: the configured storage)")

    @model_validator(mode="after")
    def _model_source(self) -> "LoopRoundSpec":
        if self.baseModel is None and not self.previousRound:
            raise ValueError("set spec.baseModel, or spec.previousRound to continue from a finished round")
        t = self.training
        if t.backend == "verl" and t.gpus < 1:
            raise ValueError("spec.training.gpus must be >= 1 for the verl backend")
        problem = ablation_conflict(self)
        if problem:
            raise ValueError(problem)
        if self.stopWhen.minHeldoutGain is not None and not self.eval.heldout:
            raise ValueError("spec.stopWhen.minHeldoutGain needs held-out accuracy but spec.eval.heldout is false: "
                             "set eval.heldout: true or remove stopWhen")
        return self


def ablation_conflict(spec: "LoopRoundSpec") -> str:
    """The first contradiction between switches (paper ablations) and other fields, as one line naming
    both fields and the fix; "" when consistent."""
    j, t = spec.judge, spec.training
    if not j.enabled:
        if j.candidates > 0:
            return (f"spec.judge.candidates is {j.candidates} but spec.judge.enabled is false (candidates are judged): "
                    "set judge.candidates: 0 or judge.enabled: true")
        if spec.expand.factor > 0:
            return (f"spec.expand.factor is {spec.expand.factor} but spec.judge.enabled is false (EDDE expands judged errors): "
                    "set expand.factor: 0 or judge.enabled: true")
    if t.grpoSteps == 0 and not t.sftWarmStart:
        return "spec.training.grpoSteps is 0 and spec.training.sftWarmStart is false: nothing would train; enable one of them"
    if j.models and j.model:
        return "spec.judge.model and spec.judge.models are both set: name one judge (model) or a panel (models)"
    if (j.models or j.model) and j.backend != "llm":
        which = "spec.judge.models" if j.models else "spec.judge.model"
        return f"{which} is set but spec.judge.backend is {j.backend!r}, which uses no model: set judge.backend: llm or remove {which}"
    if j.models and j.votes > 1:
        return (f"spec.judge.votes is {j.votes} with a spec.judge.models panel: each panel judge decodes greedily "
                "and the panel votes; set judge.votes: 1")
    if j.enabled and j.backend == "llm" and not j.allowSelfJudge:
        policy = spec.baseModel.uri if spec.baseModel is not None else ""
        judges = j.models or ([j.model] if j.model else [])
        if not judges:
            return ("spec.judge.model is empty with judge.backend: llm, so the policy would judge itself: name a judge model "
                    "(paper: a stronger one), or set judge.allowSelfJudge: true, or judge.backend: grounding")
        if policy and policy in judges:
            return (f"spec.judge.model {policy!r} is the policy (spec.baseModel.uri): name another judge model "
                    "or set judge.allowSelfJudge: true")
    return ""


class Metadata(Spec):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "default"


class LoopRound(Spec):
    apiVersion: Literal["looptool.io/v1alpha1"] = API_VERSION
    kind: Literal["LoopRound"] = KIND
    metadata: Metadata
    spec: LoopRoundSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


class ManifestError(ValueError):
    """The manifest is invalid; one line per problem, each naming the field."""


def _fmt(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown field; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: field '{loc}': {msg}")
    return "\n".join(lines)


def parse_round(obj: Any, source: str = "manifest") -> LoopRound:
    if not isinstance(obj, dict):
        raise ManifestError(f"{source}: expected a LoopRound mapping (apiVersion, kind, metadata, spec)")
    try:
        return LoopRound.model_validate(obj)
    except ValidationError as exc:
        raise ManifestError(_fmt(exc, source)) from None


def load_manifests(path: str | Path, max_bytes: int | None = None) -> list[LoopRound]:
    """Load one LoopRound, a YAML stream of them, or a ``kind: List`` — in chain order. At most
    ``max_bytes`` are read (``limits.manifest_bytes``): a huge file is refused before YAML parses it."""
    cap = LimitsSettings().manifest_bytes if max_bytes is None else max_bytes
    try:
        text = read_text_bounded(path, cap, str(path), "manifest_bytes", "manifest")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except InputError as exc:
        raise ManifestError(str(exc)) from None
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory; pass a LoopRound YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ManifestError(f"{path}:{' line ' + str(mark.line + 1) if mark else ''}: malformed YAML; fix the syntax there") from None
    items: list[Any] = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List":
            items.extend(d.get("items") or [])
        else:
            items.append(d)
    if not items:
        raise ManifestError(f"{path}: no LoopRound found")
    rounds = [parse_round(obj, f"{path}[{i}]") for i, obj in enumerate(items)]
    names = [r.name for r in rounds]
    for i, r in enumerate(rounds):
        if r.name in names[:i]:  # a second round of one name would overwrite the first one's status
            raise ManifestError(
                f"{path}[{i}]: field 'metadata.name': {r.name!r} repeats round [{names.index(r.name)}]; give each round its own name"
            )
        prev = r.spec.previousRound
        # A round not in this file may be in storage: ``shared/loop/preflight`` looks there.
        if prev and prev in names[i:]:
            raise ManifestError(
                f"{path}[{i}]: field 'spec.previousRound': {prev!r} is not an earlier round in this file; "
                "put it before this round"
            )
    return rounds


def crd_schema() -> dict[str, Any]:
    """OpenAPI v3 schema of spec (structural: no $ref), for the CRD."""
    return openapi_schema(LoopRoundSpec)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A pydantic model as a Kubernetes *structural* OpenAPI v3 schema (CRD ``openAPIV3Schema`` rules).

    JSON Schema 2020-12 (pydantic) → OpenAPI 3.0 as the API server accepts it: ``$ref`` inlined;
    ``Optional[X]`` → X + ``nullable``; ``const`` → one-value ``enum``; numeric
    ``exclusiveMinimum/Maximum`` → ``minimum/maximum`` + boolean flag; free-form objects
    (``additionalProperties: true``) → ``x-kubernetes-preserve-unknown-fields``; ``default: null``
    dropped (the API server rejects null defaults); ``additionalProperties: false`` next to
    ``properties`` dropped (unknown fields are pruned, or rejected by strict field validation).
    """
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = inline(dict(defs[node["$ref"].split("/")[-1]]))
                extra = {k: v for k, v in node.items() if k != "$ref"}
                return {**target, **inline(extra)}
            if "anyOf" in node:
                options = [o for o in node["anyOf"] if o.get("type") != "null"]
                if len(options) == 1:
                    rest = {k: v for k, v in node.items() if k != "anyOf"}
                    merged = {**inline(options[0]), **inline(rest)}
                    merged["nullable"] = True
                    if merged.get("default", 0) is None:
                        merged.pop("default")
                    return merged
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k in ("title",):
                    continue
                if k == "const":
                    out["enum"] = [v]
                    continue
                if k in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(v, bool):
                    out["minimum" if k == "exclusiveMinimum" else "maximum"] = v
                    out[k] = True
                    continue
                out[k] = inline(v)
            if out.get("type") == "object" and "properties" in out:
                out.pop("additionalProperties", None)
            if out.get("type") == "object" and out.get("additionalProperties") is True:
                out.pop("additionalProperties")
                out["x-kubernetes-preserve-unknown-fields"] = True
            if "default" in out and out["default"] is None:
                out.pop("default")
            return out
        if isinstance(node, list):
            return [inline(x) for x in node]
        return node

    return inline(schema)
