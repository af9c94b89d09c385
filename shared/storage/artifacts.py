"""Directory artifacts (model checkpoints) in object storage, committed by a manifest written last.

``upload_dir`` copies every file under a local directory to ``<prefix>/files/...`` and then writes
``<prefix>/_artifact.json`` listing them with sizes and sha256 (plus one ``content_hash`` over that
list); readers require the manifest, so a half-uploaded checkpoint is never used. ``fetch_dir``
downloads (or, for local storage, links to) a committed artifact. Models imported by
``looptool model import`` are artifacts too (``shared/models.py``).
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


def scan_files(local_dir: str | os.PathLike[str], skip_hidden: bool = False) -> list[dict]:
    """Every file under a directory as a manifest entry (path, size, sha256), sorted by path.
    ``skip_hidden`` leaves out paths with a component starting with '.' (e.g. a download tool's
    ``.cache/``), which are no part of a model."""
    src = Path(local_dir)
    files = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if skip_hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        files.append({"path": rel, "size": path.stat().st_size, "sha256": _sha256(path)})
    return files


def content_hash(files: list[dict]) -> str:
    """One hash of an artifact's content: its files' paths, sizes and sha256 (not times or meta)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        h.update(f"{f['path']}\0{f['size']}\0{f['sha256']}\n".encode())
    return h.hexdigest()


def manifest_content_hash(manifest: dict) -> str:
    """The manifest's recorded content hash (older manifests lack it: computed from the file list)."""
    return str(manifest.get("content_hash") or content_hash(manifest.get("files") or []))


def upload_dir(
    store: ObjectStore,
    prefix: str,
    local_dir: str | os.PathLike[str],
    meta: dict | None = None,
    files: list[dict] | None = None,
) -> str:
    """Upload a directory; returns the artifact URI. Idempotent: re-uploading replaces atomically.
    ``files`` (from ``scan_files``) uploads exactly those entries, hashed already."""
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageError(f"{src} is not a directory; nothing to upload")
    prefix = prefix.strip("/")
    store.delete(f"{prefix}/{ARTIFACT_MANIFEST}")
    if files is None:
        files = scan_files(src)
    for f in files:
        store.put_file(f"{prefix}/files/{f['path']}", str(src / f["path"]))
    # Files of an earlier version that this one lacks go, so a reader of files/ (local storage links
    # to it directly) sees exactly this version.
    root = f"{prefix}/files/"
    keep = {f["path"] for f in files}
    for key in list(store.list(root)):
        if key.startswith(root) and key[len(root) :] not in keep:
            store.delete(key)
    manifest = {
        "version": 1,
        "files": files,
        "content_hash": content_hash(files),
        "created_at": utcnow(),
        "meta": meta or {},
    }
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
        try:
            os.replace(tmp, dest)
        except OSError:  # another process fetched the same artifact first: use its copy
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
