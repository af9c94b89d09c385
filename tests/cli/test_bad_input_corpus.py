"""A corpus of bad inputs (issue 17): manifests, configs, toolsets, every command's arguments and every
service's request fields — encodings, sizes, numbers at and beyond their ranges, duplicates, path
traversal, dead endpoints and busy ports.

Each case must end in ONE line naming the field (or URI) and the fix: a non-zero exit (CLI) or
INVALID_ARGUMENT (RPC), no traceback, the field's name in the message — and nothing written (the
test's directory tree, store included, is byte-for-byte what it was). CLI cases run in-process
through ``looptool.cli.main``; RPC cases share one set of real gRPC servers (module fixture).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from looptool.cli import main
from looptool.shared.config import LimitsSettings

LIMITS = LimitsSettings()
GOOD_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def manifest(spec_extra: str = "", name: str = "r1", head: str = "") -> str:
    """A valid LoopRound with ``spec_extra`` (flow-style YAML keys) added to its spec."""
    extra = f", {spec_extra}" if spec_extra else ""
    return (f"{head}apiVersion: looptool.io/v1alpha1\nkind: LoopRound\nmetadata: {{name: {name}}}\n"
            f"spec: {{baseModel: {{builtin: tiny}}, toolset: {{bfcl: {{category: simple_python}}}}{extra}}}\n")


@dataclass
class Case:
    id: str
    argv: list[str]
    field: str  # must appear in the error line
    files: dict[str, bytes | str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def param(self):
        return pytest.param(self, id=self.id)


def run_case(**kw) -> Case:
    return Case(argv=["run", "m.yaml"], **kw)


def nan_spec(path: str, value: str) -> str:
    """``a.b: value`` as nested flow YAML inside spec."""
    *parents, leaf = path.split(".")
    out = f"{leaf}: {value}"
    for p in reversed(parents):
        out = f"{p}: {{{out}}}"
    return out


MANIFEST_NUMBERS = [
    # (spec path, value, field named): at and beyond the ranges the models and the caps allow
    ("synthesis.numDialogues", "-1", "spec.synthesis.numDialogues"),
    ("synthesis.numDialogues", str(LIMITS.dialogues + 1), "spec.synthesis.numDialogues"),
    ("synthesis.numDialogues", "1000000000000000000000000000000", "spec.synthesis.numDialogues"),
    ("synthesis.concurrency", "0", "spec.synthesis.concurrency"),
    ("synthesis.concurrency", str(LIMITS.concurrency + 1), "spec.synthesis.concurrency"),
    ("synthesis.heldoutFraction", "1.0", "spec.synthesis.heldoutFraction"),
    ("synthesis.heldoutFraction", ".inf", "spec.synthesis.heldoutFraction"),
    ("synthesis.labelNoise", "-0.1", "spec.synthesis.labelNoise"),
    ("synthesis.labelNoise", ".nan", "spec.synthesis.labelNoise"),
    ("synthesis.maxNeeds", "9", "spec.synthesis.maxNeeds"),
    ("expand.factor", "-1", "spec.expand.factor"),
    ("expand.factor", str(LIMITS.expand_factor + 1), "spec.expand.factor"),
    ("probe.k", str(LIMITS.n + 1), "spec.probe.k"),
    ("probe.k", "-3", "spec.probe.k"),
    ("probe.maxTokens", str(LIMITS.max_tokens + 1), "spec.probe.maxTokens"),
    ("probe.maxTokens", "7", "spec.probe.maxTokens"),
    ("probe.temperature", ".nan", "spec.probe.temperature"),
    ("probe.temperature", "-1", "spec.probe.temperature"),
    ("judge.votes", "0", "spec.judge.votes"),
    ("judge.votes", str(LIMITS.n + 1), "spec.judge.votes"),
    ("judge.candidates", "33", "spec.judge.candidates"),
    ("judge.candidateTemperature", "0", "spec.judge.candidateTemperature"),
    ("training.learningRate", "0", "spec.training.learningRate"),
    ("training.temperature", ".nan", "spec.training.temperature"),
    ("training.groupSize", "1", "spec.training.groupSize"),
    ("training.epochs", "0", "spec.training.epochs"),
    ("training.maxResponseTokens", str(LIMITS.max_tokens + 1), "spec.training.maxResponseTokens"),
    ("training.warmupRatio", "1", "spec.training.warmupRatio"),
    ("eval.maxTokens", str(LIMITS.max_tokens + 1), "spec.eval.maxTokens"),
    ("round", "0", "spec.round"),
]

CASES: list[Case] = [
    # --- manifests: encoding, size, syntax, duplicates, names ---------------------------------
    run_case(id="manifest-not-utf8", field="m.yaml", files={"m.yaml": manifest().encode().replace(b"r1", b"r\xff1")}),
    run_case(id="manifest-latin1-comment", field="m.yaml", files={"m.yaml": b"# caf\xe9\n" + manifest().encode()}),
    run_case(id="manifest-over-cap-setting", field="m.yaml", env={"LOOPTOOL_LIMITS__MANIFEST_BYTES": "2048"},
             files={"m.yaml": manifest() + "#" * 4096 + "\n"}),
    run_case(id="manifest-over-default-cap", field="m.yaml", files={"m.yaml": b" " * (LIMITS.manifest_bytes + 1)}),
    run_case(id="manifest-malformed-yaml", field="m.yaml", files={"m.yaml": "apiVersion: [unclosed\n"}),
    run_case(id="manifest-empty", field="m.yaml", files={"m.yaml": ""}),
    run_case(id="manifest-scalar", field="m.yaml", files={"m.yaml": "just a string\n"}),
    run_case(id="manifest-is-directory", field="m.yaml", files={"m.yaml/x": ""}),
    run_case(id="manifest-duplicate-round-names", field="metadata.name", files={"m.yaml": manifest() + "---\n" + manifest()}),
    run_case(id="manifest-duplicate-in-list", field="metadata.name",
             files={"m.yaml": json.dumps({"kind": "List", "items": [
                 {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "a"},
                  "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"file": "t.json"}}}] * 2})}),
    run_case(id="manifest-name-path-traversal", field="metadata.name", files={"m.yaml": manifest(name="'../../etc'")}),
    run_case(id="manifest-name-too-long", field="metadata.name", files={"m.yaml": manifest(name="a" * 64)}),
    run_case(id="manifest-name-uppercase", field="metadata.name", files={"m.yaml": manifest(name="Round1")}),
    run_case(id="manifest-unknown-field", field="spec.synthesys", files={"m.yaml": manifest("synthesys: {numDialogues: 2}")}),
    run_case(id="manifest-wrong-api-version", field="apiVersion",
             files={"m.yaml": manifest().replace("looptool.io/v1alpha1", "looptool.io/v9")}),
    run_case(id="manifest-two-toolset-sources", field="spec.toolset",
             files={"m.yaml": manifest().replace("toolset: {bfcl: {category: simple_python}}",
                                                 "toolset: {file: t.json, bfcl: {category: simple_python}}")}),
    run_case(id="manifest-previous-round-later", field="spec.previousRound",
             files={"m.yaml": manifest("previousRound: r2") + "---\n" + manifest(name="r2")}),
    run_case(id="manifest-bad-volume-size", field="spec.resources.workVolumeSize",
             files={"m.yaml": manifest("resources: {workVolumeSize: lots}")}),
    run_case(id="manifest-bad-queue-name", field="spec.training.queueName",
             files={"m.yaml": manifest("training: {queueName: 'bad name!'}")}),
    run_case(id="manifest-string-for-number", field="spec.synthesis.numDialogues",
             files={"m.yaml": manifest("synthesis: {numDialogues: many}")}),
    *[run_case(id=f"manifest-{path}={value[:12]}", field=named, files={"m.yaml": manifest(nan_spec(path, value))})
      for path, value, named in MANIFEST_NUMBERS],
    # --- config files and environment overrides (-c) -----------------------------------------
    Case(id="config-not-utf8", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="c.yaml",
         files={"c.yaml": b"log: {level: \xffINFO}\n"}),
    Case(id="config-over-cap", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="c.yaml",
         files={"c.yaml": b"#" * (LIMITS.config_bytes + 1)}),
    Case(id="config-malformed", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="c.yaml",
         files={"c.yaml": "storage: {root: [\n"}),
    Case(id="config-port-out-of-range", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="services.inference.port",
         files={"c.yaml": "services: {inference: {port: 70000}}\n"}),
    Case(id="config-limit-zero", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="limits.n",
         files={"c.yaml": "limits: {n: 0}\n"}),
    Case(id="config-limit-not-number", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="limits.prompt_bytes",
         files={"c.yaml": "limits: {prompt_bytes: big}\n"}),
    Case(id="config-unknown-section", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="limitz",
         files={"c.yaml": "limitz: {n: 3}\n"}),
    Case(id="config-top-level-list", argv=["-c", "c.yaml", "data", "verify", "{samples}"], field="c.yaml",
         files={"c.yaml": "- a\n- b\n"}),
    Case(id="config-env-negative-limit", argv=["data", "verify", "{samples}"], field="LOOPTOOL_LIMITS__MAX_TOKENS",
         env={"LOOPTOOL_LIMITS__MAX_TOKENS": "-5"}),
    Case(id="config-env-port-beyond", argv=["data", "verify", "{samples}"], field="LOOPTOOL_SERVICES__TOOLSIM__PORT",
         env={"LOOPTOOL_SERVICES__TOOLSIM__PORT": "65536"}),
    # --- toolsets (tools import / validate) --------------------------------------------------
    Case(id="toolset-not-utf8", argv=["tools", "import", "t.json"], field="t.json",
         files={"t.json": json.dumps([GOOD_TOOL]).encode().replace(b"Weather", b"W\xe9ather")}),
    Case(id="toolset-utf16", argv=["tools", "validate", "t.json"], field="t.json",
         files={"t.json": json.dumps([GOOD_TOOL]).encode("utf-16")}),
    Case(id="toolset-over-cap", argv=["tools", "import", "t.json"], field="t.json", env={"LOOPTOOL_LIMITS__TOOLSET_BYTES": "2048"},
         files={"t.json": json.dumps([GOOD_TOOL] * 40)}),
    Case(id="toolset-device-file", argv=["tools", "import", "/dev/zero"], field="/dev/zero", env={"LOOPTOOL_LIMITS__TOOLSET_BYTES": "4096"}),
    Case(id="toolset-duplicate-names-import", argv=["tools", "import", "t.json"], field="'get_weather': field 'name'",
         files={"t.json": json.dumps([GOOD_TOOL, GOOD_TOOL])}),
    Case(id="toolset-duplicate-names-validate", argv=["tools", "validate", "t.json"], field="'get_weather': field 'name'",
         files={"t.json": json.dumps([GOOD_TOOL, GOOD_TOOL])}),
    Case(id="toolset-not-json", argv=["tools", "import", "t.json"], field="t.json", files={"t.json": "{nope\n"}),
    Case(id="toolset-traversal-to-non-json", argv=["tools", "import", "../../../../../../../../etc/hostname"], field="hostname"),
    Case(id="toolset-empty-directory", argv=["tools", "import", "tools"], field="tools", files={"tools/readme.txt": "x"}),
    Case(id="toolset-limit-negative", argv=["tools", "import", "t.json", "--limit", "-1"], field="--limit", files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-offset-negative", argv=["tools", "validate", "t.json", "--offset", "-2"], field="--offset", files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-limit-absurd", argv=["tools", "import", "t.json", "--limit", "99999999999999999999999"], field="--limit",
         files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-limit-float", argv=["tools", "import", "t.json", "--limit", "1e99"], field="--limit", files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-timeout-zero", argv=["tools", "import", "t.json", "--timeout", "0"], field="--timeout", files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-timeout-nan", argv=["tools", "import", "t.json", "--timeout", "nan"], field="--timeout", files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-format-unknown", argv=["tools", "import", "t.json", "--format", "yaml"], field="--format", files={"t.json": json.dumps([GOOD_TOOL])}),
    Case(id="toolset-dead-mcp-http", argv=["tools", "import", "http://127.0.0.1:{dead_port}/mcp", "--timeout", "2"], field="127.0.0.1:{dead_port}"),
    Case(id="toolset-mcp-stdio-missing-command", argv=["tools", "import", "mcp+stdio:/nonexistent/mcp-server"], field="/nonexistent/mcp-server"),
    # --- data ----------------------------------------------------------------------------------
    Case(id="data-show-head-negative", argv=["data", "show", "{samples}", "-n", "-1"], field="--head"),
    Case(id="data-show-head-absurd", argv=["data", "show", "{samples}", "-n", "99999999999999999999"], field="--head"),
    Case(id="data-show-head-text", argv=["data", "show", "{samples}", "-n", "three"], field="--head"),
    Case(id="data-show-empty-uri", argv=["data", "show", ""], field="URI"),
    Case(id="data-show-unsupported-scheme", argv=["data", "show", "ftp://host/data"], field="ftp://host/data"),
    Case(id="data-show-file-uri-with-host", argv=["data", "show", "file://evil/etc"], field="file://evil/etc"),
    Case(id="data-show-s3-no-endpoint", argv=["data", "show", "s3://bucket/x"], field="s3://bucket/x"),
    Case(id="data-diff-show-negative", argv=["data", "diff", "{samples}", "{samples}", "--show", "-5"], field="--show"),
    Case(id="data-convert-fraction-one", argv=["data", "convert", "{dialogs}", "out", "--heldout-fraction", "1"], field="--heldout-fraction"),
    Case(id="data-convert-fraction-negative", argv=["data", "convert", "{dialogs}", "out", "--heldout-fraction", "-0.1"], field="--heldout-fraction"),
    Case(id="data-convert-fraction-nan", argv=["data", "convert", "{dialogs}", "out", "--heldout-fraction", "nan"], field="--heldout-fraction"),
    Case(id="data-convert-fraction-inf", argv=["data", "convert", "{dialogs}", "out", "--heldout-fraction", "inf"], field="--heldout-fraction"),
    Case(id="data-convert-round-negative", argv=["data", "convert", "{dialogs}", "out", "--round", "-1"], field="--round"),
    Case(id="data-convert-round-absurd", argv=["data", "convert", "{dialogs}", "out", "--round", "10000000000"], field="--round"),
    Case(id="data-convert-kinds-unknown", argv=["data", "convert", "{dialogs}", "out", "--kinds", "call,bogus"], field="--kinds"),
    Case(id="data-convert-source-not-dialogs", argv=["data", "convert", "{samples}", "out"], field="src"),
    Case(id="data-convert-dst-inside-src", argv=["data", "convert", "{dialogs}", "{dialogs}/out"], field="dst"),
    Case(id="data-copy-format-unknown", argv=["data", "copy", "{samples}", "out", "--format", "xml"], field="--format"),
    Case(id="data-copy-onto-itself", argv=["data", "copy", "{samples}", "{samples}"], field="{samples}"),
    Case(id="data-import-not-utf8", argv=["data", "import-jsonl", "in.jsonl", "out"], field="in.jsonl",
         files={"in.jsonl": b'{"id": "caf\xe9"}\n'}),
    Case(id="data-import-not-json", argv=["data", "import-jsonl", "in.jsonl", "out"], field="in.jsonl:2",
         files={"in.jsonl": '{"id": 1}\n{oops\n'}),
    Case(id="data-import-not-object", argv=["data", "import-jsonl", "in.jsonl", "out"], field="in.jsonl:1", files={"in.jsonl": "[1, 2]\n"}),
    Case(id="data-import-device", argv=["data", "import-jsonl", "/dev/zero", "out"], field="/dev/zero"),
    Case(id="data-unknown-action", argv=["data", "shwo", "{samples}"], field="ACTION"),
    # --- eval ----------------------------------------------------------------------------------
    Case(id="eval-limit-negative", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--limit", "-1"], field="--limit"),
    Case(id="eval-max-tokens-zero", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--max-tokens", "0"], field="--max-tokens"),
    Case(id="eval-max-tokens-negative", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--max-tokens", "-7"], field="--max-tokens"),
    Case(id="eval-max-tokens-over-cap", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--max-tokens", str(LIMITS.max_tokens + 1)],
         field="--max-tokens"),
    Case(id="eval-max-tokens-over-configured-cap", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--max-tokens", "300"],
         field="--max-tokens", env={"LOOPTOOL_LIMITS__MAX_TOKENS": "256"}),
    Case(id="eval-dead-server", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--server", "127.0.0.1:{dead_port}"], field="--server"),
    Case(id="eval-server-no-port", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--server", "localhost"], field="--server"),
    Case(id="eval-server-port-beyond", argv=["eval", "--model", "m", "--bfcl", "simple_python", "--server", "127.0.0.1:70000"], field="--server"),
    Case(id="eval-unknown-category", argv=["eval", "--model", "m", "--bfcl", "no_such_category"], field="--bfcl"),
    Case(id="eval-nothing-to-do", argv=["eval", "--model", "m"], field="--bfcl"),
    # --- serve / operator / top level -----------------------------------------------------------
    Case(id="serve-port-beyond", argv=["serve", "toolsim", "--port", "70000"], field="--port"),
    Case(id="serve-port-65536", argv=["serve", "toolsim", "--port", "65536"], field="--port"),
    Case(id="serve-port-negative", argv=["serve", "toolsim", "--port", "-1"], field="--port"),
    Case(id="serve-port-text", argv=["serve", "toolsim", "--port", "http"], field="--port"),
    Case(id="serve-metrics-port-beyond", argv=["serve", "toolsim", "--port", "0", "--metrics-port", "99999"], field="--metrics-port"),
    Case(id="serve-port-busy", argv=["serve", "toolsim", "--port", "{busy_port}"], field="--port"),
    Case(id="serve-metrics-port-busy", argv=["serve", "toolsim", "--port", "0", "--metrics-port", "{busy_port}"], field="--metrics-port"),
    Case(id="serve-configured-port-busy", argv=["serve", "toolsim"], field="services.toolsim.port",
         env={"LOOPTOOL_SERVICES__TOOLSIM__PORT": "{busy_port}"}),
    Case(id="serve-unknown-service", argv=["serve", "database"], field="service"),
    Case(id="operator-metrics-port-beyond", argv=["operator", "--metrics-port", "65536"], field="--metrics-port"),
    Case(id="unknown-command", argv=["frobnicate"], field="COMMAND"),
    Case(id="log-level-unknown", argv=["--log-level", "LOUD", "data", "verify", "{samples}"], field="--log-level"),
]


# ---------------------------------------------------------------------------------------------
# Fixtures: committed datasets to point commands at, a port nothing listens on, a busy port
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from looptool.shared.records import Dialog, Message, Sample, ToolCall
    from looptool.shared.storage import writer_for_uri

    root = tmp_path_factory.mktemp("datasets")
    w = writer_for_uri((root / "samples").as_uri(), kind="samples")
    w.write_many([Sample(id=f"s{i}", context=[Message(role="user", content=f"q{i}")],
                         reference=[ToolCall(name="f", arguments={"i": i})]) for i in range(3)])
    samples = w.commit().uri
    w = writer_for_uri((root / "dialogs").as_uri(), kind="dialogs")
    w.write_many([Dialog(id="d0", messages=[Message(role="user", content="hi"), Message(role="assistant", content="hello")])])
    dialogs = w.commit().uri
    return root, {"samples": samples, "dialogs": dialogs}


@pytest.fixture(scope="module")
def ports():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    yield {"busy_port": str(busy.getsockname()[1]), "dead_port": str(dead.getsockname()[1])}
    busy.close()
    dead.close()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and mtime: what 'nothing written' compares."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return text


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_cli_bad_input_is_one_line_and_writes_nothing(case: Case, tmp_path, monkeypatch, capsys, datasets, ports):
    ds_root, uris = datasets
    values = {**uris, **ports}
    for var in list(os.environ):
        if var.startswith("LOOPTOOL_") or var.startswith("AWS_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOOPTOOL_STORAGE__ROOT", str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    for k, v in case.env.items():
        monkeypatch.setenv(k, fill(v, values))
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    before, before_ds = tree(tmp_path), tree(ds_root)

    rc = main([fill(a, values) for a in case.argv])
    out, err = capsys.readouterr()

    assert rc != 0, f"exit 0 for bad input; stdout: {out[:500]}"
    assert "Traceback" not in err + out
    lines = error_lines(err)
    assert len(lines) == 1, f"want one error line, got {len(lines)}:\n{err}"
    assert fill(case.field, values) in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    assert tree(tmp_path) == before, "bad input wrote files"
    assert tree(ds_root) == before_ds, "bad input changed the source datasets"


def test_corpus_is_large_enough():
    assert len(CASES) + len(RPC_CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------------
# RPC fields: one set of real servers for the module
# ---------------------------------------------------------------------------------------------


@dataclass
class Rpc:
    id: str
    service: str  # inference | synthesizer | expander | trainer
    method: str
    request: dict  # keyword arguments of the request message (nested dicts for messages)
    field: str

    def param(self):
        return pytest.param(self, id=self.id)


DS = {"uri": "file:///nonexistent/never-read", "content_hash": "0" * 64, "record_count": 1, "format": "jsonl", "kind": "samples"}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
BIG = "x" * (LIMITS.prompt_bytes + 1)


def gen(**params) -> dict:
    return {"messages": MSG, "params": params}


RPC_CASES: list[Rpc] = [
    Rpc("generate-max-tokens-negative", "inference", "Generate", gen(max_tokens=-1), "params.max_tokens"),
    Rpc("generate-max-tokens-over-cap", "inference", "Generate", gen(max_tokens=LIMITS.max_tokens + 1), "params.max_tokens"),
    Rpc("generate-max-tokens-int32-max", "inference", "Generate", gen(max_tokens=2**31 - 1), "params.max_tokens"),
    Rpc("generate-temperature-negative", "inference", "Generate", gen(temperature=-0.5), "params.temperature"),
    Rpc("generate-temperature-nan", "inference", "Generate", gen(temperature=float("nan")), "params.temperature"),
    Rpc("generate-temperature-inf", "inference", "Generate", gen(temperature=float("inf")), "params.temperature"),
    Rpc("generate-top-p-above-one", "inference", "Generate", gen(top_p=1.5), "params.top_p"),
    Rpc("generate-top-p-nan", "inference", "Generate", gen(top_p=float("nan")), "params.top_p"),
    Rpc("generate-n-negative", "inference", "Generate", gen(n=-1), "params.n"),
    Rpc("generate-n-over-cap", "inference", "Generate", gen(n=LIMITS.n + 1), "params.n"),
    Rpc("generate-prompt-over-cap", "inference", "Generate", {"messages": [{"role": "user", "content": BIG}]}, "messages"),
    Rpc("generate-tools-over-cap", "inference", "Generate",
        {"messages": MSG, "tools": [{"name": "f", "description": BIG, "parameters_json": "{}"}]}, "messages"),
    Rpc("stream-max-tokens-negative", "inference", "GenerateStream", gen(max_tokens=-5), "params.max_tokens"),
    Rpc("stream-temperature-nan", "inference", "GenerateStream", gen(temperature=float("nan")), "params.temperature"),
    Rpc("stream-prompt-over-cap", "inference", "GenerateStream", {"messages": [{"role": "user", "content": BIG}]}, "messages"),
    Rpc("batch-too-many-requests", "inference", "GenerateBatch", {"requests": [{}] * (LIMITS.batch_requests + 1)}, "requests"),
    Rpc("probe-k-negative", "inference", "Probe", {"dataset": DS, "k": -1}, "ProbeRequest.k"),
    Rpc("probe-k-over-cap", "inference", "Probe", {"dataset": DS, "k": LIMITS.n + 1}, "ProbeRequest.k"),
    Rpc("probe-temperature-nan", "inference", "Probe", {"dataset": DS, "temperature": float("nan")}, "ProbeRequest.temperature"),
    Rpc("probe-temperature-negative", "inference", "Probe", {"dataset": DS, "temperature": -1.0}, "ProbeRequest.temperature"),
    Rpc("probe-max-tokens-negative", "inference", "Probe", {"dataset": DS, "max_tokens": -1}, "ProbeRequest.max_tokens"),
    Rpc("probe-max-tokens-over-cap", "inference", "Probe", {"dataset": DS, "max_tokens": LIMITS.max_tokens + 1}, "ProbeRequest.max_tokens"),
    Rpc("probe-round-negative", "inference", "Probe", {"dataset": DS, "round": -1}, "ProbeRequest.round"),
    Rpc("probe-config-max-tokens-over-cap", "inference", "Probe",
        {"dataset": DS, "config_json": json.dumps({"maxTokens": LIMITS.max_tokens + 1})}, "maxTokens"),
    Rpc("probe-config-unknown-field", "inference", "Probe", {"dataset": DS, "config_json": '{"kk": 3}'}, "kk"),
    Rpc("probe-request-over-cap", "inference", "Probe", {"dataset": DS, "config_json": " " * (LIMITS.prompt_bytes + 1)}, "ProbeRequest"),
    Rpc("judge-votes-negative", "inference", "Judge", {"probe_results": DS, "votes": -1}, "JudgeRequest.votes"),
    Rpc("judge-votes-over-cap", "inference", "Judge", {"probe_results": DS, "votes": LIMITS.n + 1}, "JudgeRequest.votes"),
    Rpc("judge-round-negative", "inference", "Judge", {"probe_results": DS, "round": -2}, "JudgeRequest.round"),
    Rpc("judge-config-candidates-beyond", "inference", "Judge", {"probe_results": DS, "config_json": '{"candidates": 1000}'}, "candidates"),
    Rpc("judge-config-votes-zero", "inference", "Judge", {"probe_results": DS, "config_json": '{"votes": 0}'}, "votes"),
    Rpc("synth-dialogues-negative", "synthesizer", "Synthesize", {"toolset": DS, "num_dialogues": -1}, "num_dialogues"),
    Rpc("synth-dialogues-over-cap", "synthesizer", "Synthesize", {"toolset": DS, "num_dialogues": LIMITS.dialogues + 1}, "num_dialogues"),
    Rpc("synth-concurrency-negative", "synthesizer", "Synthesize", {"toolset": DS, "num_dialogues": 2, "concurrency": -4}, "concurrency"),
    Rpc("synth-concurrency-over-cap", "synthesizer", "Synthesize",
        {"toolset": DS, "num_dialogues": 2, "concurrency": LIMITS.concurrency + 1}, "concurrency"),
    Rpc("synth-round-negative", "synthesizer", "Synthesize", {"toolset": DS, "num_dialogues": 2, "round": -1}, "round"),
    Rpc("synth-config-not-json", "synthesizer", "Synthesize", {"toolset": DS, "num_dialogues": 2, "config_json": "{oops"}, "config_json"),
    Rpc("expand-factor-negative", "expander", "Expand", {"verdicts": DS, "output_prefix": "file:///tmp/never", "factor": -1}, "factor"),
    Rpc("expand-factor-over-cap", "expander", "Expand",
        {"verdicts": DS, "output_prefix": "file:///tmp/never", "factor": LIMITS.expand_factor + 1}, "factor"),
    Rpc("expand-round-negative", "expander", "Expand", {"verdicts": DS, "output_prefix": "file:///tmp/never", "round": -1}, "round"),
    Rpc("expand-config-unknown-field", "expander", "Expand",
        {"verdicts": DS, "output_prefix": "file:///tmp/never", "config_json": '{"fact0r": 2}'}, "fact0r"),
    Rpc("train-learning-rate-negative", "trainer", "Train",
        {"dataset": DS, "base_checkpoint_uri": "file:///tmp/never-model", "output_prefix": "file:///tmp/never", "config_json": '{"learningRate": -1}'}, "learningRate"),
    Rpc("train-group-size-one", "trainer", "Train",
        {"dataset": DS, "base_checkpoint_uri": "file:///tmp/never-model", "output_prefix": "file:///tmp/never", "config_json": '{"groupSize": 1}'}, "groupSize"),
    Rpc("train-epochs-zero", "trainer", "Train", {"dataset": DS, "base_checkpoint_uri": "file:///tmp/never-model", "output_prefix": "file:///tmp/never", "config_json": '{"epochs": 0}'}, "epochs"),
    Rpc("train-no-dataset", "trainer", "Train", {"output_prefix": "file:///tmp/never"}, "dataset"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The inference server (tiny local model), synthesizer, expander and trainer, on loopback."""
    from support.inference import tiny_model_dir

    from looptool.services.expander import server as expander_server
    from looptool.services.inference import server as inference_server
    from looptool.services.synthesizer import server as synthesizer_server
    from looptool.services.trainer import server as trainer_server
    from looptool.shared.config import load_config

    root = tmp_path_factory.mktemp("rpc")
    cfg = load_config(environ={"LOOPTOOL_STORAGE__ROOT": str(root / "store")})
    cfg.inference.model = str(tiny_model_dir())
    running = {
        "inference": inference_server.start(cfg),
        "synthesizer": synthesizer_server.start(cfg),
        "expander": expander_server.start(cfg),
        "trainer": trainer_server.start(cfg, workdir=root / "trainer"),
    }
    yield root, running
    for r in running.values():
        r.stop(0)


