"""S3 storage through the minio SDK: fast checks on moto, the integration test on a real SeaweedFS
server started on loopback by the test itself."""

from __future__ import annotations

import threading

import pytest

from looptool.shared.records import Message, Sample, ToolCall
from looptool.shared.storage import (
    DatasetWriter,
    NotFound,
    RecordHasher,
    StorageError,
    open_dataset,
    split_uri,
    writer_for_uri,
)
from looptool.shared.storage.s3 import S3Store

from support.net import free_ports
from support.s3server import SeaweedServer


def object_store_contract(store: S3Store) -> None:
    """What every ObjectStore must do; run against each S3 server."""
    store.put_bytes("c/a/1", b"one")
    store.put_bytes("c/a/2", b"two" * 1000)
    store.put_bytes("c/ab/3", "ü🚀".encode())
    store.put_bytes("c/empty", b"")
    assert store.get_bytes("c/a/1") == b"one" and store.get_bytes("c/empty") == b""
    assert store.get_bytes("c/ab/3").decode() == "ü🚀"
    with store.open_read("c/a/2") as fh:
        assert fh.read(3) == b"two" and len(fh.read()) == 2997
    assert store.exists("c/a/1") and not store.exists("c/a") and not store.exists("c/zzz")
    assert list(store.list("c/a/")) == ["c/a/1", "c/a/2"]
    assert list(store.list("c/a")) == ["c/a/1", "c/a/2", "c/ab/3"]
    assert list(store.list("c/none/")) == []
    store.put_bytes("c/a/1", b"replaced")
    assert store.get_bytes("c/a/1") == b"replaced"
    store.delete("c/a/1")
    store.delete("c/a/1")  # missing: no error
    assert not store.exists("c/a/1")
    with pytest.raises(NotFound) as ei:
        store.get_bytes("c/a/1")
    assert f"s3://{store.bucket}/c/a/1" in str(ei.value)
    with pytest.raises(NotFound):
        store.open_read("c/nope")
    assert store.delete_prefix("c/") == 3 and list(store.list("c/")) == []


def small_samples(n: int, start: int = 0):
    for i in range(start, start + n):
        yield Sample(
            id=f"s-{i}",
            context=[Message(role="user", content=f"q{i}")],
            reference=[ToolCall(name="f", arguments={"i": i, "x": i * 0.5})],
        )


# ---------------------------------------------------------------------------------------------
# moto: fast
# ---------------------------------------------------------------------------------------------


def test_moto_object_store_contract(moto_s3):
    object_store_contract(moto_s3.store("contract"))


def test_moto_put_file_get_file(moto_s3, tmp_path):
    store = moto_s3.store("files")
    src = tmp_path / "x.bin"
    src.write_bytes(b"\x00\x01" * 50_000)
    store.put_file("blobs/x", str(src))
    store.get_file("blobs/x", str(tmp_path / "y.bin"))
    assert (tmp_path / "y.bin").read_bytes() == src.read_bytes()
    with pytest.raises(NotFound):
        store.get_file("blobs/missing", str(tmp_path / "z.bin"))


def test_moto_reads_do_not_create_buckets(moto_s3):
    store = moto_s3.store("never-created")
    assert not store.exists("k") and list(store.list("")) == []
    with pytest.raises(NotFound, match="no bucket 'never-created'"):
        store.get_bytes("k")
    assert "never-created" not in {b.name for b in moto_s3.minio().list_buckets()}
    no_create = moto_s3.store("still-missing", create_bucket=False)
    with pytest.raises(StorageError, match="does not exist"):
        no_create.put_bytes("k", b"x")


def test_moto_dataset_round_trip_and_resume(moto_s3):
    settings = moto_s3.settings("datasets")
    uri = "s3://datasets/rounds/r1/samples"
    w = writer_for_uri(uri, settings, part_size=40, pipeline=False)  # deterministic "crash" below
    h = RecordHasher()
    for s in small_samples(100):
        h.update(s.model_dump(mode="json"))
        w.write(s)
    del w  # crash after two flushed parts
    with pytest.raises(NotFound) as ei:
        open_dataset(uri, settings)
    assert uri in str(ei.value)
    w2 = writer_for_uri(uri, settings, part_size=40, resume=True)
    assert len(list(w2.existing_records())) == 80
    w2.write_many(small_samples(20, start=80))
    ref = w2.commit()
    assert ref.uri == uri and ref.record_count == 100 and ref.content_hash == h.hexdigest()
    ds = open_dataset(ref, settings)
    assert ds.verify() == h.hexdigest()
    assert [s.id for s in ds.iter(Sample)][:3] == ["s-0", "s-1", "s-2"]
    store, key = split_uri(uri, settings)
    assert [k.rsplit("/", 1)[-1][:10] for k in store.list(key + "/")] == ["_manifest."] + [f"part-0000{i}" for i in range(3)]


