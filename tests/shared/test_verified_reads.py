"""Verified reads (issue 17.1): every read of a committed dataset checks the manifest and the content
hash of each part before its records are used. A damaged part or manifest fails with one line that
names the dataset URI, the part and the fix; ``looptool data copy`` commits nothing from a damaged
source; ``looptool data show`` warns; a data stage that reads a damaged input fails with one line."""

from __future__ import annotations

import json
import os

import pytest

from looptool.cli import main
from looptool.shared.config import LoopToolConfig, StorageSettings
from looptool.shared.loop.manifest import parse_round
from looptool.shared.loop.stages import StageContext, StageError, run_data_stage
from looptool.shared.loop.state import Phase, RoundStatus
from looptool.shared.records import Message, Sample, ToolCall
from looptool.shared.storage import (
    DatasetCorrupt,
    DatasetWriter,
    LocalStore,
    ObjectStore,
    StorageError,
    dataset_exists,
    open_dataset,
    open_dataset_at,
    split_uri,
)
from looptool.shared.storage.datasets import MANIFEST


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(os.environ):
        if var.startswith("LOOPTOOL_"):
            monkeypatch.delenv(var, raising=False)


def samples(n: int, start: int = 0) -> list[Sample]:
    return [
        Sample(
            id=f"s-{i:04d}",
            context=[Message(role="user", content=f"Wetter in Zürich, Tag {i}? ✓")],
            reference=[ToolCall(name="get_weather", arguments={"city": "Zürich", "day": i, "p": i / 7})],
        )
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("seaweed")
    return server.store(f"verified-{abs(hash(tmp_path.name)) % 10**8}")


def write(store: ObjectStore, prefix: str, n: int = 30, fmt: str = "jsonl", part_size: int = 10):
    w = DatasetWriter(store, prefix, fmt=fmt, part_size=part_size)
    w.write_many(samples(n))
    return w.commit()


def flip_one_letter(store: ObjectStore, key: str, old: bytes = b"Z\xc3\xbcrich", new: bytes = b"Z\xc3\xbcricH") -> None:
    data = store.get_bytes(key)
    assert old in data
    store.put_bytes(key, data.replace(old, new, 1))


def flip_one_byte(store: ObjectStore, key: str) -> None:
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(key, bytes(data))


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_flipped_byte_in_a_part_fails_the_read_naming_it(store, fmt):
    ref = write(store, "ds", fmt=fmt)
    ds = open_dataset_at(store, "ds")
    assert [s.id for s in ds.iter(Sample)] == [s.id for s in samples(30)] and ds.verify() == ref.content_hash
    part = ds.manifest["parts"][1]["key"]
    if fmt == "jsonl":
        flip_one_letter(store, f"ds/{part}")  # still valid JSON: only the hash can tell
    else:
        flip_one_byte(store, f"ds/{part}")
    got = []
    with pytest.raises(DatasetCorrupt) as ei:
        for rec in open_dataset_at(store, "ds").iter_dicts():
            got.append(rec)
    assert len(got) == 10  # the first part's records, none of the damaged one's
    msg = one_line(ei.value)
    assert ref.uri in msg and part in msg and f"delete {ref.uri}" in msg
    assert ei.value.uri == ref.uri and ei.value.part == f"part {part}"
    for read in (lambda d: list(d.iter(Sample)), lambda d: d.verify()):
        with pytest.raises(DatasetCorrupt, match=part):
            read(open_dataset(ref, None) if store.scheme == "file" else open_dataset_at(store, "ds"))


def test_a_lost_part_fails_naming_it(store):
    ref = write(store, "lost")
    part = open_dataset_at(store, "lost").manifest["parts"][2]["key"]
    store.delete(f"lost/{part}")
    with pytest.raises(DatasetCorrupt, match=f"{part} is missing") as ei:
        list(open_dataset_at(store, "lost").iter_dicts())
    assert ref.uri in one_line(ei.value)


def test_same_records_in_other_json_still_verify(store):
    """A part rewritten as different but equivalent JSON (key order, spaces) holds the same records."""
    ref = write(store, "equiv", n=5, part_size=5)
    part = open_dataset_at(store, "equiv").manifest["parts"][0]["key"]
    rows = [json.loads(line) for line in store.get_bytes(f"equiv/{part}").decode().splitlines()]
    text = "\n".join(json.dumps(dict(reversed(list(r.items()))), indent=None) for r in rows) + "\n\n"
    store.put_bytes(f"equiv/{part}", text.encode())
    ds = open_dataset_at(store, "equiv")
    assert list(ds.iter_dicts()) == rows and ds.verify() == ref.content_hash


@pytest.mark.parametrize(
    "tamper, problem",
    [
        (lambda m: m.update(content_hash="0" * 64), "content hash"),
        (lambda m: m.update(record_count=m["record_count"] + 1), "records"),
        (lambda m: m["parts"][0].update(records=9), "records"),
        (lambda m: m["parts"][1].update(sha256="a" * 64), "hash"),
        (lambda m: m["parts"].pop(), "records"),
        (lambda m: m["parts"].reverse(), "content hash"),
    ],
    ids=["content_hash", "record_count", "part_records", "part_sha256", "part_dropped", "parts_reordered"],
)
def test_tampered_manifest_fails(store, tamper, problem):
    ref = write(store, "man")
    manifest = json.loads(store.get_bytes(f"man/{MANIFEST}"))
    tamper(manifest)
    store.put_bytes(f"man/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(DatasetCorrupt) as ei:
        list(open_dataset_at(store, "man").iter_dicts())
    msg = one_line(ei.value)
    assert ref.uri in msg and problem in msg and "re-run the stage that wrote it" in msg


def test_resumed_writer_checks_the_parts_it_adopts(tmp_path):
    store = LocalStore(tmp_path)
    w = DatasetWriter(store, "resume", part_size=10)
    w.write_many(samples(20))
    w.flush()  # durable parts, no manifest: what a crash leaves
    w2 = DatasetWriter(store, "resume", part_size=10, resume=True)
    assert sum(1 for _ in w2.existing_records()) == 20
    flip_one_letter(store, f"resume/{w2.parts[1].key}")
    with pytest.raises(StorageError, match="changed since it was written"):
        list(w2.existing_records())
    with pytest.raises(StorageError, match="does not match the hash in its name"):
        DatasetWriter(store, "resume", part_size=10, resume=True)


# ----------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("to_s3", [False, True], ids=["to-local", "to-s3"])
def test_copy_of_a_damaged_source_commits_nothing(tmp_path, capsys, monkeypatch, to_s3, request):
    store = LocalStore("/")
    src = (tmp_path / "src").as_posix()
    ref = write(store, src.lstrip("/"), n=30)
    if to_s3:
        server = request.getfixturevalue("seaweed")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        dst = f"s3://verified-copy/{tmp_path.name}/dst"
    else:
        dst = (tmp_path / "dst").as_posix()
    last = open_dataset(ref).manifest["parts"][-1]["key"]
    flip_one_letter(store, f"{src.lstrip('/')}/{last}")  # the last part: copying has written the others
    rc, out, err = run_cli(capsys, "data", "copy", src, dst)
    assert rc != 0 and out == ""
    assert err.count("\n") == 1 and last in err and ref.uri in err
    dst_store, dst_key = split_uri(dst)
    assert not dataset_exists(dst_store, dst_key)
    assert list(dst_store.list(dst_key + "/")) == []  # the parts it had uploaded are gone too


def test_copy_of_a_tampered_manifest_commits_nothing(tmp_path, capsys):
    store = LocalStore(tmp_path)
    write(store, "src")
    manifest = json.loads(store.get_bytes(f"src/{MANIFEST}"))
    manifest["content_hash"] = "f" * 64
    store.put_bytes(f"src/{MANIFEST}", json.dumps(manifest).encode())
    rc, out, err = run_cli(capsys, "data", "copy", str(tmp_path / "src"), str(tmp_path / "dst"))
    assert rc != 0 and "content hash" in err and err.count("\n") == 1
    assert not (tmp_path / "dst" / MANIFEST).exists() and not list((tmp_path / "dst").rglob("*.jsonl"))


def test_show_warns_on_a_damaged_dataset(tmp_path, capsys):
    store = LocalStore(tmp_path)
    ref = write(store, "ds", n=30)
    rc, out, err = run_cli(capsys, "data", "show", str(tmp_path / "ds"))
    assert rc == 0 and err == "" and '"record_count": 30' in out
    part = open_dataset(ref).manifest["parts"][2]["key"]
    flip_one_letter(store, f"ds/{part}")
    rc, out, err = run_cli(capsys, "data", "show", str(tmp_path / "ds"), "-n", "2")
    assert rc == 0 and out.count('"s-000') == 2  # the head still prints: its part is intact
    assert err.startswith("warning: ") and err.count("\n") == 1 and part in err and ref.uri in err
    rc, out, err = run_cli(capsys, "data", "show", str(tmp_path / "ds"), "--no-verify")
    assert rc == 0 and err == ""
    rc, out, err = run_cli(capsys, "data", "verify", str(tmp_path / "ds"))
    assert rc != 0 and part in err


def test_show_warns_on_an_inconsistent_manifest(tmp_path, capsys):
    store = LocalStore(tmp_path)
    write(store, "ds")
    manifest = json.loads(store.get_bytes(f"ds/{MANIFEST}"))
    manifest["parts"][0]["records"] = 3
    store.put_bytes(f"ds/{MANIFEST}", json.dumps(manifest).encode())
    rc, out, err = run_cli(capsys, "data", "show", str(tmp_path / "ds"))
    assert rc == 1 and err.startswith("warning: ") and MANIFEST in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- a stage


def stage_context(tmp_path, previous: RoundStatus) -> StageContext:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]))
    loop_round = parse_round({
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r2"},
        "spec": {"round": 2, "previousRound": "r1", "toolset": {"file": str(tools)},
                 "synthesis": {"numDialogues": 0, "labelNoise": 0}},
    })  # fmt: skip
    cfg = LoopToolConfig(storage=StorageSettings(root=str(tmp_path / "store")))

    def no_generator(*a, **kw):
        raise AssertionError("the synthesize stage needs no generator")

    return StageContext(round=loop_round, config=cfg, addresses={}, base_uri=(tmp_path / "store").as_uri(),
                        generator=no_generator, previous=previous)  # fmt: skip


