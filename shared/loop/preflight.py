"""Checks a round must pass before any stage runs, shared by the local runner and the operator.

Today: the models a round will load exist where it says. The base model (``spec.baseModel.uri``,
unless the round continues from ``previousRound`` or uses ``builtin:tiny``) and a judge model named
by the round (``spec.judge.model``, when the inference backend loads models itself rather than
asking a hosted endpoint for a model by name). Without this, a missing model surfaces inside the GPU
training Job, after synthesis already ran.
"""

from __future__ import annotations

from dataclasses import dataclass

from looptool.shared.config import InferenceSettings, LoopToolConfig
from looptool.shared.loop.manifest import LoopRound, LoopRoundSpec
from looptool.shared.models import ModelNotFound, Purpose, check_model_uri


@dataclass(frozen=True)
class ModelUse:
    field: str  # the manifest field naming the model
    uri: str
    purpose: Purpose


def loads_models_itself(inference: InferenceSettings) -> bool:
    """True when the inference server loads a model URI itself (transformers, in-process vLLM);
    false when it passes a model *name* to an OpenAI-compatible endpoint."""
    return inference.backend == "transformers" or (inference.backend == "vllm" and inference.vllm_mode == "in_process")


def model_uses(spec: LoopRoundSpec, inference: InferenceSettings) -> list[ModelUse]:
    out = []
    bm = spec.baseModel
    if not spec.previousRound and bm is not None and not bm.builtin and not bm.uri.startswith("builtin:"):
        out.append(ModelUse("spec.baseModel.uri", bm.uri, "train"))
    judge = spec.judge
    if judge.backend == "llm" and judge.model and loads_models_itself(inference):
        out.append(ModelUse("spec.judge.model", judge.model, "serve"))
    return out


def check_round_models(round: LoopRound, config: LoopToolConfig, *, local_paths: bool = True) -> None:
    """ModelNotFound (one line: the round, the field, the URI, the fix) for the first model that is
    not there; StorageError when the store cannot be reached. ``local_paths=False`` (the operator)
    checks s3:// models only: local paths belong to the trainer's and the inference server's
    filesystems, not the operator's."""
    for use in model_uses(round.spec, config.inference):
        try:
            check_model_uri(use.uri, config.storage.s3, purpose=use.purpose, local_paths=local_paths)
        except ModelNotFound as exc:
            raise ModelNotFound(f"LoopRound {round.name}: {use.field}: {exc}", exc.uri) from None
