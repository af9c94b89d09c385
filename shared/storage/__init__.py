"""Storage: one small object-store interface (local directory, S3/MinIO) and datasets on top of it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from looptool.shared.records import DatasetRef
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError
from looptool.shared.storage.datasets import (
    Dataset,
    DatasetCorrupt,
    DatasetWriter,
    RecordHasher,
    dataset_exists,
    open_dataset_at,
)
from looptool.shared.storage.local import LocalStore


def split_uri(uri: str, s3: "S3Settings | None" = None) -> tuple[ObjectStore, str]:
    """Resolve a URI to (store, key).

    ``file:///abs/path`` or a plain path (absolute, or relative to the working directory) →
    ``LocalStore('/')`` and the path; ``s3://bucket/key`` → ``S3Store`` configured from ``s3``
    (default: ``LOOPTOOL_S3_*`` / ``AWS_*`` environment variables).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"empty dataset URI {uri!r}; use file:///path, s3://bucket/key or a path")
    uri = uri.strip()
    parsed = urlparse(uri)
    if parsed.scheme == "":  # a plain path
        return LocalStore("/"), Path(uri).expanduser().resolve().as_posix().lstrip("/")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: file URIs need an absolute path (file:///path), not host {parsed.netloc!r}")
        path = Path(unquote(parsed.path))
        return LocalStore("/"), path.as_posix().lstrip("/")
    if parsed.scheme == "s3":
        from looptool.shared.config import S3Settings
        from looptool.shared.storage.s3 import S3Store

        if not parsed.netloc:
            raise StorageError(f"{uri}: no bucket; use s3://bucket/prefix")
        settings = s3 or S3Settings()
        if not settings.endpoint:
            raise StorageError(
                f"{uri}: no S3 endpoint configured; set storage.s3.endpoint or LOOPTOOL_S3_ENDPOINT"
            )
        store = S3Store(
            settings.endpoint,
            parsed.netloc,
            settings.access_key,
            settings.secret_key.get_secret_value(),
            secure=settings.secure,
            region=settings.region or None,
        )
        return store, parsed.path.lstrip("/")  # as S3Store.uri() writes it: not percent-encoded
    raise StorageError(f"unsupported URI {uri!r}; use file:///path, s3://bucket/key or a path")


def open_dataset(ref: DatasetRef | str, s3: "S3Settings | None" = None) -> Dataset:
    """Open a committed dataset by reference or URI; checks the hash in the reference if given."""
    uri = ref.uri if isinstance(ref, DatasetRef) else ref
    store, key = split_uri(uri, s3)
    ds = open_dataset_at(store, key)
    if isinstance(ref, DatasetRef) and ref.content_hash and ref.content_hash != ds.manifest["content_hash"]:
        raise StorageError(
            f"dataset {uri} has content hash {ds.manifest['content_hash'][:12]}…, the reference expects "
            f"{ref.content_hash[:12]}…; the dataset was replaced, re-run the stage that produced it"
        )
    return ds


def writer_for_uri(uri: str, s3: "S3Settings | None" = None, **kw) -> DatasetWriter:
    store, key = split_uri(uri, s3)
    return DatasetWriter(store, key, **kw)


if False:  # pragma: no cover - typing only
    from looptool.shared.config import S3Settings

__all__ = [
    "Dataset",
    "DatasetCorrupt",
    "DatasetWriter",
    "LocalStore",
    "NotFound",
    "ObjectStore",
    "RecordHasher",
    "StorageError",
    "dataset_exists",
    "open_dataset",
    "open_dataset_at",
    "split_uri",
    "writer_for_uri",
]
