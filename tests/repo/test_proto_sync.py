"""The generated modules in looptool/v1 must match what protoc makes from protos/ now."""

from __future__ import annotations

import subprocess
import sys

from support import REPO

ROOT = REPO


def test_generated_code_in_sync(tmp_path):
    protos = sorted((ROOT / "protos/looptool/v1").glob("*.proto"))
    assert protos, "no .proto files"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT/'protos'}", f"--python_out={tmp_path}",
           f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *map(str, protos)]
    subprocess.run(cmd, check=True)
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "looptool/v1").glob("*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "looptool/v1").glob("*_pb2*.py*"))
    assert [str(p) for p in generated] == [str(p) for p in committed], "run `make proto`"
    for rel in generated:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run `make proto`"


def test_every_service_is_defined():
    from looptool.v1 import expander_pb2, inference_pb2, synthesizer_pb2, toolsim_pb2, trainer_pb2

    names = {
        s.full_name
        for m in (expander_pb2, inference_pb2, synthesizer_pb2, toolsim_pb2, trainer_pb2)
        for s in m.DESCRIPTOR.services_by_name.values()
    }
    assert names == {
        "looptool.v1.Expander",
        "looptool.v1.InferenceService",
        "looptool.v1.DialogueSynthesizer",
        "looptool.v1.ToolSimulator",
        "looptool.v1.Trainer",
    }
