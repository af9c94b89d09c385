"""Datasets in object storage: written in parts, made visible by committing a manifest.

Layout under a dataset prefix ``P``::

    P/parts/part-00000-<sha16>.jsonl     content-addressed parts (JSONL or Parquet)
    P/_journal/part-00000.json           one entry per flushed part (for resuming a writer)
    P/_manifest.json                     written last, atomically: the dataset exists once it does

Records are JSON objects (pydantic models are dumped with ``mode="json"``; plain dicts must have
string keys). The **content hash** is sha256 over the canonical JSON of every record (sorted keys,
no whitespace, UTF-8), in order, one per line. It depends neither on the format nor on how the
records were split into parts. JSONL parts hold exactly those canonical lines, so writing a JSONL
part and hashing it are one serialisation.

Parquet parts use native columns when the records survive a Parquet round trip exactly (regular
records such as verl's ``prompt`` / ``reward_model`` / ``extra_info`` rows). Irregular records
(arguments of varying types, dicts with varying keys, empty objects) would be changed by Arrow's
schema inference (missing keys become nulls, ints become floats), so such a part stores each
record as one canonical-JSON string column instead, marked in the Parquet schema metadata. Either
way a reader gets back exactly the records that were written.
"""

from __future__ import annotations

import io
import json
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from looptool.shared.records import DatasetRef, canonical_json, utcnow
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

MANIFEST = "_manifest.json"
JOURNAL = "_journal"
PARTS = "parts"
FORMATS = ("jsonl", "parquet")
PARQUET_ENCODING_KEY = b"looptool.encoding"
PARQUET_JSON_COLUMN = "record_json"
_PART_INDEX_RE = re.compile(r"part-(\d+)")
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("looptool.storage")