def test_resumed_stage_fails_on_an_altered_training_part(tmp_path):
    """Round 2 trains on round 1's composed dataset. Altered by one letter before round 2 resumes,
    its synthesize stage (which reads it into the training set) fails with one line naming it,
    instead of succeeding with different downstream datasets."""
    store = LocalStore("/")
    prev_uri = (tmp_path / "store" / "r1" / "next").as_uri()
    w = DatasetWriter(store, (tmp_path / "store" / "r1" / "next").as_posix().lstrip("/"), part_size=10)
    w.write_many(samples(25))
    prev_ref = w.commit()
    previous = RoundStatus(phase=Phase.SUCCEEDED, datasetUri=prev_uri)

    status = RoundStatus()
    run_data_stage(Phase.SYNTHESIZING, stage_context(tmp_path, previous), status, lambda p: None)
    train = status.stage("synthesize").outputs["train"]
    assert train.record_count == 25
    assert [s.id for s in open_dataset(train).iter(Sample)] == [s.id for s in samples(25)]

    part = open_dataset(prev_ref).manifest["parts"][1]["key"]
    flip_one_letter(store, f"{(tmp_path / 'store' / 'r1' / 'next').as_posix().lstrip('/')}/{part}")
    status = RoundStatus()  # the resumed attempt starts the stage again
    with pytest.raises(StageError) as ei:
        run_data_stage(Phase.SYNTHESIZING, stage_context(tmp_path, previous), status, lambda p: None)
    assert ei.value.reason == "DatasetCorrupt"
    msg = one_line(ei.value)
    assert prev_ref.uri in msg and part in msg and f"delete {prev_ref.uri}" in msg
    assert "train" not in status.stage("synthesize").outputs  # nothing downstream was recorded