def _stub(service: str, channel: grpc.Channel):
    from looptool.v1 import expander_pb2_grpc, inference_pb2_grpc, synthesizer_pb2_grpc, trainer_pb2_grpc

    return {
        "inference": inference_pb2_grpc.InferenceServiceStub,
        "synthesizer": synthesizer_pb2_grpc.DialogueSynthesizerStub,
        "expander": expander_pb2_grpc.ExpanderStub,
        "trainer": trainer_pb2_grpc.TrainerStub,
    }[service](channel)


def _request(service: str, method: str, fields: dict):
    from google.protobuf import json_format

    from looptool.v1 import expander_pb2, inference_pb2, synthesizer_pb2, trainer_pb2

    cls = {
        ("inference", "Generate"): inference_pb2.GenerateRequest,
        ("inference", "GenerateStream"): inference_pb2.GenerateRequest,
        ("inference", "GenerateBatch"): inference_pb2.GenerateBatchRequest,
        ("inference", "Probe"): inference_pb2.ProbeRequest,
        ("inference", "Judge"): inference_pb2.JudgeRequest,
        ("synthesizer", "Synthesize"): synthesizer_pb2.SynthesizeRequest,
        ("expander", "Expand"): expander_pb2.ExpandRequest,
        ("trainer", "Train"): trainer_pb2.TrainRequest,
    }[(service, method)]
    msg = cls()
    json_format.ParseDict(_nan_safe(fields), msg)
    return msg


