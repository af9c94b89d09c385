"""Models in storage: import a model directory, list models, check and resolve a model URI.

A model lives where the trainer (``services/trainer/modeling.resolve_base``) and the inference server
(``services/inference/model_cache.py``, used by the transformers and vLLM backends)
read it: a committed directory artifact (``shared/storage/artifacts.py``) — the files under
``<uri>/files/`` and ``<uri>/_artifact.json`` written last, listing each file's size and sha256 and
one content hash. A plain copy of a model directory (``mc cp``, ``aws s3 sync``) has no
``_artifact.json`` and is not a model: the checks here say so, with the command that fixes it, when a
round is validated, before any stage runs.

A local model may also be a plain directory (``config.json`` + weights) or a ``.gguf`` file; those are
used in place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from looptool.shared.errors import InputError
from looptool.shared.storage import LocalStore, split_uri
from looptool.shared.storage.artifacts import (
    ARTIFACT_MANIFEST,
    artifact_exists,
    content_hash,
    fetch_dir,
    manifest_content_hash,
    scan_files,
    upload_dir,
)
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

if False:  # pragma: no cover - typing only
    from looptool.shared.config import S3Settings

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
# What loads a model: the trainer (transformers / verl) needs config.json + safetensors/bin weights;
# the inference server also loads a GGUF file (its config is inside the file).
Purpose = Literal["train", "serve"]
DEFAULT_CACHE = ".looptool/cache/models"


class ModelNotFound(NotFound):
    """No usable model at a URI; the message names the URI and how to put one there."""

    def __init__(self, message: str, uri: str):
        super().__init__(message)
        self.uri = uri


def import_hint(uri: str) -> str:
    return f"import one with: looptool model import DIR {uri}"


@dataclass(frozen=True)
class ModelInfo:
    uri: str
    name: str
    size: int
    files: int
    content_hash: str
    created_at: str
    format: str  # safetensors | bin | gguf


@dataclass(frozen=True)
class ImportResult:
    action: Literal["imported", "unchanged", "replaced"]
    model: ModelInfo


# ----------------------------------------------------------------------------- what counts as a model


def _weights(paths: list[str]) -> list[str]:
    """Weight files at the top level of a model directory (where transformers and vLLM look)."""
    return [p for p in paths if "/" not in p and p.lower().endswith(WEIGHT_SUFFIXES)]


def _format(weights: list[str]) -> str:
    suffixes = {Path(w).suffix.lower().lstrip(".") for w in weights}
    for fmt in ("safetensors", "bin", "gguf"):
        if fmt in suffixes:
            return fmt
    return ""


def model_problem(paths: list[str], purpose: Purpose = "serve") -> str:
    """Why a directory holding these (relative) paths is not a loadable model; empty when it is one."""
    weights = _weights(paths)
    has_config = "config.json" in paths
    if not weights:
        return "has no weights (*.safetensors, *.bin or *.gguf at its top level)"
    if purpose == "train":
        if not has_config:
            return "has no config.json (the trainer loads a transformers model directory)"
        if not [w for w in weights if not w.lower().endswith(".gguf")]:
            return "holds only GGUF weights; the trainer needs *.safetensors or *.bin"
        return ""
    if not has_config and not [w for w in weights if w.lower().endswith(".gguf")]:
        return "has no config.json"
    return ""


def scan_model_dir(src: str | os.PathLike[str]) -> list[dict]:
    """A local model directory's files (hashed), or InputError naming the directory."""
    path = Path(src)
    if not path.is_dir():
        raise InputError(str(src), "is not a directory", "pass the model's directory (config.json + weights)")
    files = scan_files(path, skip_hidden=True)
    problem = model_problem([f["path"] for f in files])
    if problem:
        raise InputError(str(src), f"is not a model directory: it {problem}", "pass a directory with config.json and the weights")
    return files


# ----------------------------------------------------------------------------- import / list


