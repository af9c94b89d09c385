"""Local object store and datasets: atomic writes, manifest commit, resume, formats, streaming."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.waiting import wait_for

from looptool.shared.records import DatasetRef, Message, Sample, Tool, ToolCall, canonical_json
from looptool.shared.storage import (
    Dataset,
    DatasetWriter,
    LocalStore,
    NotFound,
    RecordHasher,
    StorageError,
    dataset_exists,
    open_dataset,
    open_dataset_at,
    split_uri,
    writer_for_uri,
)
from looptool.shared.storage.datasets import MANIFEST, PARQUET_JSON_COLUMN, PARTS


def make_sample(i: int) -> Sample:
    return Sample(
        id=f"s-{i}",
        context=[Message(role="user", content=f"request {i} — ünïcode 🚀")],
        tools=[Tool(name="f", description="d", parameters={"type": "object", "properties": {"x": {"type": "integer"}}})],
        reference=[ToolCall(name="f", arguments={"x": i, "y": i / 3, "flag": i % 2 == 0, "opt": None if i % 3 else {"k": []}})],
        meta={"i": str(i)} if i % 2 else {},
    )


def expected_hash(records) -> str:
    h = hashlib.sha256()
    for r in records:
        d = r.model_dump(mode="json") if hasattr(r, "model_dump") else r
        h.update(canonical_json(d).encode() + b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# LocalStore
# ---------------------------------------------------------------------------------------------


def test_put_get_list_delete(store: LocalStore):
    store.put_bytes("a/b/one", b"1")
    store.put_bytes("a/b/two", b"22")
    store.put_bytes("a/bc/three", b"333")
    store.put_bytes("z", b"")
    assert store.get_bytes("a/b/two") == b"22" and store.get_bytes("z") == b""
    assert store.exists("a/b/one") and not store.exists("a/b") and not store.exists("nope")
    assert list(store.list("a/b/")) == ["a/b/one", "a/b/two"]
    assert list(store.list("a/b")) == ["a/b/one", "a/b/two", "a/bc/three"]  # plain string prefix, as in S3
    assert list(store.list("")) == ["a/b/one", "a/b/two", "a/bc/three", "z"]
    assert list(store.list("missing/")) == []
    with store.open_read("a/bc/three") as fh:
        assert fh.read(2) == b"33"
    store.delete("a/b/one")
    store.delete("a/b/one")  # deleting a missing key is fine
    assert list(store.list("a/b/")) == ["a/b/two"]
    assert store.delete_prefix("a/") == 2 and list(store.list("")) == ["z"]


def test_put_file_and_get_file(store: LocalStore, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    store.put_file("blobs/x", str(src))
    dst = tmp_path / "out" / "x.bin"
    store.get_file("blobs/x", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(NotFound):
        store.get_file("blobs/missing", str(dst))
    with pytest.raises(NotFound):
        store.put_file("blobs/y", str(tmp_path / "nope"))


def test_missing_key_is_not_found_naming_the_uri(store: LocalStore):
    for fn in (store.get_bytes, store.open_read):
        with pytest.raises(NotFound) as ei:
            fn("no/such/key")
        assert store.uri("no/such/key") in str(ei.value)
    store.put_bytes("dir/file", b"x")
    with pytest.raises(NotFound):
        store.get_bytes("dir")  # a directory is not an object
    with pytest.raises(NotFound):
        store.get_bytes("dir/file/below")


def test_keys_cannot_escape_the_root(store: LocalStore):
    with pytest.raises(StorageError, match="escapes"):
        store.put_bytes("../outside", b"x")
    with pytest.raises(StorageError, match="escapes"):
        store.get_bytes("a/../../outside")


def test_atomic_write_keeps_old_content_on_failure(store: LocalStore, monkeypatch, tmp_path):
    store.put_bytes("obj", b"old")
    src = tmp_path / "big"
    src.write_bytes(b"n" * (4 << 20))

    import shutil

    def half_copy(fsrc, fdst, length=0):
        fdst.write(fsrc.read(1 << 20))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", half_copy)
    with pytest.raises(StorageError, match="No space left"):
        store.put_file("obj", str(src))
    assert store.get_bytes("obj") == b"old"
    leftovers = [p.name for p in (store.root).iterdir()]
    assert leftovers == ["obj"], leftovers  # the temporary file is gone

    def interrupted(fsrc, fdst, length=0):
        fdst.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put_file("obj", str(src))
    assert store.get_bytes("obj") == b"old" and [p.name for p in store.root.iterdir()] == ["obj"]


def test_temp_files_are_not_listed(store: LocalStore):
    store.put_bytes("d/real", b"x")
    (store.root / "d" / ".tmp-abc").write_bytes(b"partial")
    assert list(store.list("d/")) == ["d/real"]


def test_unwritable_root_is_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = LocalStore(blocker)
    with pytest.raises(StorageError) as ei:
        s.put_bytes("k", b"x")
    assert str(blocker) in str(ei.value)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def test_writer_layout_and_manifest(store: LocalStore):
    samples = [make_sample(i) for i in range(23)]
    w = DatasetWriter(store, "rounds/r1/samples", part_size=10, meta={"round": 1})
    w.write_many(samples)
    assert not dataset_exists(store, "rounds/r1/samples")
    w.flush()
    assert w.records_flushed == 23  # all three parts are durable, still invisible
    assert not dataset_exists(store, "rounds/r1/samples")
    ref = w.commit()
    assert isinstance(ref, DatasetRef) and ref.record_count == 23 and ref.format == "jsonl" and ref.kind == "samples"
    assert ref.uri == store.uri("rounds/r1/samples") and ref.content_hash == expected_hash(samples)
    keys = list(store.list("rounds/r1/samples/"))
    parts = [k for k in keys if f"/{PARTS}/" in k]
    assert len(parts) == 3 and len(keys) == 4  # parts + manifest, nothing else
    assert all(k.split("/")[-1].startswith(f"part-0000{i}-") for i, k in enumerate(parts))
    manifest = json.loads(store.get_bytes(f"rounds/r1/samples/{MANIFEST}"))
    assert manifest["record_count"] == 23 and manifest["meta"] == {"round": 1}
    assert [p["records"] for p in manifest["parts"]] == [10, 10, 3]
    # content-addressed part names: the suffix is the part's own record hash
    for p in manifest["parts"]:
        assert p["sha256"].startswith(p["key"].split("-")[-1].split(".")[0])
    ds = open_dataset(ref)
    assert len(ds) == 23 and ds.ref == ref and ds.verify() == ref.content_hash
    assert list(ds.iter(Sample)) == samples
    assert w.commit() is ref  # idempotent
    with pytest.raises(StorageError, match="already committed"):
        w.write(samples[0])


def test_committed_dataset_is_not_rewritten(store: LocalStore):
    DatasetWriter(store, "ds").commit()
    with pytest.raises(StorageError, match="already committed"):
        DatasetWriter(store, "ds")


def test_empty_dataset(store: LocalStore):
    ref = DatasetWriter(store, "empty").commit()
    assert ref.record_count == 0 and ref.content_hash == hashlib.sha256(b"").hexdigest()
    ds = open_dataset(ref.uri)
    assert list(ds.iter_dicts()) == [] and ds.verify() == ref.content_hash


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hash_is_independent_of_part_size_and_format(store: LocalStore, fmt):
    samples = [make_sample(i) for i in range(57)]
    want = expected_hash(samples)
    for part_size in (1, 7, 57, 1000):
        ds_writer = DatasetWriter(store, f"{fmt}-{part_size}", fmt=fmt, part_size=part_size)
        ds_writer.write_many(samples)
        ref = ds_writer.commit()
        assert ref.content_hash == want and ref.format == fmt
        ds = open_dataset(ref.uri)
        assert list(ds.iter(Sample)) == samples
        assert ds.verify() == want


def test_parquet_native_columns_for_regular_records(store: LocalStore):
    rows = [
        {
            "data_source": "looptool",
            "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}],
            "ability": "tool_calling",
            "reward_model": {"style": "rule", "ground_truth": json.dumps([{"name": "f", "arguments": {"x": i}}])},
            "extra_info": {"index": i, "split": "train"},
        }
        for i in range(40)
    ]
    w = DatasetWriter(store, "verl", fmt="parquet", kind="verl", part_size=100)
    w.write_many(rows)
    ref = w.commit()
    part = json.loads(store.get_bytes(f"verl/{MANIFEST}"))["parts"][0]["key"]
    table = pq.read_table(store.root / "verl" / part)
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert table.to_pylist() == rows  # readable as plain Parquet by verl / datasets
    assert ref.content_hash == expected_hash(rows)


def test_parquet_irregular_records_stay_exact(store: LocalStore):
    rows = [
        {"a": 1, "b": {"x": 1}},
        {"a": 1.0, "b": {"y": "s"}},  # int vs float, different nested keys
        {"a": True, "c": {}},  # bool, missing key, empty object
        {"a": None, "b": {"x": [1, "two", None]}},
    ]
    w = DatasetWriter(store, "irregular", fmt="parquet")
    w.write_many(rows)
    ref = w.commit()
    ds = open_dataset(ref.uri)
    back = list(ds.iter_dicts())
    assert [canonical_json(r) for r in back] == [canonical_json(r) for r in rows]
    part = ds.manifest["parts"][0]["key"]
    assert pq.read_table(store.root / "irregular" / part).column_names == [PARQUET_JSON_COLUMN]
    assert ref.content_hash == expected_hash(rows)


def test_non_json_records_are_rejected(store: LocalStore):
    w = DatasetWriter(store, "bad", part_size=1)
    with pytest.raises(StorageError, match="not JSON"):
        w.write({"b": b"bytes"})
    with pytest.raises(StorageError, match="pydantic models or dicts"):
        w.write(["a", "list"])  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="unknown dataset format"):
        DatasetWriter(store, "bad2", fmt="csv")


def test_dataset_uri_must_not_be_the_store_root(store: LocalStore):
    with pytest.raises(StorageError, match="not its root"):
        DatasetWriter(store, "/")
    with pytest.raises(StorageError, match="not its root"):
        open_dataset_at(store, "")


def test_new_writer_clears_only_dataset_leftovers(store: LocalStore):
    store.put_bytes("ds/notes.txt", b"user file")  # not ours: must survive
    w = DatasetWriter(store, "ds", part_size=2, pipeline=False)
    w.write_many([{"i": i} for i in range(5)])  # two parts flushed, then "crash"
    del w
    w2 = DatasetWriter(store, "ds", part_size=2)  # resume=False: start over
    w2.write_many([{"j": j} for j in range(3)])
    ref = w2.commit()
    assert [r for r in open_dataset(ref.uri).iter_dicts()] == [{"j": 0}, {"j": 1}, {"j": 2}]
    assert store.get_bytes("ds/notes.txt") == b"user file"
    assert len([k for k in store.list("ds/parts/")]) == 2


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_resume_keeps_flushed_parts_after_crash(store: LocalStore, fmt):
    records = [make_sample(i).model_dump(mode="json") for i in range(95)]
    # pipeline=False: every automatic flush is durable before write() returns, so the simulated
    # crash below is deterministic (a real crash also loses an upload still in flight)
    w = DatasetWriter(store, "resumable", fmt=fmt, part_size=10, pipeline=False)
    for r in records[:47]:
        w.write(r)
    # crash: 4 parts flushed, 7 records only in memory (lost)
    store.put_bytes("resumable/parts/README", b"not a part")  # ignored by the writer
    del w
    assert not dataset_exists(store, "resumable")
    with pytest.raises(NotFound):
        open_dataset(store.uri("resumable"))

    w2 = DatasetWriter(store, "resumable", fmt=fmt, part_size=10, resume=True)
    assert w2.records_flushed == 40
    done = list(w2.existing_records())
    assert done == records[:40]
    w2.write_many(records[len(done) :])
    ref = w2.commit()
    assert ref.record_count == 95 and ref.content_hash == expected_hash(records)
    assert list(open_dataset(ref.uri).iter_dicts()) == records
    names = [p["key"] for p in open_dataset(ref.uri).manifest["parts"]]
    assert [n.split("/")[-1][:10] for n in names] == [f"part-{i:05d}" for i in range(10)]


def test_resume_twice_and_resume_with_nothing(store: LocalStore):
    w = DatasetWriter(store, "r2", part_size=3, resume=True, pipeline=False)  # nothing to resume: fine
    w.write_many({"i": i} for i in range(4))
    del w
    w = DatasetWriter(store, "r2", part_size=3, resume=True, pipeline=False)
    w.write_many({"i": i} for i in range(3, 8))
    del w
    w = DatasetWriter(store, "r2", part_size=3, resume=True)
    assert [r["i"] for r in w.existing_records()] == [0, 1, 2, 3, 4, 5]
    ref = w.commit()
    assert ref.record_count == 6 and ref.content_hash == expected_hash([{"i": i} for i in range(6)])


def test_resume_detects_tampered_part(store: LocalStore):
    w = DatasetWriter(store, "tamper", part_size=2, pipeline=False)
    w.write_many([{"i": i} for i in range(4)])
    part = next(iter(store.list("tamper/parts/")))
    store.put_bytes(part, b'{"i":999}\n{"i":1}\n')
    with pytest.raises(StorageError, match="does not match the hash in its name"):
        DatasetWriter(store, "tamper", part_size=2, resume=True)


def test_context_manager_commits_or_keeps_parts(store: LocalStore):
    with DatasetWriter(store, "cm-ok", part_size=3) as w:
        w.write_many({"i": i} for i in range(5))
    assert len(open_dataset(store.uri("cm-ok"))) == 5

    with pytest.raises(RuntimeError):
        with DatasetWriter(store, "cm-fail", part_size=3) as w:
            w.write_many({"i": i} for i in range(5))
            raise RuntimeError("stage failed")
    assert not dataset_exists(store, "cm-fail")
    w2 = DatasetWriter(store, "cm-fail", part_size=3, resume=True)
    assert [r["i"] for r in w2.existing_records()] == [0, 1, 2, 3, 4]  # the buffered tail was flushed too


def test_abort_removes_everything(store: LocalStore):
    w = DatasetWriter(store, "aborted", part_size=2)
    w.write_many({"i": i} for i in range(7))
    w.abort()
    assert list(store.list("aborted/")) == []
    with pytest.raises(StorageError, match="aborted"):
        w.write({"i": 0})


def test_pipelined_and_synchronous_writers_agree(store: LocalStore):
    records = [{"i": i, "s": "x" * (i % 5)} for i in range(1003)]
    refs = []
    for pipeline in (True, False):
        w = DatasetWriter(store, f"pipe-{pipeline}", part_size=100, pipeline=pipeline)
        w.write_many(records)
        refs.append(w.commit())
        assert w.records_flushed == 1003 and len(w.parts) == 11
    assert refs[0].content_hash == refs[1].content_hash == expected_hash(records)
    assert list(open_dataset(refs[0].uri).iter_dicts()) == records


class FailingStore(LocalStore):
    """Fails the n-th part upload."""

    def __init__(self, root, fail_at: int):
        super().__init__(root)
        self.fail_at, self.part_puts = fail_at, 0

    def put_bytes(self, key, data):
        if "/parts/" in key:
            self.part_puts += 1
            if self.part_puts == self.fail_at:
                raise StorageError(f"{self.uri(key)}: injected failure")
        super().put_bytes(key, data)


@pytest.mark.parametrize("pipeline", [True, False])
def test_upload_failure_surfaces_and_nothing_is_committed(tmp_path, pipeline):
    store = FailingStore(tmp_path / "s", fail_at=2)
    w = DatasetWriter(store, "failing", part_size=10, pipeline=pipeline)
    with pytest.raises(StorageError, match="injected failure"):
        w.write_many({"i": i} for i in range(100))
        w.commit()
    with pytest.raises(StorageError, match="failed earlier"):
        w.commit()
    assert not dataset_exists(store, "failing")
    # a resumed writer picks up the one good part and finishes the job
    w2 = DatasetWriter(store, "failing", part_size=10, resume=True)
    assert [r["i"] for r in w2.existing_records()] == list(range(10))
    w2.write_many({"i": i} for i in range(10, 100))
    assert w2.commit().content_hash == expected_hash([{"i": i} for i in range(100)])


def test_racing_reader_never_sees_a_partial_dataset(store: LocalStore):
    records = [{"i": i, "text": "x" * (i % 17)} for i in range(3000)]
    want = expected_hash(records)
    uri = store.uri("race/ds")
    seen = {"not_found": 0, "complete": 0, "bad": []}
    writer_done = threading.Event()

    def reader():
        while True:
            finished = writer_done.is_set()
            try:
                ds = open_dataset(uri)
            except NotFound:
                seen["not_found"] += 1
            else:
                h = RecordHasher()
                for r in ds.iter_dicts():
                    h.update(r)
                if (h.hexdigest(), h.count, ds.content_hash) != (want, len(records), want):
                    seen["bad"].append((h.count, ds.content_hash))
                seen["complete"] += 1
                return
            if finished:
                return

    t = threading.Thread(target=reader)
    t.start()
    w = DatasetWriter(store, "race/ds", part_size=30)  # 100 parts
    for r in records:
        w.write(r)
    w.commit()
    writer_done.set()
    t.join(timeout=60)
    assert not t.is_alive()
    assert seen["bad"] == [] and seen["complete"] == 1
    assert seen["not_found"] >= 1  # the reader really polled while the writer was writing


class CountingStore(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.opened: list[str] = []
        self.fetched: list[str] = []

    def open_read(self, key):
        self.opened.append(key)
        return super().open_read(key)

    def get_bytes(self, key):
        self.fetched.append(key)
        return super().get_bytes(key)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_reads_stream_part_by_part(tmp_path, fmt):
    store = CountingStore(tmp_path / "s")
    w = DatasetWriter(store, "big", fmt=fmt, part_size=100)
    w.write_many({"i": i} for i in range(1000))
    w.commit()
    store.opened.clear()
    store.fetched.clear()
    ds = open_dataset_at(store, "big")
    it = ds.iter_dicts()
    assert next(it) == {"i": 0}
    parts_opened = [k for k in store.opened if "/parts/" in k]
    assert 1 <= len(parts_opened) <= 2  # the first of ten parts, and at most the next one fetched ahead
    assert not [k for k in store.fetched if "/parts/" in k]  # parts are streamed, not fetched whole
    for _ in range(150):
        next(it)
    assert 2 <= len([k for k in store.opened if "/parts/" in k]) <= 3
    it.close()


class BrokenPartStore(LocalStore):
    """Fails reading one part the way an unreachable store does (not a data problem)."""

    def open_read(self, key):
        if key.endswith(".jsonl") and "/part-00002-" in key:
            raise StorageError(f"{self.uri(key)}: store unreachable")
        return super().open_read(key)


def test_part_fetched_ahead_reports_in_order_and_stops_with_the_reader(tmp_path):
    store = BrokenPartStore(tmp_path / "s")
    w = DatasetWriter(store, "ahead", part_size=10)
    w.write_many({"i": i} for i in range(40))
    w.commit()
    got = []
    with pytest.raises(StorageError, match="store unreachable"):
        for rec in open_dataset_at(store, "ahead").iter_dicts():
            got.append(rec["i"])
    assert got == list(range(20))  # parts 0 and 1 whole, then the error of part 2 (fetched ahead)
    it = open_dataset_at(store, "ahead").iter_dicts()
    assert next(it) == {"i": 0}
    it.close()  # a reader that stops early: the thread fetching ahead ends
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("looptool-prefetch")],
             what="prefetch threads to end")  # fmt: skip


def test_verify_detects_corruption(store: LocalStore):
    w = DatasetWriter(store, "c", part_size=5)
    w.write_many({"i": i} for i in range(10))
    ref = w.commit()
    ds = open_dataset(ref)
    part = ds.manifest["parts"][1]["key"]
    store.put_bytes(f"c/{part}", b'{"i":5}\n{"i":6}\n{"i":7}\n{"i":8}\n{"i":42}\n')
    with pytest.raises(StorageError, match="corrupt"):
        ds.verify()
    store.put_bytes(f"c/{part}", b"not json\n")
    with pytest.raises(StorageError, match="corrupt"):
        list(ds.iter_dicts())


def test_manifest_problems(store: LocalStore):
    store.put_bytes(f"m1/{MANIFEST}", b"{not json")
    with pytest.raises(StorageError, match="not a valid manifest"):
        open_dataset(store.uri("m1"))
    store.put_bytes(f"m2/{MANIFEST}", b'{"hello": 1}')
    with pytest.raises(StorageError, match="not a LoopTool dataset manifest"):
        open_dataset(store.uri("m2"))


def test_reference_hash_is_checked(store: LocalStore):
    ref = DatasetWriter(store, "h").commit()
    stale = ref.model_copy(update={"content_hash": "0" * 64})
    with pytest.raises(StorageError, match="was replaced"):
        open_dataset(stale)


def test_nonexistent_uri_is_not_found_naming_it(tmp_path):
    uri = (tmp_path / "no" / "dataset").as_uri()
    with pytest.raises(NotFound) as ei:
        open_dataset(uri)
    assert uri in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(NotFound, match=str(tmp_path / "plain")):
        open_dataset(str(tmp_path / "plain"))


def test_uri_resolution(tmp_path, monkeypatch):
    store, key = split_uri((tmp_path / "a b" / "ü").as_uri())
    assert isinstance(store, LocalStore) and "/" + key == str(tmp_path / "a b" / "ü")
    monkeypatch.chdir(tmp_path)
    store, key = split_uri("rel/ds")
    assert "/" + key == str(tmp_path / "rel" / "ds")
    w = writer_for_uri("rel/ds")
    w.write({"x": 1})
    ref = w.commit()
    assert ref.uri == (tmp_path / "rel" / "ds").as_uri() and len(open_dataset("rel/ds")) == 1
    for bad, match in (
        ("ftp://host/x", "unsupported URI"),
        ("", "empty dataset URI"),
        ("file://otherhost/x", "absolute path"),
        ("s3:///nobucket", "no bucket"),
    ):
        with pytest.raises(StorageError, match=match):
            split_uri(bad)


def test_s3_uri_without_endpoint_names_the_uri(monkeypatch):
    for var in ("LOOPTOOL_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(StorageError) as ei:
        open_dataset("s3://bucket/some/ds")
    assert "s3://bucket/some/ds" in str(ei.value) and "endpoint" in str(ei.value)


def test_dataset_iter_models(store: LocalStore):
    w = DatasetWriter(store, "models")
    w.write_many(make_sample(i) for i in range(3))
    ds: Dataset = open_dataset(w.commit())
    assert [s.id for s in ds.iter(Sample)] == ["s-0", "s-1", "s-2"]
    assert [d["id"] for d in ds] == ["s-0", "s-1", "s-2"]
