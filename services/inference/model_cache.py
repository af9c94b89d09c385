"""The inference server's checkpoint cache: s3:// models downloaded once into a bounded directory.

Every round trains a new checkpoint and the server loads it for probing, so without a bound the
cache (``inference.model_cache_dir``) grows by one checkpoint per round until the disk (or the pod's
emptyDir ``sizeLimit``, which gets the pod evicted) is full. Here:

- a checkpoint is downloaded into ``.partial/<digest>/`` and renamed to ``<digest>/`` when every file
  is there and matches the manifest's sha256, so a reader never sees half a checkpoint; an
  interrupted download is resumed (files that already match are kept);
- one download per checkpoint: an exclusive ``flock`` on ``.locks/<digest>.fetch`` (across threads,
  the inference and judge pools, and processes sharing the directory);
- a checkpoint in use holds a shared ``flock`` on ``.locks/<digest>`` (``ModelPin``, released when
  the backend that loaded it closes); eviction takes that lock exclusively without waiting, so a
  loaded model is never deleted;
- before a download, whole checkpoints are evicted, least recently used first (the entry
  directory's mtime, touched on acquire and release, so the order survives a restart), until the
  cache plus the new checkpoint fits ``inference.model_cache_max_bytes``. Partial downloads count
  with their full expected size (``.partial/<digest>.size``), so concurrent downloads of different
  checkpoints cannot overrun the bound together. When the checkpoints in use leave no room, the load
  fails with one line naming the setting, rather than overfilling the disk.

Local paths and ``file://`` committed models are used in place (``shared.models.resolve_model_dir``);
nothing is copied for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from looptool.shared.config import InferenceSettings, S3Settings
from looptool.shared.logs import get_logger
from looptool.shared.models import resolve_model_dir
from looptool.shared.storage import LocalStore, split_uri
from looptool.shared.storage.artifacts import ARTIFACT_MANIFEST, read_manifest
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

log = get_logger("looptool.inference.model_cache")

_clock_lock = threading.Lock()
_last_ns = 0


def _now_ns() -> int:
    """Strictly increasing wall-clock nanoseconds (two touches in a row never tie in LRU order)."""
    global _last_ns
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def _touch(path: Path) -> None:
    t = _now_ns()
    try:
        os.utime(path, ns=(t, t))
    except FileNotFoundError:
        pass


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # deleted under us (an eviction elsewhere)
                pass
    return total


class CacheFull(StorageError):
    """The checkpoint does not fit next to the checkpoints in use; the message names the setting."""


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    path: Path
    size: int
    last_used_ns: int
    partial: bool  # a download in progress or interrupted


class ModelPin:
    """A local model path, protected from eviction until ``release`` (idempotent)."""

    def __init__(self, path: Path, lock_fd: int | None = None, entry: Path | None = None):
        self.path = path
        self._fd = lock_fd
        self._entry = entry

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            if self._entry is not None:
                _touch(self._entry)  # used until now: most recently used
            os.close(fd)  # drops the shared flock

    def __enter__(self) -> "ModelPin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a pin dropped without release must not keep its lock forever
        if getattr(self, "_fd", None) is not None:
            self.release()


class ModelCache:
    """Checkpoints of one cache directory (any number of these may share it: all coordination is
    through files and ``flock``)."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int, s3: S3Settings | None = None):
        self.root = Path(root).expanduser().resolve()
        self.max_bytes = int(max_bytes)
        self.s3 = s3
        self._partial = self.root / ".partial"
        self._locks = self.root / ".locks"
        self._trash = self.root / ".trash"

    @classmethod
    def from_settings(cls, settings: InferenceSettings, s3: S3Settings | None = None) -> "ModelCache":
        return cls(settings.model_cache_dir, settings.model_cache_max_bytes, s3)

    # -- public -----------------------------------------------------------------------------

    def acquire(self, uri: str) -> ModelPin:
        """A model URI → a pinned local path. A committed artifact in S3 is served from the cache
        (downloaded first when missing); a local path or ``file://`` artifact is used in place.
        ModelNotFound (a StorageError) names the URI when there is no model there."""
        store, key = split_uri(uri, self.s3)
        key = key.strip("/")
        if isinstance(store, LocalStore) or not key:
            return ModelPin(resolve_model_dir(uri, self.root, self.s3))
        try:
            raw = store.get_bytes(f"{key}/{ARTIFACT_MANIFEST}")
        except NotFound:
            return ModelPin(resolve_model_dir(uri, self.root, self.s3))  # raises ModelNotFound with the fix
        return self.acquire_artifact(store, key, raw)

    def acquire_artifact(self, store: ObjectStore, prefix: str, raw: bytes | None = None) -> ModelPin:
        """The committed artifact at ``prefix`` of ``store``, materialized in the cache and pinned."""
        prefix = prefix.strip("/")
        if raw is None:
            try:
                raw = store.get_bytes(f"{prefix}/{ARTIFACT_MANIFEST}")
            except NotFound:
                read_manifest(store, prefix)  # raises the clear NotFound
                raise
        uri = store.uri(prefix)
        try:
            manifest = json.loads(raw)
            files = [(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in manifest["files"]]
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"{uri}/{ARTIFACT_MANIFEST} is not a valid artifact manifest; re-import the model") from None
        for path, _, _ in files:
            p = PurePosixPath(path)
            if p.is_absolute() or ".." in p.parts or not p.parts:
                raise StorageError(f"{uri}/{ARTIFACT_MANIFEST} lists the path {path!r} outside the artifact; re-import the model")
        size = sum(s for _, s, _ in files)
        if size > self.max_bytes:
            raise CacheFull(
                f"{uri}: the checkpoint is {size} bytes, over inference.model_cache_max_bytes ({self.max_bytes}); "
                "raise it (on Kubernetes also services.inference.modelCache.sizeLimit)"
            )
        digest = hashlib.sha256(raw).hexdigest()[:16]  # the committed version: a re-upload is a new entry
        for d in (self._partial, self._locks, self._trash):
            d.mkdir(parents=True, exist_ok=True)
        dest = self.root / digest
        fd = self._open_lock(digest)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out an eviction of this entry that already began
            if not dest.is_dir():
                with self._locked(f"{digest}.fetch"):
                    if not dest.is_dir():  # someone else may have fetched it while we waited
                        self._download(store, prefix, uri, files, digest, size)
            _touch(dest)
        except BaseException:
            os.close(fd)
            raise
        return ModelPin(dest, fd, dest)

    def entries(self) -> list[CacheEntry]:
        """Complete and partial checkpoints, least recently used first."""
        out: list[CacheEntry] = []
        for child in self._scan(self.root):
            if child.name.startswith(".") or not child.is_dir():
                continue
            out.append(CacheEntry(child.name, child, _dir_bytes(child), self._mtime(child), partial=False))
        for child in self._scan(self._partial):
            if not child.is_dir():
                continue
            expected = 0
            try:
                expected = int((self._partial / f"{child.name}.size").read_text())
            except (OSError, ValueError):
                pass
            out.append(CacheEntry(child.name, child, max(expected, _dir_bytes(child)), self._mtime(child), partial=True))
        return sorted(out, key=lambda e: e.last_used_ns)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _scan(path: Path) -> list[Path]:
        try:
            return list(path.iterdir())
        except FileNotFoundError:
            return []

    @staticmethod
    def _mtime(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def _open_lock(self, name: str) -> int:
        return os.open(self._locks / name, os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        fd = self._open_lock(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _try_lock(self, name: str) -> int | None:
        """The lock held exclusively, or None when someone holds it (in use / downloading)."""
        fd = self._open_lock(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _download(self, store: ObjectStore, prefix: str, uri: str, files: list[tuple[str, int, str]], digest: str, size: int) -> None:
        partial = self._partial / digest
        self._make_room(digest, size, uri)
        partial.mkdir(parents=True, exist_ok=True)
        _touch(partial)
        fetched = kept = 0
        for path, _, sha in files:
            target = partial / path
            if target.is_file() and _sha256(target) == sha:
                kept += 1  # from an interrupted download: resumed, not fetched again
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(f"{prefix}/files/{path}", str(target))
            if _sha256(target) != sha:
                target.unlink(missing_ok=True)
                raise StorageError(f"{uri}/files/{path}: checksum mismatch; re-upload the artifact")
            fetched += 1
        wanted = {PurePosixPath(p) for p, _, _ in files}
        for extra in [p for p in partial.rglob("*") if p.is_file() and PurePosixPath(p.relative_to(partial).as_posix()) not in wanted]:
            extra.unlink()  # a download tool's temp file from an interrupted run
        os.replace(partial, self.root / digest)
        (self._partial / f"{digest}.size").unlink(missing_ok=True)
        log.info("model cached", extra={"model": uri, "digest": digest, "bytes": size, "fetched": fetched, "resumed": kept})

    def _make_room(self, digest: str, need: int, uri: str) -> None:
        """Evict least recently used checkpoints not in use until ``need`` more bytes fit, and
        reserve them (``.partial/<digest>.size``) for this download."""
        with self._locked("space"):
            for stale in self._scan(self._trash):  # left by a process that died while deleting
                shutil.rmtree(stale, ignore_errors=True)
            others = [e for e in self.entries() if e.digest != digest]
            total = sum(e.size for e in others) + need
            for e in others:
                if total <= self.max_bytes:
                    break
                if self._evict(e):
                    total -= e.size
            if total > self.max_bytes:
                busy = [e.digest for e in self.entries() if e.digest != digest]
                raise CacheFull(
                    f"model cache {self.root}: {uri} needs {need} bytes but the checkpoints in use "
                    f"({', '.join(busy)}) hold {total - need} of inference.model_cache_max_bytes ({self.max_bytes}); "
                    "raise it, or load fewer models at once"
                )
            (self._partial / f"{digest}.size").write_text(str(need))

    def _evict(self, e: CacheEntry) -> bool:
        fd = self._try_lock(f"{e.digest}.fetch" if e.partial else e.digest)
        if fd is None:
            return False  # loaded by a backend, or being downloaded
        try:
            gone = self._trash / f"{e.digest}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(e.path, gone)  # atomic: no reader sees a half-deleted checkpoint
            except FileNotFoundError:
                return True
            if e.partial:
                (self._partial / f"{e.digest}.size").unlink(missing_ok=True)
        finally:
            os.close(fd)
        shutil.rmtree(gone, ignore_errors=True)
        log.info("model evicted from the cache", extra={"digest": e.digest, "bytes": e.size, "partial": e.partial})
        return True
