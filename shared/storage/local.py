"""Local-directory object store (the embedded default)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from looptool.shared.storage.base import NotFound, ObjectStore, PreconditionFailed, StorageError


class LocalStore(ObjectStore):
    scheme = "file"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        key = key.lstrip("/")
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise StorageError(f"key {key!r} escapes the storage root {self.root}")
        return p

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def _atomic_write(self, dest: Path, writer) -> None:
        """Write to a temporary file in the same directory, fsync, then rename over ``dest``:
        a reader sees the old file or the complete new one, never a partial write."""
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        except OSError as exc:
            raise StorageError(
                f"cannot write {dest.as_uri()} ({exc.strerror or exc}); check the storage root is writable"
            ) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                raise StorageError(f"cannot write {dest.as_uri()} ({exc.strerror or exc}); check free space and permissions") from exc
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(self._path(key), lambda fh: fh.write(data))

    def put_file(self, key: str, path: str) -> None:
        if not os.path.isfile(path):
            raise NotFound(f"{path} does not exist; nothing to upload")

        def copy(fh):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        self._atomic_write(self._path(key), copy)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Compare and write under an exclusive ``flock`` of the object's directory: every
        conditional writer of that directory on this machine (or a shared filesystem with working
        flock) is serialized; readers need no lock (the write is a rename)."""
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StorageError(f"cannot write {dest.as_uri()} ({exc.strerror or exc}); check the storage root is writable") from exc
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)
            try:
                current: str | None = self.get_tagged(key)[1]
            except NotFound:
                current = None
            if current != tag:
                raise PreconditionFailed(
                    f"{dest.as_uri()} " + ("already exists" if tag is None else "changed" if current else "was deleted")
                    + " since it was read; re-read it"
                )
            self.put_bytes(key, data)
            return hashlib.sha256(data).hexdigest()
        finally:
            os.close(dfd)  # releases the flock

    def open_read(self, key: str) -> BinaryIO:
        p = self._path(key)
        try:
            return open(p, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{p.as_uri()} does not exist; check the URI or run the stage that produces it") from None
        except OSError as exc:
            raise StorageError(f"cannot read {p.as_uri()} ({exc.strerror or exc}); check permissions") from exc

    def get_file(self, key: str, path: str) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{src.as_uri()} does not exist; check the URI or run the stage that produces it")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)
        except OSError as exc:
            raise StorageError(f"cannot copy {src.as_uri()} to {path} ({exc.strerror or exc})") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` (plain string prefix, as in S3), sorted; temp files skipped."""
        prefix = prefix.lstrip("/")
        dirpart, _, namepart = prefix.rpartition("/")
        parent = self._path(dirpart) if dirpart else self.root
        keys: list[str] = []
        try:
            entries = list(os.scandir(parent))
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        except OSError as exc:
            raise StorageError(f"cannot list {parent.as_uri()} ({exc.strerror or exc})") from exc
        for entry in entries:
            if not entry.name.startswith(namepart) or entry.name.startswith(".tmp-"):
                continue
            if entry.is_file():
                keys.append(Path(entry.path).relative_to(self.root).as_posix())
            elif entry.is_dir(follow_symlinks=False):
                for dirpath, _dirs, files in os.walk(entry.path):
                    for f in files:
                        if not f.startswith(".tmp-"):
                            keys.append(Path(dirpath, f).relative_to(self.root).as_posix())
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