def _to_dict(record: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(record, BaseModel):
        return record.model_dump(mode="json")
    if isinstance(record, dict):
        return record
    raise StorageError(f"dataset records must be pydantic models or dicts, got {type(record).__name__}")


def canonical_line(record: dict[str, Any]) -> bytes:
    """The record as one canonical JSON line (the unit of the content hash)."""
    try:
        return (canonical_json(record) + "\n").encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise StorageError(f"record is not JSON data ({exc}); store JSON-compatible values with string keys") from None


@dataclass
class PartInfo:
    key: str  # relative to the dataset prefix
    records: int
    sha256: str  # hash over the part's canonical record lines


class RecordHasher:
    """The dataset content hash, fed record by record (or canonical line by line)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def update(self, record: dict[str, Any]) -> None:
        self.update_line(canonical_line(record))

    def update_line(self, line: bytes) -> None:
        self._h.update(line)
        self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _encode_parquet(rows: list[dict[str, Any]], lines: list[bytes]) -> bytes:
    try:
        table = pa.Table.from_pylist(rows)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        back = pq.read_table(pa.BufferReader(data)).to_pylist()
        if len(back) == len(lines) and all(canonical_line(b) == line for b, line in zip(back, lines)):
            return data
    except (pa.ArrowException, StorageError, TypeError, ValueError, OverflowError):
        pass
    # Irregular records: one canonical JSON string per row (still Parquet, still exact).
    column = pa.array([line[:-1].decode("utf-8") for line in lines], type=pa.large_string())
    table = pa.table({PARQUET_JSON_COLUMN: column}).replace_schema_metadata({PARQUET_ENCODING_KEY: b"json"})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _encode_part(rows: list[dict[str, Any]], fmt: str) -> tuple[bytes, list[bytes]]:
    """Serialize rows; return the bytes and the canonical lines a reader will hash."""
    lines = [canonical_line(r) for r in rows]
    if fmt == "jsonl":
        return b"".join(lines), lines
    if fmt == "parquet":
        return _encode_parquet(rows, lines), lines
    raise StorageError(f"unknown dataset format {fmt!r}; use 'jsonl' or 'parquet'")


def _format_of(key: str, default: str) -> str:
    for fmt in FORMATS:
        if key.endswith("." + fmt):
            return fmt
    return default


def _read_part(store: ObjectStore, key: str, fmt: str) -> Iterator[dict[str, Any]]:
    """Stream one part's records (a JSONL part line by line, a Parquet part batch by batch)."""
    fmt = _format_of(key, fmt)
    with store.open_read(key) as raw:
        try:
            if fmt == "jsonl":
                reader = io.BufferedReader(raw, 1 << 20) if not isinstance(raw, io.BufferedIOBase) else raw
                for line in reader:
                    if line.strip():
                        yield json.loads(line)
                return
            source: BinaryIO | pa.BufferReader = raw if raw.seekable() else pa.BufferReader(raw.read())
            pf = pq.ParquetFile(source)
            as_json = (pf.schema_arrow.metadata or {}).get(PARQUET_ENCODING_KEY) == b"json"
            for batch in pf.iter_batches(batch_size=4096):
                if as_json:
                    for text in batch.column(0).to_pylist():
                        yield json.loads(text)
                else:
                    yield from batch.to_pylist()
        except (json.JSONDecodeError, UnicodeDecodeError, pa.ArrowException) as exc:
            raise StorageError(f"{store.uri(key)} is corrupt ({exc.__class__.__name__}: {exc}); rewrite the dataset") from None


def _part_index(key: str) -> int:
    m = _PART_INDEX_RE.search(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else -1


def _check_prefix(store: ObjectStore, prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        raise StorageError(f"{store.uri('')}: a dataset URI must name a folder inside the store, not its root")
    return prefix


class DatasetWriter:
    """Write records in parts; ``commit()`` publishes the manifest and returns the DatasetRef.

    Nothing is visible to readers before ``commit()``. Without ``resume``, leftovers of an earlier
    uncommitted writer at the same prefix (its ``parts/`` and ``_journal/``) are removed; nothing
    else under the prefix is touched. With ``resume=True`` parts flushed by an earlier, interrupted
    writer are kept; ``existing_records()`` yields them so the stage can skip work already done.
    ``abort()`` removes everything this writer (and its predecessors) wrote.
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
        if fmt not in FORMATS:
            raise StorageError(f"unknown dataset format {fmt!r}; use 'jsonl' or 'parquet'")
        self.store, self.kind, self.fmt = store, kind, fmt
        self.prefix = _check_prefix(store, prefix)
        self.part_size = max(1, part_size)
        self.meta = dict(meta or {})
        self._buf: list[dict[str, Any]] = []
        self.parts: list[PartInfo] = []
        self._hasher = RecordHasher()
        self._hashed_parts = 0  # parts[:_hashed_parts] are in _hasher
        self._committed: DatasetRef | None = None
        self._aborted = False
        if store.exists(self._key(MANIFEST)):
            raise StorageError(f"dataset {store.uri(self.prefix)} is already committed; read it instead of rewriting")
        if resume:
            for key in store.list(self._key(JOURNAL) + "/"):
                try:
                    info = PartInfo(**json.loads(store.get_bytes(key)))
                except (ValueError, TypeError) as exc:
                    log.warning("ignoring unreadable journal entry", extra={"key": key, "error": str(exc)})
                    continue
                if store.exists(self._key(info.key)):
                    self.parts.append(info)
            self.parts.sort(key=lambda p: _part_index(p.key))
            kept = {p.key for p in self.parts}
            for key in list(store.list(self._key(PARTS) + "/")):  # parts whose journal entry never landed
                if key[len(self.prefix) + 1 :] not in kept:
                    store.delete(key)
        else:
            store.delete_prefix(self._key(PARTS) + "/")
            store.delete_prefix(self._key(JOURNAL) + "/")

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix)

    @property
    def records_flushed(self) -> int:
        return sum(p.records for p in self.parts)

    def existing_records(self) -> Iterator[dict[str, Any]]:
        """Records of the parts flushed so far (after ``resume``: the earlier writer's)."""
        for part in list(self.parts):
            yield from _read_part(self.store, self._key(part.key), self.fmt)

    def _check_open(self) -> None:
        if self._committed is not None:
            raise StorageError(f"dataset {self.uri} is already committed")
        if self._aborted:
            raise StorageError(f"writer for {self.uri} was aborted")

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        self._check_open()
        self._buf.append(_to_dict(record))
        if len(self._buf) >= self.part_size:
            self.flush()

    def write_many(self, records: Iterable[BaseModel | dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def _catch_up(self) -> None:
        """Feed parts kept by ``resume`` into the running hash (streaming, verifying each)."""
        while self._hashed_parts < len(self.parts):
            part = self.parts[self._hashed_parts]
            part_hash = RecordHasher()
            for record in _read_part(self.store, self._key(part.key), self.fmt):
                line = canonical_line(record)
                part_hash.update_line(line)
                self._hasher.update_line(line)
            if part_hash.hexdigest() != part.sha256 or part_hash.count != part.records:
                raise StorageError(
                    f"{self.store.uri(self._key(part.key))} does not match its journal entry; "
                    f"delete {self.uri} and rerun the stage"
                )
            self._hashed_parts += 1

    def flush(self) -> None:
        """Persist buffered records as one part (durable: survives a crash, for ``resume``)."""
        self._check_open()
        if not self._buf:
            return
        self._catch_up()
        data, lines = _encode_part(self._buf, self.fmt)
        part_hash = RecordHasher()
        for line in lines:
            part_hash.update_line(line)
        index = max((_part_index(p.key) for p in self.parts), default=-1) + 1
        rel = f"{PARTS}/part-{index:05d}-{part_hash.hexdigest()[:16]}.{self.fmt}"
        self.store.put_bytes(self._key(rel), data)
        info = PartInfo(key=rel, records=len(lines), sha256=part_hash.hexdigest())
        self.store.put_bytes(self._key(f"{JOURNAL}/part-{index:05d}.json"), json.dumps(info.__dict__).encode())
        for line in lines:
            self._hasher.update_line(line)
        self.parts.append(info)
        self._hashed_parts += 1
        self._buf = []

    def commit(self) -> DatasetRef:
        """Flush, then publish the manifest (one atomic put). Idempotent."""
        if self._committed is not None:
            return self._committed
        self.flush()
        self._catch_up()
        digest, count = self._hasher.hexdigest(), self._hasher.count
        manifest = {
            "version": 1,
            "kind": self.kind,
            "format": self.fmt,
            "record_count": count,
            "content_hash": digest,
            "parts": [p.__dict__ for p in self.parts],
            "created_at": utcnow(),
            "meta": self.meta,
        }
        ref = DatasetRef(uri=self.uri, content_hash=digest, record_count=count, format=self.fmt, kind=self.kind)  # type: ignore[arg-type]
        self.store.put_bytes(self._key(MANIFEST), json.dumps(manifest, indent=1).encode())
        self._committed = ref  # visible from here on; the journal is only bookkeeping
        try:
            self.store.delete_prefix(self._key(JOURNAL) + "/")
        except StorageError as exc:
            log.warning("could not remove the writer journal", extra={"uri": self.uri, "error": str(exc)})
        return ref

    def abort(self) -> None:
        """Drop everything written at this prefix so far; nothing becomes visible."""
        if self._committed is not None:
            raise StorageError(f"dataset {self.uri} is already committed; cannot abort")
        self._buf = []
        self.store.delete_prefix(self._key(PARTS) + "/")
        self.store.delete_prefix(self._key(JOURNAL) + "/")
        self.parts = []
        self._aborted = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        if self._aborted or self._committed is not None:
            return
        try:
            self.flush()  # keep finished work for a resumed writer; nothing becomes visible
        except Exception as flush_exc:  # do not mask the original error
            log.warning("could not flush after error", extra={"uri": self.uri, "error": str(flush_exc)})


class Dataset:
    """A committed dataset: its manifest, and streaming record access (one part at a time)."""

    def __init__(self, store: ObjectStore, prefix: str, manifest: dict[str, Any]):
        self.store, self.prefix, self.manifest = store, prefix.strip("/"), manifest

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix)

    @property
    def ref(self) -> DatasetRef:
        m = self.manifest
        return DatasetRef(
            uri=self.uri, content_hash=m["content_hash"], record_count=m["record_count"], format=m["format"], kind=m["kind"]
        )

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def __len__(self) -> int:
        return int(self.manifest["record_count"])

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        for part in self.manifest["parts"]:
            yield from _read_part(self.store, f"{self.prefix}/{part['key']}", self.manifest["format"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_dicts()

    def iter(self, model: type[M]) -> Iterator[M]:
        for d in self.iter_dicts():
            yield model.model_validate(d)

    def verify(self) -> str:
        """Recompute the content hash while streaming; raise if it does not match the manifest."""
        h = RecordHasher()
        for r in self.iter_dicts():
            h.update(r)
        if h.hexdigest() != self.manifest["content_hash"] or h.count != self.manifest["record_count"]:
            raise StorageError(
                f"dataset {self.uri} is corrupt: {h.count} records with hash {h.hexdigest()[:12]}…, the manifest says "
                f"{self.manifest['record_count']} with {self.manifest['content_hash'][:12]}…; rewrite the dataset"
            )
        return h.hexdigest()


def dataset_exists(store: ObjectStore, prefix: str) -> bool:
    return store.exists(f"{_check_prefix(store, prefix)}/{MANIFEST}")


_MANIFEST_FIELDS = ("format", "record_count", "content_hash", "parts", "kind")


def open_dataset_at(store: ObjectStore, prefix: str) -> Dataset:
    prefix = _check_prefix(store, prefix)
    key = f"{prefix}/{MANIFEST}"
    try:
        manifest = json.loads(store.get_bytes(key))
    except NotFound:
        raise NotFound(
            f"no committed dataset at {store.uri(prefix)} (missing {MANIFEST}); "
            "check the URI, or run the stage that writes it"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StorageError(f"{store.uri(key)} is not a valid manifest ({exc}); rewrite the dataset") from None
    if not isinstance(manifest, dict) or any(f not in manifest for f in _MANIFEST_FIELDS):
        raise StorageError(f"{store.uri(key)} is not a LoopTool dataset manifest; check the URI")
    return Dataset(store, prefix, manifest)
