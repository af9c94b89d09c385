"""Datasets in object storage: written in parts, made visible by committing a manifest.

Layout under a dataset prefix ``P``::

    P/parts/part-00000-<sha16>.jsonl     content-addressed parts (JSONL or Parquet), one atomic put each
    P/_manifest.json                     written last, atomically: the dataset exists once it does

A writer costs one request per part plus three (check, clean-up listing, manifest); a reader one
per part plus the manifest.

Records are JSON objects (pydantic models are dumped with ``mode="json"``; plain dicts must have
string keys). The **content hash** is sha256 over the canonical JSON of every record (sorted keys,
no whitespace, UTF-8), in order, one per line. It depends neither on the format nor on how the
records were split into parts. JSONL parts hold exactly those canonical lines, so writing a JSONL
part and hashing it are one serialisation.

Every read of a committed dataset is verified: the manifest must be consistent (part hashes
match part names, part record counts add up), each part is fetched whole and its canonical lines
must hash to the manifest's ``sha256`` (and hold its record count) before any of its records is
yielded, and after the last part the whole content hash and record count must match. A mismatch
raises ``DatasetCorrupt`` (a ``StorageError``) naming the dataset URI, the part and the fix; the
data stages turn it into a ``StageError``. JSON is written and read by ``shared/jsoncodec.py``
(orjson, byte-identical to the standard library's canonical JSON).

Parquet parts use native columns when the records survive a Parquet round trip exactly (regular
records such as verl's ``prompt`` / ``reward_model`` / ``extra_info`` rows). Irregular records
(arguments of varying types, dicts with varying keys, empty objects) would be changed by Arrow's
schema inference (missing keys become nulls, ints become floats), so such a part stores each
record as one canonical-JSON string column instead, marked in the Parquet schema metadata. Either
way a reader gets back exactly the records that were written.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, TypeVar, cast

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from looptool.shared import jsoncodec
from looptool.shared.records import DatasetRef, utcnow
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

MANIFEST = "_manifest.json"
PARTS = "parts"
FORMATS = ("jsonl", "parquet")
PARQUET_ENCODING_KEY = b"looptool.encoding"
PARQUET_JSON_COLUMN = "record_json"
_PART_NAME_RE = re.compile(r"part-(\d+)-([0-9a-f]{16})\.(?:jsonl|parquet)")
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
        return jsoncodec.dumps(record) + b"\n"
    except jsoncodec.EncodeErrors as exc:
        raise StorageError(f"record is not JSON data ({exc}); store JSON-compatible values with string keys") from None


def canonical_lines(records: list[dict[str, Any]]) -> bytes:
    """Canonical lines of many records, concatenated (what a JSONL part holds and the hash reads)."""
    try:
        return jsoncodec.dumps_lines(records)
    except jsoncodec.EncodeErrors as exc:
        raise StorageError(f"record is not JSON data ({exc}); store JSON-compatible values with string keys") from None


class DatasetCorrupt(StorageError):
    """A committed dataset's bytes do not match its manifest (a part altered, lost or replaced, or
    the manifest edited). ``uri`` names the dataset, ``part`` the part (or the manifest)."""

    def __init__(self, uri: str, part: str, problem: str):
        self.uri, self.part, self.problem = uri, part, problem
        super().__init__(
            f"dataset {uri} is corrupt: {part} {problem}; re-run the stage that wrote it: delete {uri} and run it again"
        )


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

    def update_lines(self, blob: bytes, count: int) -> None:
        """Feed ``count`` canonical lines at once (a JSONL part's bytes)."""
        self._h.update(blob)
        self.count += count

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _encode_parquet(rows: list[dict[str, Any]], lines: bytes) -> bytes:
    try:
        table = pa.Table.from_pylist(rows)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        back = pq.read_table(pa.BufferReader(data)).to_pylist()
        if len(back) == len(rows) and jsoncodec.dumps_lines(back) == lines:
            return data
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    # Irregular records: one canonical JSON string per row (still Parquet, still exact).
    texts = lines.decode("utf-8").split("\n")[:-1]
    column = pa.array(texts, type=pa.large_string())
    table = pa.table({PARQUET_JSON_COLUMN: column}).replace_schema_metadata({PARQUET_ENCODING_KEY: b"json"})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _encode_part(rows: list[dict[str, Any]], fmt: str) -> tuple[bytes, bytes]:
    """Serialize rows; return the part's bytes and the canonical lines a reader will hash."""
    lines = canonical_lines(rows)
    if fmt == "jsonl":
        return lines, lines
    if fmt == "parquet":
        return _encode_parquet(rows, lines), lines
    raise StorageError(f"unknown dataset format {fmt!r}; use 'jsonl' or 'parquet'")


def _format_of(key: str, default: str) -> str:
    for fmt in FORMATS:
        if key.endswith("." + fmt):
            return fmt
    return default


def _part_lines(key: str, fmt: str, data: bytes) -> tuple[bytes, list[dict[str, Any]] | None]:
    """A part's canonical lines (what its hash covers) from its bytes, and its records when getting
    the lines meant decoding them (native Parquet columns)."""
    if _format_of(key, fmt) == "jsonl":
        return data, None
    pf = pq.ParquetFile(pa.BufferReader(data))
    table = pf.read()
    if (pf.schema_arrow.metadata or {}).get(PARQUET_ENCODING_KEY) == b"json":
        texts = table.column(0).to_pylist()
        return ("\n".join(texts) + "\n").encode("utf-8") if texts else b"", None
    rows = table.to_pylist()
    return canonical_lines(rows), rows


def _decode(lines: bytes) -> Iterator[dict[str, Any]]:
    return jsoncodec.iter_lines(lines)


_READ_CHUNK = 4 << 20


def _read_all(raw: BinaryIO) -> bytes:
    """A stream's bytes: in one read from a buffered stream (a file reads its known size at once,
    an S3 response's ``readall`` the whole body), else in 4 MiB reads (``read()`` of a plain raw
    stream would go 8 KiB at a time)."""
    if isinstance(raw, (io.BufferedIOBase, io.FileIO)):
        return raw.read()
    chunks = []
    while chunk := raw.read(_READ_CHUNK):
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass
class _Part:
    """A fetched and verified part."""

    lines: bytes  # its canonical lines: what the part hash and the content hash cover
    rows: list[dict[str, Any]] | None  # its records, where getting the lines decoded them
    split: list[bytes]  # else: ``lines`` split, one canonical JSON text per record

    @property
    def count(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.split)

    def records(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows) if self.rows is not None else jsoncodec.iter_canonical(self.split, self.lines)


def _checked_part(store: ObjectStore, key: str, fmt: str, sha256: str, records: int | None) -> _Part | str:
    """Fetch a part whole (so that its bytes are checked before any of its records is used) and
    check it: its canonical lines hash to ``sha256`` (or start with it: the
    short hash in a part's name) and hold ``records`` records. Returns the part, or what is wrong
    with it, as a phrase. Errors of the store itself (unreachable, denied) propagate: they say
    nothing about the data."""
    try:
        with store.open_read(key) as raw:
            data = _read_all(raw)
    except NotFound:
        return "is missing"
    try:
        lines, rows = _part_lines(key, fmt, data)
        digest = hashlib.sha256(lines).hexdigest()
        if not digest.startswith(sha256) and rows is None:
            # The same records written as other (non-canonical) JSON lines still verify.
            rows = list(_decode(lines))
            lines = canonical_lines(rows)
            digest = hashlib.sha256(lines).hexdigest()
    except (pa.ArrowException, OSError, StorageError, *jsoncodec.DecodeErrors) as exc:
        detail = " ".join(str(exc).split())[:200]  # one line, whatever the library wrote
        return f"is unreadable ({exc.__class__.__name__}: {detail})"
    if not digest.startswith(sha256):
        return f"has content hash {digest[:12]}…, the manifest says {sha256[:12]}…"
    split: list[bytes] = []
    if rows is None:
        split = lines.split(b"\n")
        split.pop()  # after the last newline
    part = _Part(lines, rows, split)
    if records is not None and part.count != records:
        return f"holds {part.count} records, the manifest says {records}"
    return part


def _check_prefix(store: ObjectStore, prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        raise StorageError(f"{store.uri('')}: a dataset URI must name a folder inside the store, not its root")
    return prefix


class DatasetWriter:
    """Write records in parts; ``commit()`` publishes the manifest and returns the DatasetRef.

    Nothing is visible to readers before ``commit()``. Each part is one atomic put whose name
    carries its index and the first 16 hex digits of its content hash, so the parts themselves are
    the writer's journal: a part either exists complete or not at all.

    Without ``resume``, parts left by an earlier uncommitted writer at the same prefix are removed
    (nothing else under the prefix is touched). With ``resume=True`` they are kept (each is read
    once and checked against the hash in its name); ``existing_records()`` yields their records so
    the stage can skip work already done. ``abort()`` removes every part. One writer per prefix at
    a time.

    With ``pipeline=True`` (default) a full buffer is uploaded by a background thread while the
    caller keeps writing (at most one upload in flight, in order), which overlaps encoding with
    network I/O. ``flush()``, ``commit()``, ``abort()`` and leaving a ``with`` block wait for it;
    an upload error is raised by the next call. Finish a writer (commit, abort or ``with``) before
    resuming the same prefix in the same process.
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
        pipeline: bool = True,
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
        self._committed: DatasetRef | None = None
        self._aborted = False
        self._failed: BaseException | None = None
        self._next_index = 0
        self._pipeline = pipeline
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[PartInfo] | None = None
        if store.exists(self._key(MANIFEST)):
            raise StorageError(f"dataset {store.uri(self.prefix)} is already committed; read it instead of rewriting")
        if resume:
            self._resume()
        else:
            store.delete_prefix(self._key(PARTS) + "/")

    def _resume(self) -> None:
        """Adopt the parts an interrupted writer left, in index order, verifying each."""
        found = []
        for key in self.store.list(self._key(PARTS) + "/"):
            m = _PART_NAME_RE.fullmatch(key.rsplit("/", 1)[-1])
            if m:
                found.append((int(m.group(1)), m.group(2), key[len(self.prefix) + 1 :]))
        indexes = [index for index, _, _ in found]
        if len(set(indexes)) != len(indexes):
            raise StorageError(
                f"{self.uri} holds two parts with the same index (two writers at once?); "
                "delete it and rerun the stage"
            )
        for index, short_hash, rel in sorted(found):
            checked = _checked_part(self.store, self._key(rel), self.fmt, short_hash, None)
            if isinstance(checked, str):
                raise StorageError(
                    f"{self.store.uri(self._key(rel))} does not match the hash in its name ({checked}); "
                    f"delete {self.uri} and rerun the stage"
                )
            self._hasher.update_lines(checked.lines, checked.count)
            digest = hashlib.sha256(checked.lines).hexdigest()
            self.parts.append(PartInfo(key=rel, records=checked.count, sha256=digest))
            self._next_index = index + 1

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix)

    @property
    def records_flushed(self) -> int:
        return sum(p.records for p in self.parts)

    def existing_records(self) -> Iterator[dict[str, Any]]:
        """Records of the parts flushed so far (after ``resume``: the earlier writer's), each part
        checked against its hash first."""
        for part in list(self.parts):
            checked = _checked_part(self.store, self._key(part.key), self.fmt, part.sha256, part.records)
            if isinstance(checked, str):
                raise StorageError(
                    f"{self.store.uri(self._key(part.key))} {checked} (changed since it was written); "
                    f"delete {self.uri} and rerun the stage"
                )
            yield from checked.records()

    def _check_open(self) -> None:
        if self._committed is not None:
            raise StorageError(f"dataset {self.uri} is already committed")
        if self._aborted:
            raise StorageError(f"writer for {self.uri} was aborted")
        if self._failed is not None:
            raise StorageError(f"writer for {self.uri} failed earlier ({self._failed}); resume with a new writer")

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        self._check_open()
        self._buf.append(_to_dict(record))
        if len(self._buf) >= self.part_size:
            self._flush(wait=False)

    def write_many(self, records: Iterable[BaseModel | dict[str, Any]]) -> None:
        self._check_open()
        it = iter(records)
        while True:  # a part's worth at a time: no Python-level step per record for plain dicts
            chunk = list(itertools.islice(it, self.part_size - len(self._buf)))
            if not chunk:
                return
            if set(map(type, chunk)) != {dict}:
                for r in chunk:  # models (or bad records): one by one, exactly as ``write``
                    self.write(r)
                continue
            self._buf.extend(cast("list[dict[str, Any]]", chunk))  # all plain dicts, checked above
            if len(self._buf) >= self.part_size:
                self._flush(wait=False)

    def flush(self) -> None:
        """Persist buffered records as one part; when this returns the part is durable (it
        survives a crash, for ``resume``)."""
        self._flush(wait=True)

    def _wait_pending(self) -> None:
        if self._pending is None:
            return
        future, self._pending = self._pending, None
        try:
            info = future.result()
        except BaseException as exc:
            self._failed = exc
            raise
        self.parts.append(info)

    def _flush(self, wait: bool) -> None:
        """Encode the buffer as the next part and upload it. Automatic flushes (from ``write``)
        upload in a background thread while the caller keeps producing records: one upload in
        flight at most, in order, so parts still land as a gap-free sequence."""
        self._check_open()
        if self._buf:
            data, lines = _encode_part(self._buf, self.fmt)
            count, index = len(self._buf), self._next_index
            self._wait_pending()  # the previous part first: keeps order and bounds memory
            self._next_index += 1
            self._buf = []
            if self._pipeline and not wait:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="looptool-upload")
                self._pending = self._executor.submit(self._store_part, index, data, lines, count)
            else:
                try:
                    info = self._store_part(index, data, lines, count)
                except BaseException as exc:
                    self._failed = exc
                    raise
                self.parts.append(info)
        if wait:
            self._wait_pending()

    def _store_part(self, index: int, data: bytes, lines: bytes, count: int) -> PartInfo:
        """Hash and upload one part; pipelined, in the upload thread (hashlib and the network let
        the caller's thread go on encoding). Parts reach here one at a time, in order, so the
        content hash sees their lines in order."""
        digest = hashlib.sha256(lines).hexdigest()
        rel = f"{PARTS}/part-{index:05d}-{digest[:16]}.{self.fmt}"
        self._hasher.update_lines(lines, count)
        self.store.put_bytes(self._key(rel), data)
        return PartInfo(key=rel, records=count, sha256=digest)

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def commit(self) -> DatasetRef:
        """Flush, then publish the manifest (one atomic put). Idempotent."""
        if self._committed is not None:
            return self._committed
        self.flush()
        self._shutdown()
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
        ref = DatasetRef(uri=self.uri, content_hash=digest, record_count=count, format=self.fmt, kind=self.kind)
        self.store.put_bytes(self._key(MANIFEST), json.dumps(manifest, indent=1).encode())
        self._committed = ref
        return ref

    def abort(self) -> None:
        """Drop everything written at this prefix so far; nothing becomes visible."""
        if self._committed is not None:
            raise StorageError(f"dataset {self.uri} is already committed; cannot abort")
        self._buf = []
        try:
            self._wait_pending()
        except BaseException:
            pass  # the part is being removed anyway
        self._shutdown()
        self._aborted = True
        self.store.delete_prefix(self._key(PARTS) + "/")
        self.parts = []

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
        finally:
            self._shutdown()


class Dataset:
    """A committed dataset: its manifest, and streaming record access (part by part, the next
    part fetched ahead while the current one is decoded)."""

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

    def _parts(self) -> Iterator[tuple[str, _Part]]:
        """Each part's key and the part, checked against the manifest before it is handed out;
        after the last part, the content hash and record count of the whole dataset too.

        The next part is fetched and checked by a background thread while the caller decodes the
        current one (the socket reads and hashlib release the GIL), so at most two parts are in
        memory. The thread checks parts strictly in order and feeds the content hash as it goes;
        a damaged part is still reported when the caller reaches it, before any of its records."""
        m, h = self.manifest, RecordHasher()
        entries: list[dict[str, Any]] = m["parts"]

        def fetch(entry: dict[str, Any]) -> _Part | str:
            part = _checked_part(self.store, f"{self.prefix}/{entry['key']}", m["format"], entry["sha256"], entry["records"])
            if not isinstance(part, str):
                h.update_lines(part.lines, part.count)  # one worker, parts submitted in order
            return part

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="looptool-prefetch") if len(entries) > 1 else None
        try:
            ahead: Future[_Part | str] | None = pool.submit(fetch, entries[0]) if pool else None
            for i, entry in enumerate(entries):
                if ahead is None:
                    part = fetch(entry)
                else:
                    part = ahead.result()
                    ahead = pool.submit(fetch, entries[i + 1]) if pool and i + 1 < len(entries) else None
                if isinstance(part, str):
                    raise DatasetCorrupt(self.uri, f"part {entry['key']}", part)
                yield entry["key"], part
        finally:
            if pool is not None:  # a caller that stops early: drop the part fetched ahead
                pool.shutdown(wait=False, cancel_futures=True)
        if h.hexdigest() != m["content_hash"] or h.count != m["record_count"]:
            raise DatasetCorrupt(
                self.uri,
                MANIFEST,
                f"says {m['record_count']} records with content hash {str(m['content_hash'])[:12]}…, "
                f"the parts hold {h.count} with {h.hexdigest()[:12]}…",
            )

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        """The records, one part at a time; each part's bytes are verified before its records are
        yielded (``DatasetCorrupt`` names the damaged part)."""
        for rel, part in self._parts():
            try:
                yield from part.records()
            except jsoncodec.DecodeErrors as exc:  # verified bytes that are not JSON: written broken
                raise DatasetCorrupt(self.uri, f"part {rel}", f"is not JSON lines ({exc})") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_dicts()

    def iter(self, model: type[M]) -> Iterator[M]:
        """The records as ``model`` instances. JSON lines are validated straight from their bytes
        (pydantic's own parser: no intermediate dicts); a line that fails is validated from its
        decoded dict, so both paths accept exactly what ``model_validate`` accepts."""
        validate_json, validate = model.model_validate_json, model.model_validate
        for rel, part in self._parts():
            if part.rows is not None:
                yield from map(validate, part.rows)
                continue
            for line in part.split:
                try:
                    yield validate_json(line)
                except ValidationError:
                    try:
                        record = jsoncodec.loads(line)
                    except jsoncodec.DecodeErrors as exc:
                        raise DatasetCorrupt(self.uri, f"part {rel}", f"is not JSON lines ({exc})") from None
                    yield validate(record)

    def verify(self) -> str:
        """Check every part and the whole dataset against the manifest (bytes only, nothing is
        decoded); return the content hash. Raises ``DatasetCorrupt`` naming what is damaged."""
        for _ in self._parts():
            pass
        return self.manifest["content_hash"]


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
    problem = _manifest_problem(manifest)
    if problem:
        raise DatasetCorrupt(store.uri(prefix), MANIFEST, problem)
    return Dataset(store, prefix, manifest)


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _manifest_problem(m: dict[str, Any]) -> str:
    """What makes a manifest inconsistent in itself (checked before any part is read), or ""."""
    if m["format"] not in FORMATS:
        return f"names format {m['format']!r}, not one of {', '.join(FORMATS)}"
    if not isinstance(m["content_hash"], str) or not _SHA256_RE.fullmatch(m["content_hash"]):
        return "has no valid content_hash"
    parts = m["parts"]
    if not isinstance(parts, list):
        return "has no parts list"
    total = 0
    for i, p in enumerate(parts):
        if not (
            isinstance(p, dict)
            and isinstance(p.get("key"), str)
            and isinstance(p.get("records"), int)
            and p["records"] >= 0
            and isinstance(p.get("sha256"), str)
            and _SHA256_RE.fullmatch(p["sha256"])
        ):
            return f"has an invalid entry for part {i} (it needs key, records and sha256)"
        named = _PART_NAME_RE.fullmatch(p["key"].rsplit("/", 1)[-1])
        if named and not p["sha256"].startswith(named.group(2)):
            return f"gives part {p['key']} hash {p['sha256'][:12]}…, its name says {named.group(2)}"
        total += p["records"]
    if total != m["record_count"]:
        return f"says {m['record_count']} records, its parts add up to {total}"
    return ""
