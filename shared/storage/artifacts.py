"""Directory artifacts (model checkpoints) in object storage, committed by a manifest written last.

``upload_dir`` copies every file under a local directory to ``<prefix>/files/...`` and then writes
``<prefix>/_artifact.json`` listing them with sizes and sha256; readers require the manifest, so a
half-uploaded checkpoint is never used. ``fetch_dir`` downloads (or, for local storage, verifies and
links to) a committed artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from looptool.shared.records import utcnow
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError
from looptool.shared.storage.local import LocalStore

ARTIFACT_MANIFEST = "_artifact.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_exists(store: ObjectStore, prefix: str) -> bool:
    return store.exists(f"{prefix.strip('/')}/{ARTIFACT_MANIFEST}")


def upload_dir(store: ObjectStore, prefix: str, local_dir: str | os.PathLike[str], meta: dict | None = None) -> str:
    """Upload a directory; returns the artifact URI. Idempotent: re-uploading replaces atomically."""
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageError(f"{src} is not a directory; nothing to upload")
    prefix = prefix.strip("/")
    store.delete(f"{prefix}/{ARTIFACT_MANIFEST}")
    files = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        store.put_file(f"{prefix}/files/{rel}", str(path))
        files.append({"path": rel, "size": path.stat().st_size, "sha256": _sha256(path)})
    manifest = {"version": 1, "files": files, "created_at": utcnow(), "meta": meta or {}}
    store.put_bytes(f"{prefix}/{ARTIFACT_MANIFEST}", json.dumps(manifest, indent=1).encode())
    return store.uri(prefix)


def read_manifest(store: ObjectStore, prefix: str) -> dict:
    try:
        return json.loads(store.get_bytes(f"{prefix.strip('/')}/{ARTIFACT_MANIFEST}"))
    except NotFound:
        raise NotFound(
            f"no committed artifact at {store.uri(prefix.strip('/'))} (missing {ARTIFACT_MANIFEST}); "
            "check the URI or wait for the training run to finish"
        ) from None


def fetch_dir(store: ObjectStore, prefix: str, cache_root: str | os.PathLike[str]) -> Path:
    """Materialise a committed artifact locally; returns the directory. Cached by manifest hash."""
    prefix = prefix.strip("/")
    raw = store.get_bytes(f"{prefix}/{ARTIFACT_MANIFEST}") if artifact_exists(store, prefix) else None
    if raw is None:
        read_manifest(store, prefix)  # raises a clear NotFound
    manifest = json.loads(raw)  # type: ignore[arg-type]
    if isinstance(store, LocalStore):
        return Path(store.root, prefix, "files")
    digest = hashlib.sha256(raw).hexdigest()[:16]  # type: ignore[arg-type]
    dest = Path(cache_root) / digest
    if dest.is_dir():
        return dest
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache_root))
    try:
        for f in manifest["files"]:
            target = tmp / f["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(f"{prefix}/files/{f['path']}", str(target))
            if _sha256(target) != f["sha256"]:
                raise StorageError(f"{store.uri(prefix)}/files/{f['path']}: checksum mismatch; re-upload the artifact")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def resolve_model_dir(uri: str, cache_root: str | os.PathLike[str] = ".looptool/cache/models") -> Path:
    """A model URI → a local directory: a plain path / file:// directory is used as-is when it holds
    a model; a committed artifact (local or s3) is fetched."""
    from looptool.shared.storage import split_uri

    if not uri.startswith(("s3://", "file://")):
        p = Path(uri)
        if (p / ARTIFACT_MANIFEST).exists():
            return p / "files"
        if p.exists():
            return p
        raise NotFound(f"model path {uri} does not exist; pass a model directory or a checkpoint URI")
    store, key = split_uri(uri)
    if isinstance(store, LocalStore) and not artifact_exists(store, key):
        p = Path(store.root, key)
        if p.is_dir():
            return p
    return fetch_dir(store, key, cache_root)
