"""Storage: one small object-store interface (local directory, S3/MinIO) and datasets on top of it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from looptool.shared.records import DatasetRef
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError
from looptool.shared.storage.datasets import (
    Dataset,
    DatasetWriter,
    RecordHasher,
    dataset_exists,
    open_dataset_at,
)
from looptool.shared.storage.local import LocalStore


def split_uri(uri: str, s3: "S3Settings | None" = None) -> tuple[ObjectStore, str]:
    """Resolve a URI to (store, key). file:///abs/path → LocalStore('/'), s3://bucket/key → S3Store."""
    if uri.startswith("/"):
        uri = Path(uri).as_uri()
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        return LocalStore("/"), path.as_posix().lstrip("/")
    if parsed.scheme == "s3":
        from looptool.shared.config import S3Settings
        from looptool.shared.storage.s3 import S3Store

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
        return store, parsed.path.lstrip("/")
    raise StorageError(f"unsupported URI {uri!r}; use file:///path or s3://bucket/key")


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