def _nan_safe(obj):
    # json_format takes the strings "NaN"/"Infinity" for doubles
    if isinstance(obj, float) and obj != obj:
        return "NaN"
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return "Infinity" if obj > 0 else "-Infinity"
    if isinstance(obj, dict):
        return {k: _nan_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_safe(v) for v in obj]
    return obj


@pytest.mark.parametrize("case", [c.param() for c in RPC_CASES])
def test_rpc_bad_field_is_invalid_argument_in_one_line(case: Rpc, servers):
    from looptool.shared.grpc_util import channel

    root, running = servers
    before = tree(root)
    req = _request(case.service, case.method, case.request)
    with channel(running[case.service].address) as ch:
        call = getattr(_stub(case.service, ch), case.method)
        with pytest.raises(grpc.RpcError) as info:
            resp = call(req, timeout=30)
            if not hasattr(resp, "ByteSize"):  # a stream: the status comes while reading it
                list(resp)
    err = info.value
    details = err.details() or ""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), details)
    assert "\n" not in details and "Traceback" not in details, details
    assert case.field in details, details
    assert tree(root) == before, "a refused request wrote files"


def test_batch_item_over_a_cap_fails_alone_naming_its_field(servers):
    """A bad item in GenerateBatch is reported in its place (the others still run)."""
    from looptool.shared.grpc_util import channel

    _, running = servers
    req = _request("inference", "GenerateBatch", {"requests": [gen(max_tokens=2), gen(max_tokens=-1), gen(n=LIMITS.n + 1, max_tokens=2)]})
    with channel(running["inference"].address) as ch:
        items = {it.index: it for it in _stub("inference", ch).GenerateBatch(req, timeout=60)}
    assert items[0].HasField("response") and items[0].response.completions
    assert items[1].error.code == "INVALID_ARGUMENT" and "requests[1].params.max_tokens" in items[1].error.message
    assert items[2].error.code == "INVALID_ARGUMENT" and "requests[2].params.n" in items[2].error.message


def test_a_round_toolset_file_with_a_duplicate_tool_name_is_refused(tmp_path):
    from looptool.shared.errors import InputError
    from looptool.shared.loop.manifest import ToolsetRef
    from looptool.shared.toolsets import resolve_toolset

    path = tmp_path / "t.json"
    path.write_text(json.dumps([GOOD_TOOL, GOOD_TOOL]))
    with pytest.raises(InputError) as info:
        resolve_toolset(ToolsetRef(file=str(path)))
    assert "spec.toolset.file" in str(info.value) and "'get_weather'" in str(info.value) and "\n" not in str(info.value)