def test_moto_parquet_dataset(moto_s3):
    settings = moto_s3.settings("pq-data")
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "reward_model": {"style": "rule", "ground_truth": "[]"}} for i in range(30)]
    w = writer_for_uri("s3://pq-data/verl", settings, fmt="parquet", part_size=7)
    w.write_many(rows)
    ref = w.commit()
    assert list(open_dataset(ref, settings).iter_dicts()) == rows


def test_invalid_bucket_name_is_storage_error(moto_s3):
    with pytest.raises(StorageError, match="invalid bucket name"):
        moto_s3.store("ab")
    with pytest.raises(StorageError, match="s3://Bad_Bucket: invalid name for a new bucket"):
        moto_s3.store("Bad_Bucket").put_bytes("k", b"v")


def test_unreachable_endpoint_fails_fast_with_clear_error():
    (port,) = free_ports(1)  # nothing listens here
    store = S3Store(f"127.0.0.1:{port}", "bucket", "ak", "sk", retries=1)
    with pytest.raises(StorageError) as ei:
        store.put_bytes("x/y", b"data")
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "unreachable" in msg and "storage.s3.endpoint" in msg and "\n" not in msg
    with pytest.raises(StorageError, match="unreachable"):
        store.get_bytes("x/y")
    with pytest.raises(StorageError, match="unreachable"):
        store.exists("x/y")


def test_unreachable_endpoint_through_open_dataset(monkeypatch):
    (port,) = free_ports(1)
    monkeypatch.setenv("LOOPTOOL_S3_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("LOOPTOOL_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("LOOPTOOL_S3_SECRET_KEY", "sk")
    with pytest.raises(StorageError) as ei:
        open_dataset("s3://bucket/some/dataset")
    assert "s3://bucket/some/dataset" in str(ei.value) and "unreachable" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# SeaweedFS: a real S3 server on loopback
# ---------------------------------------------------------------------------------------------


def test_seaweed_object_store_contract(seaweed: SeaweedServer):
    object_store_contract(seaweed.store("contract"))


def test_seaweed_100k_samples_stream_round_trip(seaweed: SeaweedServer):
    settings = seaweed.settings("looptool")
    uri = "s3://looptool/rounds/r0/seed"
    n = 100_000
    w = writer_for_uri(uri, settings, part_size=10_000)
    want = RecordHasher()
    for s in small_samples(n):
        want.update(s.model_dump(mode="json"))
        w.write(s)
    ref = w.commit()
    assert ref.record_count == n and ref.content_hash == want.hexdigest()

    ds = open_dataset(ref, settings)
    assert len(ds.manifest["parts"]) == 10
    got = RecordHasher()
    first_ids = []
    for record in ds.iter_dicts():  # streamed part by part
        got.update(record)
        if len(first_ids) < 2:
            first_ids.append(record["id"])
    assert got.count == n and got.hexdigest() == ref.content_hash
    assert first_ids == ["s-0", "s-1"]


def test_seaweed_racing_reader_never_sees_partial_dataset(seaweed: SeaweedServer):
    settings = seaweed.settings("race")
    uri = "s3://race/ds"
    records = [{"i": i} for i in range(2000)]
    want = RecordHasher()
    for r in records:
        want.update(r)
    outcome = {"not_found": 0, "complete": None}
    done = threading.Event()

    def reader():
        while True:
            finished = done.is_set()
            try:
                ds = open_dataset(uri, settings)
            except NotFound:
                outcome["not_found"] += 1
            else:
                h = RecordHasher()
                for r in ds.iter_dicts():
                    h.update(r)
                outcome["complete"] = (h.count, h.hexdigest(), ds.content_hash)
                return
            if finished:
                return

    t = threading.Thread(target=reader)
    t.start()
    w = writer_for_uri(uri, settings, part_size=100)  # 20 parts
    w.write_many(records)
    w.commit()
    done.set()
    t.join(timeout=60)
    assert outcome["complete"] == (2000, want.hexdigest(), want.hexdigest())
    assert outcome["not_found"] >= 1


def test_seaweed_missing_keys_and_buckets(seaweed: SeaweedServer):
    settings = seaweed.settings("nothing-here")
    with pytest.raises(NotFound) as ei:
        open_dataset("s3://nothing-here/no/dataset", settings)
    assert "s3://nothing-here/no/dataset" in str(ei.value)
    store = seaweed.store("exists-check")
    store.put_bytes("k", b"v")
    with pytest.raises(NotFound, match="s3://exists-check/missing"):
        store.get_bytes("missing")


def test_seaweed_wrong_credentials(seaweed: SeaweedServer):
    bad = S3Store(seaweed.endpoint, "creds", seaweed.access_key, "wrong-secret")
    with pytest.raises(StorageError) as ei:
        bad.put_bytes("k", b"v")
    msg = str(ei.value)
    assert "s3://creds" in msg and "secret_key" in msg and not isinstance(ei.value, NotFound)