def _info(store: ObjectStore, key: str, manifest: dict, root: str = "") -> ModelInfo:
    files = manifest.get("files") or []
    rel = key[len(root) :].strip("/") if root and key.startswith(root) else ""
    meta = manifest.get("meta") or {}
    return ModelInfo(
        uri=store.uri(key),
        name=rel or str(meta.get("name") or key.rstrip("/").rsplit("/", 1)[-1]),
        size=sum(int(f.get("size", 0)) for f in files),
        files=len(files),
        content_hash=manifest_content_hash(manifest),
        created_at=str(manifest.get("created_at") or ""),
        format=_format(_weights([f["path"] for f in files])),
    )


def _read(store: ObjectStore, key: str) -> dict | None:
    try:
        data = json.loads(store.get_bytes(f"{key}/{ARTIFACT_MANIFEST}"))
    except NotFound:
        return None
    except ValueError:
        raise StorageError(f"{store.uri(key)}/{ARTIFACT_MANIFEST} is not valid JSON; re-import the model with --force") from None
    return data if isinstance(data, dict) else None


def _same_or_nested(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def import_model(
    src: str | os.PathLike[str], uri: str, s3: "S3Settings | None" = None, force: bool = False
) -> ImportResult:
    """Store a local model directory at ``uri`` as a committed artifact (manifest written last).

    Same content already there: nothing is written ("unchanged"). Different content: refused unless
    ``force`` ("replaced"; the old manifest goes first, so no reader sees a mix of the two)."""
    src_path = Path(src)
    store, key = split_uri(uri, s3)
    key = key.strip("/")
    if not key:
        raise InputError(uri, "names no prefix for the model", f"use e.g. {uri.rstrip('/')}/models/<name>")
    if isinstance(store, LocalStore) and _same_or_nested(Path("/", key).resolve(), src_path.resolve()):
        raise InputError(uri, f"overlaps the model directory {src}", "import to a URI outside the directory")
    files = scan_model_dir(src_path)
    before = {f["path"]: (src_path / f["path"]).stat() for f in files}
    new_hash = content_hash(files)
    existing = _read(store, key)
    action: Literal["imported", "unchanged", "replaced"] = "imported"
    if existing is not None:
        old_hash = manifest_content_hash(existing)
        if old_hash == new_hash:
            return ImportResult("unchanged", _info(store, key, existing))
        if not force:
            raise InputError(
                uri,
                f"already holds a different model (content {old_hash[:12]}, this directory {new_hash[:12]})",
                "pass --force to replace it, or import to another URI",
            )
        action = "replaced"
    own = f"{key}/{ARTIFACT_MANIFEST}"
    nested = [
        k for k in store.list(f"{key}/")
        if k != own and k.endswith(f"/{ARTIFACT_MANIFEST}") and not k.startswith(f"{key}/files/")
    ]
    if nested:
        raise InputError(uri, f"holds other models below it ({store.uri(nested[0].rsplit('/', 1)[0])})", "import to a prefix of its own")
    meta = {"kind": "model", "name": key.rsplit("/", 1)[-1], "format": _format(_weights(list(before)))}
    upload_dir(store, key, src_path, meta=meta, files=files)
    changed = []
    for rel, st in before.items():
        now = (src_path / rel).stat()
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            changed.append(rel)
    if changed:  # the hashes in the manifest may not match what was uploaded
        store.delete(f"{key}/{ARTIFACT_MANIFEST}")
        raise StorageError(f"{src_path / changed[0]} changed while it was being imported to {uri}; import again")
    committed = _read(store, key)
    if committed is None or manifest_content_hash(committed) != new_hash:
        raise StorageError(f"{uri}: the committed manifest does not match the imported files; import again")
    return ImportResult(action, _info(store, key, committed))


def list_models(uri: str, s3: "S3Settings | None" = None) -> list[ModelInfo]:
    """Models (committed artifacts with weights) at or below ``uri``, sorted by name; ModelNotFound
    when there is none."""
    store, key = split_uri(uri, s3)
    key = key.strip("/")
    keys = list(store.list(f"{key}/" if key else ""))
    found: list[str] = []
    if store.exists(f"{key}/{ARTIFACT_MANIFEST}" if key else ARTIFACT_MANIFEST):
        found.append(key)
    for k in keys:
        if k.rsplit("/", 1)[-1] != ARTIFACT_MANIFEST:
            continue
        prefix = k.rsplit("/", 1)[0] if "/" in k else ""
        if prefix != key and not any(prefix.startswith(f"{p}/files/") for p in found):
            found.append(prefix)
    out = []
    for prefix in found:
        manifest = _read(store, prefix)
        if manifest is None or not _weights([f["path"] for f in manifest.get("files") or []]):
            continue  # a dataset-like artifact, not a model
        out.append(_info(store, prefix, manifest, root=key))
    if not out:
        raise ModelNotFound(f"{uri}: no model at or below this URI; {import_hint(uri.rstrip('/') + '/<name>')}", uri)
    return sorted(out, key=lambda m: m.name)


# ----------------------------------------------------------------------------- check / resolve


def _missing_message(store: ObjectStore, key: str, uri: str) -> str:
    has_files = next(iter(store.list(f"{key}/")), None) is not None
    if has_files:
        return (
            f"{uri} holds files but no committed model (no {ARTIFACT_MANIFEST}; a plain copy such as "
            f"`mc cp` is not enough); {import_hint(uri)}"
        )
    return f"{uri}: no model there; {import_hint(uri)}"


def check_model_uri(uri: str, s3: "S3Settings | None" = None, *, purpose: Purpose = "serve", local_paths: bool = True) -> None:
    """Raise ModelNotFound (one line naming the URI and the fix) unless ``uri`` holds a model the
    ``purpose`` can load; reads the manifest only, downloads nothing. StorageError when the store
    cannot be reached. ``local_paths=False`` skips plain paths and file:// URIs (the operator cannot
    see the filesystem the trainer or the inference server will)."""
    is_s3 = uri.startswith("s3://")
    if not is_s3 and not local_paths:
        return
    store, key = split_uri(uri, s3)
    key = key.strip("/")
    manifest = _read(store, key) if key else None
    if manifest is not None:
        problem = model_problem([f["path"] for f in manifest.get("files") or []], purpose)
        if problem:
            raise ModelNotFound(f"{uri}: the committed artifact {problem}; {import_hint(uri)} --force", uri)
        return
    if is_s3:
        raise ModelNotFound(_missing_message(store, key, uri), uri)
    path = Path("/", key)
    if path.is_file():
        if path.suffix.lower() == ".gguf" and purpose == "serve":
            return
        raise ModelNotFound(f"{uri} is a file, not a model directory; pass the directory (config.json + weights)", uri)
    if not path.is_dir():
        raise ModelNotFound(f"{uri} does not exist; pass a model directory (config.json + weights) or a committed model URI", uri)
    problem = model_problem(sorted(p.name for p in path.iterdir() if p.is_file()), purpose)
    if problem:
        raise ModelNotFound(f"{uri} is not a model directory: it {problem}", uri)


def resolve_model_dir(uri: str, cache_root: str | os.PathLike[str] = DEFAULT_CACHE, s3: "S3Settings | None" = None) -> Path:
    """A model URI → a local path: a committed artifact (local or s3) is fetched (checksums verified)
    or, in local storage, used in place; a plain local directory or file is used as-is. An s3:// URI
    stays in S3: without a committed model there it is ModelNotFound, never a local path."""
    store, key = split_uri(uri, s3)
    key = key.strip("/")
    if key and artifact_exists(store, key):
        return fetch_dir(store, key, cache_root)
    if not isinstance(store, LocalStore):
        raise ModelNotFound(_missing_message(store, key, uri), uri)
    path = Path("/", key)
    if path.exists():
        return path
    raise ModelNotFound(f"model path {uri} does not exist; pass a model directory, a GGUF file or a committed model URI", uri)
