"""Datasets in object storage: written in parts, made visible by committing a manifest.

Layout under a dataset prefix ``P``::

    P/parts/part-00000-<sha16>.jsonl     content-addressed parts (JSONL or Parquet)
    P/_journal/part-00000.json           one entry per flushed part (for resuming a writer)
    P/_manifest.json                     written last, atomically: the dataset exists once it does

The content hash is sha256 over the canonical JSON of every record, in order, one per line;
it does not depend on the format or on how records were split into parts.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from looptool.shared.records import DatasetRef, canonical_json, utcnow
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

MANIFEST = "_manifest.json"
JOURNAL = "_journal"
PARTS = "parts"
M = TypeVar("M", bound=BaseModel)


def _to_dict(record: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(record, BaseModel):
        return record.model_dump(mode="json")
    if isinstance(record, dict):
        return record
    raise TypeError(f"dataset records must be pydantic models or dicts, got {type(record).__name__}")


@dataclass
class PartInfo:
    key: str  # relative to the dataset prefix
    records: int
    sha256: str  # hash over the part's canonical record lines


class RecordHasher:
    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def update(self, record: dict[str, Any]) -> None:
        self._h.update(canonical_json(record).encode())
        self._h.update(b"\n")
        self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _encode_part(rows: list[dict[str, Any]], fmt: str) -> tuple[bytes, list[dict[str, Any]]]:
    """Serialize rows; return the bytes and the rows as a reader will see them."""
    if fmt == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode()
        return data, rows
    if fmt == "parquet":
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StorageError(f"records cannot be stored as Parquet ({exc}); use format 'jsonl'") from exc
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue(), table.to_pylist()
    raise StorageError(f"unknown dataset format {fmt!r}; use 'jsonl' or 'parquet'")


class DatasetWriter:
    """Write records in parts; ``commit()`` publishes the manifest and returns the DatasetRef.

    With ``resume=True`` parts flushed by an earlier, interrupted writer at the same prefix are
    kept; ``existing_records()`` yields them so the stage can skip work already done.
    """

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        kind: str = "samples",
        fmt: str = "jsonl",
        part_size: int = 5000,
        resume: bool = False,
        meta: dict[str, Any] | None = None,
    ):
        if fmt not in ("jsonl", "parquet"):
            raise StorageError(f"unknown dataset format {fmt!r}; use 'jsonl' or 'parquet'")
        self.store, self.prefix, self.kind, self.fmt = store, prefix.strip("/"), kind, fmt
        self.part_size = max(1, part_size)
        self.meta = dict(meta or {})
        self._buf: list[dict[str, Any]] = []
        self.parts: list[PartInfo] = []
        self._committed: DatasetRef | None = None
        if store.exists(self._key(MANIFEST)):
            raise StorageError(f"dataset {store.uri(self.prefix)} is already committed; read it instead of rewriting")
        if resume:
            for key in store.list(self._key(JOURNAL) + "/"):
                info = json.loads(store.get_bytes(key))
                if store.exists(self._key(info["key"])):
                    self.parts.append(PartInfo(**info))
            self.parts.sort(key=lambda p: p.key)
        else:
            store.delete_prefix(self.prefix + "/")

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def existing_records(self) -> Iterator[dict[str, Any]]:
        for part in self.parts:
            yield from _read_part(self.store, self._key(part.key), self.fmt)

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        if self._committed is not None:
            raise StorageError("dataset already committed")
        self._buf.append(_to_dict(record))
        if len(self._buf) >= self.part_size:
            self.flush()

    def write_many(self, records: Iterable[BaseModel | dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def flush(self) -> None:
        """Persist buffered records as one part (durable: survives a crash, for ``resume``)."""
        if not self._buf:
            return
        data, rows = _encode_part(self._buf, self.fmt)
        h = RecordHasher()
        for r in rows:
            h.update(r)
        index = len(self.parts)
        rel = f"{PARTS}/part-{index:05d}-{h.hexdigest()[:16]}.{self.fmt}"
        self.store.put_bytes(self._key(rel), data)
        info = PartInfo(key=rel, records=len(rows), sha256=h.hexdigest())
        self.store.put_bytes(self._key(f"{JOURNAL}/part-{index:05d}.json"), json.dumps(info.__dict__).encode())
        self.parts.append(info)
        self._buf = []

    def commit(self) -> DatasetRef:
        if self._committed is not None:
            return self._committed
        self.flush()
        total = RecordHasher()
        for record in self.existing_records():
            total.update(record)
        manifest = {
            "version": 1,
            "kind": self.kind,
            "format": self.fmt,
            "record_count": total.count,
            "content_hash": total.hexdigest(),
            "parts": [p.__dict__ for p in self.parts],
            "created_at": utcnow(),
            "meta": self.meta,
        }
        self.store.put_bytes(self._key(MANIFEST), json.dumps(manifest, indent=1).encode())
        for key in list(self.store.list(self._key(JOURNAL) + "/")):
            self.store.delete(key)
        self._committed = DatasetRef(
            uri=self.store.uri(self.prefix), content_hash=total.hexdigest(), record_count=total.count, format=self.fmt, kind=self.kind  # type: ignore[arg-type]
        )
        return self._committed

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.flush()  # keep finished work for a resumed writer; nothing becomes visible


def _read_part(store: ObjectStore, key: str, fmt: str) -> Iterator[dict[str, Any]]:
    if fmt == "jsonl":
        with store.open_read(key) as raw:
            for line in io.TextIOWrapper(io.BufferedReader(raw, 1 << 20), encoding="utf-8"):  # type: ignore[arg-type]
                if line.strip():
                    yield json.loads(line)
    else:
        pf = pq.ParquetFile(io.BytesIO(store.get_bytes(key)))
        for batch in pf.iter_batches(batch_size=1024):
            yield from batch.to_pylist()


class Dataset:
    """A committed dataset: its manifest, and streaming record access."""

    def __init__(self, store: ObjectStore, prefix: str, manifest: dict[str, Any]):
        self.store, self.prefix, self.manifest = store, prefix.strip("/"), manifest

    @property
    def ref(self) -> DatasetRef:
        m = self.manifest
        return DatasetRef(
            uri=self.store.uri(self.prefix), content_hash=m["content_hash"], record_count=m["record_count"], format=m["format"], kind=m["kind"]
        )

    def __len__(self) -> int:
        return int(self.manifest["record_count"])

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        for part in self.manifest["parts"]:
            yield from _read_part(self.store, f"{self.prefix}/{part['key']}", self.manifest["format"])

    def iter(self, model: type[M]) -> Iterator[M]:
        for d in self.iter_dicts():
            yield model.model_validate(d)

    def verify(self) -> str:
        """Recompute the content hash while streaming; raise if it does not match the manifest."""
        h = RecordHasher()
        for r in self.iter_dicts():
            h.update(r)
        if h.hexdigest() != self.manifest["content_hash"] or h.count != self.manifest["record_count"]:
            raise StorageError(f"dataset {self.store.uri(self.prefix)} is corrupt: content hash mismatch")
        return h.hexdigest()


def dataset_exists(store: ObjectStore, prefix: str) -> bool:
    return store.exists(f"{prefix.strip('/')}/{MANIFEST}")


def open_dataset_at(store: ObjectStore, prefix: str) -> Dataset:
    key = f"{prefix.strip('/')}/{MANIFEST}"
    try:
        manifest = json.loads(store.get_bytes(key))
    except NotFound:
        raise NotFound(
            f"no committed dataset at {store.uri(prefix.strip('/'))} (missing {MANIFEST}); "
            "check the URI, or run the stage that writes it"
        ) from None
    return Dataset(store, prefix, manifest)
