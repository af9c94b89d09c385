"""``looptool data``: import-jsonl → show → verify → copy (to Parquet, to S3); bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from looptool.cli import main
from looptool.shared.records import Message, Sample, ToolCall
from looptool.shared.storage import RecordHasher, dataset_exists, open_dataset, split_uri


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(os.environ):
        if var.startswith("LOOPTOOL_"):
            monkeypatch.delenv(var, raising=False)


def samples_jsonl(path, n: int = 25) -> str:
    h = RecordHasher()
    lines = []
    for i in range(n):
        d = Sample(
            id=f"s-{i}",
            context=[Message(role="user", content=f"question {i} ✓")],
            reference=[ToolCall(name="f", arguments={"i": i, "half": i / 2})],
        ).model_dump(mode="json")
        h.update(d)
        lines.append(json.dumps(d, ensure_ascii=False))
        if i == 3:
            lines.append("   ")  # blank lines are skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return h.hexdigest()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_show_verify_copy(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    want = samples_jsonl(src)
    dst = (tmp_path / "store" / "seed").as_uri()

    rc, out, err = run_cli(capsys, "data", "import-jsonl", str(src), dst)
    assert rc == 0, err
    ref = json.loads(out)
    assert ref["record_count"] == 25 and ref["content_hash"] == want and ref["uri"] == dst and ref["format"] == "jsonl"

    rc, out, err = run_cli(capsys, "data", "show", dst, "-n", "2")
    assert rc == 0, err
    manifest_text, _, records_text = out.partition("\n}\n")
    manifest = json.loads(manifest_text + "\n}")
    assert manifest["record_count"] == 25 and manifest["content_hash"] == want and manifest["parts"] == 1
    shown = [json.loads(line) for line in records_text.splitlines()]
    assert [r["id"] for r in shown] == ["s-0", "s-1"]

    rc, out, err = run_cli(capsys, "data", "verify", dst)
    assert rc == 0 and out.strip() == f"ok 25 records sha256={want}"

    pq_uri = str(tmp_path / "store" / "seed-parquet")  # a plain path works too
    rc, out, err = run_cli(capsys, "data", "copy", dst, pq_uri, "--format", "parquet")
    assert rc == 0, err
    copied = json.loads(out)
    assert copied["format"] == "parquet" and copied["content_hash"] == want and copied["record_count"] == 25
    rc, out, _ = run_cli(capsys, "data", "verify", pq_uri)
    assert rc == 0 and want in out
    assert [s.id for s in open_dataset(pq_uri).iter(Sample)] == [f"s-{i}" for i in range(25)]

    # copying onto an existing dataset is refused, the original is untouched
    rc, out, err = run_cli(capsys, "data", "copy", dst, pq_uri)
    assert rc == 2 and "already committed" in err and err.count("\n") == 1


def test_import_parquet_directly(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    want = samples_jsonl(src, n=5)
    rc, out, err = run_cli(capsys, "data", "import-jsonl", str(src), str(tmp_path / "pq"), "--format", "parquet", "--kind", "samples")
    assert rc == 0, err
    assert json.loads(out)["content_hash"] == want and json.loads(out)["format"] == "parquet"


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"id": "x", "context": [}', "not JSON"),
        ("[1, 2, 3]", "must be a JSON object"),
        ('"a string"', "must be a JSON object"),
    ],
)
def test_bad_jsonl_line_is_one_line_error_and_nothing_committed(tmp_path, capsys, bad_line, problem):
    src = tmp_path / "in.jsonl"
    good = [json.dumps({"i": i}) for i in range(12_000)]  # more than one part (5000) before the bad line
    src.write_text("\n".join(good + [bad_line] + good[:3]) + "\n")
    dst = tmp_path / "store" / "ds"
    rc, out, err = run_cli(capsys, "data", "import-jsonl", str(src), dst.as_uri())
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{src}:12001" in err and problem in err
    store, key = split_uri(dst.as_uri())
    assert not dataset_exists(store, key)
    assert list(store.list(key + "/")) == []  # no parts, no journal left behind


def test_import_errors(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "data", "import-jsonl", str(tmp_path / "missing.jsonl"), str(tmp_path / "ds"))
    assert rc == 2 and "missing.jsonl does not exist" in err and err.count("\n") == 1
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    rc, _, err = run_cli(capsys, "data", "import-jsonl", str(binary), str(tmp_path / "ds2"))
    assert rc == 2 and "UTF-8" in err
    assert not (tmp_path / "ds2" / "_manifest.json").exists()


def test_missing_dataset_names_the_uri(tmp_path, capsys):
    uri = (tmp_path / "nothing").as_uri()
    for action in ("show", "verify"):
        rc, out, err = run_cli(capsys, "data", action, uri)
        assert rc == 2 and uri in err and err.count("\n") == 1 and "Traceback" not in err


def test_unreachable_s3_is_one_line_error(tmp_path, capsys, monkeypatch):
    from support.net import free_ports

    (port,) = free_ports(1)
    monkeypatch.setenv("LOOPTOOL_S3_ENDPOINT", f"127.0.0.1:{port}")
    rc, _, err = run_cli(capsys, "data", "show", "s3://bucket/ds")
    assert rc == 2 and "s3://bucket/ds" in err and "unreachable" in err and err.count("\n") == 1


def test_copy_to_s3_and_back(tmp_path, capsys, monkeypatch, moto_s3):
    src = tmp_path / "in.jsonl"
    want = samples_jsonl(src, n=8)
    local = str(tmp_path / "local")
    assert run_cli(capsys, "data", "import-jsonl", str(src), local)[0] == 0
    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    rc, out, err = run_cli(capsys, "data", "copy", local, "s3://cli-data/rounds/r0/seed")
    assert rc == 0, err
    assert json.loads(out)["uri"] == "s3://cli-data/rounds/r0/seed" and json.loads(out)["content_hash"] == want
    rc, out, err = run_cli(capsys, "data", "verify", "s3://cli-data/rounds/r0/seed")
    assert rc == 0 and want in out
    rc, out, err = run_cli(capsys, "data", "copy", "s3://cli-data/rounds/r0/seed", str(tmp_path / "back"), "--format", "parquet")
    assert rc == 0 and json.loads(out)["content_hash"] == want


def test_bad_config_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage:\n  bakend: s3\n")
    rc, _, err = run_cli(capsys, "-c", str(cfg), "data", "verify", str(tmp_path))
    assert rc == 2 and "storage.bakend" in err and err.count("\n") == 1


def test_help_is_real(capsys):
    # main() turns argparse's exit into its return code (in-process callers get a code, not SystemExit)
    assert main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("show", "verify", "copy", "import-jsonl"):
        assert action in out
    assert main(["data", "import-jsonl", "--help"]) == 0
    assert "JSONL file" in capsys.readouterr().out


def test_console_script_subprocess(tmp_path):
    src = tmp_path / "in.jsonl"
    want = samples_jsonl(src, n=3)
    dst = str(tmp_path / "ds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPTOOL_")}
    code = "import sys; from looptool.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "data", "import-jsonl", str(src), dst], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-c", code, "data", "verify", dst], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and want in done.stdout
    done = subprocess.run([sys.executable, "-c", code, "data", "verify", dst + "-missing"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr and dst + "-missing" in done.stderr
