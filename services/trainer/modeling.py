"""Base models: where they come from (directory, committed artifact, ``builtin:tiny``), loading, saving.

``builtin:tiny`` — the trainer builds the small Llama-architecture model itself
(``shared/tiny_model.py``): a byte-level BPE tokenizer trained on the training data's texts
(prompt messages + targets) and a randomly initialised model. Its size comes from the config
(``training.tinyHiddenSize / tinyLayers / tinyVocabSize``); a query string on the URI overrides it,
e.g. ``builtin:tiny?hidden=64&layers=2&vocab=400&heads=2&intermediate=192&seed=1``. Heads default to
``hidden // 32`` (at least 1), the MLP to ``3 × hidden``, the seed to ``training.seed``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from looptool.shared.errors import InputError
from looptool.shared.loop.manifest import TrainingSpec
from looptool.shared.records import canonical_json
from looptool.shared.storage import split_uri
from looptool.shared.models import ModelNotFound, check_model_uri, resolve_model_dir
from looptool.shared.storage.artifacts import ARTIFACT_MANIFEST
from looptool.shared.storage.base import StorageError
from looptool.shared.tiny_model import TinyModelSpec

BUILTIN_PREFIX = "builtin:"
_TINY_KEYS = {"hidden", "layers", "vocab", "heads", "intermediate", "seed"}
_FIX = "pass a model directory (with config.json), a committed checkpoint URI (file:// or s3://), or builtin:tiny"


def is_builtin(uri: str) -> bool:
    return uri.startswith(BUILTIN_PREFIX)


def tiny_spec(uri: str, spec: TrainingSpec) -> TinyModelSpec:
    """``builtin:tiny[?k=v&...]`` → TinyModelSpec (InputError naming the field on a bad value)."""
    name, _, query = uri[len(BUILTIN_PREFIX) :].partition("?")
    if name != "tiny":
        raise InputError("base_checkpoint_uri", f"unknown builtin model {name!r}", "the only builtin is builtin:tiny")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - _TINY_KEYS)
    if unknown:
        raise InputError("base_checkpoint_uri", f"unknown builtin:tiny option(s) {unknown}", f"use {sorted(_TINY_KEYS)}")
    try:
        vals = {k: int(v) for k, v in params.items()}
    except ValueError:
        raise InputError("base_checkpoint_uri", f"builtin:tiny options must be integers, got {query!r}") from None
    hidden = vals.get("hidden", spec.tinyHiddenSize)
    heads = vals.get("heads", max(1, hidden // 32))
    if hidden < 16 or hidden % heads:
        raise InputError("base_checkpoint_uri", f"builtin:tiny hidden={hidden} must be >= 16 and divisible by heads={heads}")
    vocab = vals.get("vocab", spec.tinyVocabSize)
    if vocab < 300:
        raise InputError("base_checkpoint_uri", f"builtin:tiny vocab={vocab} must be >= 300 (256 bytes + specials + merges)")
    layers = vals.get("layers", spec.tinyLayers)
    if layers < 1:
        raise InputError("base_checkpoint_uri", "builtin:tiny layers must be >= 1")
    return TinyModelSpec(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=vals.get("intermediate", 3 * hidden),
        num_layers=layers,
        num_heads=heads,
        seed=vals.get("seed", spec.seed),
    )


def _dir_identity(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(x for x in path.rglob("*") if x.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\n".encode())
        if p.name in ("config.json", ARTIFACT_MANIFEST):
            h.update(p.read_bytes())
    return h.hexdigest()


def check_base(uri: str, spec: TrainingSpec, s3=None) -> str:
    """Check the base model exists (no download); return its identity for the run key."""
    if not uri:
        raise InputError("base_checkpoint_uri", "is empty", _FIX)
    if is_builtin(uri):
        tiny = tiny_spec(uri, spec)
        if spec.backend == "verl":
            raise InputError("base_checkpoint_uri", "builtin:tiny is a CPU demo model", "the verl backend needs a model directory")
        return canonical_json({"builtin": tiny.__dict__})
    if uri.startswith("s3://"):
        try:
            check_model_uri(uri, s3, purpose="train")
            store, key = split_uri(uri, s3)
            ident = hashlib.sha256(store.get_bytes(f"{key.strip('/')}/{ARTIFACT_MANIFEST}")).hexdigest()
        except ModelNotFound as exc:
            raise InputError("base_checkpoint_uri", str(exc)) from None
        except StorageError as exc:
            raise InputError("base_checkpoint_uri", f"{uri}: {str(exc).splitlines()[0]}", _FIX) from None
        return ident
    if uri.startswith("file://"):
        store, key = split_uri(uri)
        path = Path("/", key)
    else:
        path = Path(uri)
    if (path / ARTIFACT_MANIFEST).exists():
        return hashlib.sha256((path / ARTIFACT_MANIFEST).read_bytes()).hexdigest()
    if not path.exists():
        raise InputError("base_checkpoint_uri", f"{uri} does not exist", _FIX)
    if not (path / "config.json").is_file():
        raise InputError("base_checkpoint_uri", f"{uri} is not a model directory (no config.json)", _FIX)
    return _dir_identity(path)


def resolve_base(uri: str, cache_root: str | os.PathLike[str], s3=None) -> Path:
    """A checked (non-builtin) base URI → a local model directory (fetching artifacts). An s3:// URI
    stays in S3: without a committed model there it is ModelNotFound naming the URI and the fix."""
    return resolve_model_dir(uri, cache_root, s3)


def quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - older/newer transformers
        pass


def load_model(model_dir: str | os.PathLike[str], device: str = "cpu"):
    """(model in float32 on ``device``, tokenizer with left padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.to(device)
    model.config.use_cache = True
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | os.PathLike[str], meta: dict[str, Any] | None = None, extra_from: Path | None = None) -> Path:
    """A HF model directory (safetensors + tokenizer + generation config) plus ``looptool_train.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if extra_from is not None and (extra_from / "looptool_model.json").is_file():
        (out / "looptool_model.json").write_bytes((extra_from / "looptool_model.json").read_bytes())
    if meta is not None:
        (out / "looptool_train.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out
