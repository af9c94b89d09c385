"""Model onboarding: ``looptool model import|list``, the model URI checks and resolvers, and the
check that runs before any stage (``looptool run`` and the operator).

The docs test runs the exact commands of docs/kubernetes.md's model-import block (found by its
``<!-- doc-test: model-import`` marker) against a SeaweedFS S3 server. ``kubectl`` is a stand-in on
PATH that does what the two kubectl commands do on a cluster: ``port-forward`` forwards a local port
to the S3 server, ``get secret -o jsonpath`` prints the base64 credential. It accepts only the service,
port, secret and keys the chart renders (``helm template`` with section 2's values), so the block
cannot drift from the chart.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from looptool.cli import main
from looptool.shared.config import InferenceSettings, LoopToolConfig, S3Settings, ServiceEndpoint, ServicesSettings, StorageSettings
from looptool.shared.loop.manifest import parse_round
from looptool.shared.loop.preflight import check_round_models
from looptool.shared.models import ModelNotFound, check_model_uri, import_model, list_models, resolve_model_dir
from looptool.shared.storage import split_uri
from looptool.shared.storage.artifacts import ARTIFACT_MANIFEST

from support import REPO
from support.inference import tiny_model_dir
from support.k8s_tools import helm
from support.waiting import wait_for

DOC = REPO / "docs" / "kubernetes.md"
MARKER = "<!-- doc-test: model-import"
FORWARD_PORT = 9000  # the local port the doc's port-forward opens


def doc_block() -> str:
    text = DOC.read_text()
    assert MARKER in text, f"{DOC}: the model-import block marker {MARKER!r} is gone"
    after = text[text.index(MARKER) :]
    m = re.search(r"```bash\n(.*?)```", after, re.S)
    assert m is not None and after.index("```bash") < after.index("\n\n"), "the marker must sit right above a ```bash block"
    return m.group(1)


def model_copy(dest: Path) -> Path:
    shutil.copytree(tiny_model_dir(hidden=32, layers=1), dest)
    return dest


def file_hashes(d: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def s3_config(server, **kw: Any) -> LoopToolConfig:
    return LoopToolConfig(storage=StorageSettings(backend="s3", s3=server.settings()), **kw)


# ------------------------------------------------------------------------------------------------ the docs, run


FAKE_KUBECTL = r'''#!{python}
"""kubectl stand-in for the docs test: port-forward (a real TCP forwarder) and get secret."""
import asyncio, base64, os, sys

args = sys.argv[1:]
want = os.environ
if args[:2] != ["-n", want["FAKE_NS"]]:
    sys.exit(f"fake kubectl: expected -n {{want['FAKE_NS']}}, got {{args}}")
args = args[2:]
if args[:1] == ["port-forward"]:
    target, ports = args[1], args[2]
    local, _, remote = ports.partition(":")
    if target != f"svc/{{want['FAKE_SERVICE']}}" or remote != want["FAKE_SERVICE_PORT"]:
        sys.exit(f"fake kubectl: no such service/port {{target}} {{ports}}")
    host, port = want["FAKE_TARGET"].rsplit(":", 1)

    async def pipe(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def handle(r, w):
        ur, uw = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", int(local))
        print(f"Forwarding from 127.0.0.1:{{local}} -> {{remote}}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())
elif args[:2] == ["get", "secret"]:
    name, flag, path = args[2], args[3], args[4]
    keys = {{"{{.data.accessKey}}": want["FAKE_ACCESS_KEY"], "{{.data.secretKey}}": want["FAKE_SECRET_KEY"]}}
    if name != want["FAKE_SECRET"] or flag != "-o" or not path.startswith("jsonpath=") or path[9:] not in keys:
        sys.exit(f"fake kubectl: unsupported {{args}}")
    sys.stdout.write(base64.b64encode(keys[path[9:]].encode()).decode())
else:
    sys.exit(f"fake kubectl: unsupported {{args}}")
'''


def chart_names() -> dict[str, str]:
    """Names a `helm install looptool` with the bundled object store (SeaweedFS) creates."""
    out = helm("template", "looptool", str(REPO / "charts" / "looptool"), "--namespace", "looptool").stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (svc,) = [d for d in docs if d["kind"] == "Service" and any(p.get("name") == "s3" for p in d["spec"]["ports"])]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == svc["metadata"]["name"]]
    # the Secret every LoopTool service reads its S3 credentials from (the services' identity)
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    refs = [env[n]["valueFrom"]["secretKeyRef"] for n in ("LOOPTOOL_S3_ACCESS_KEY", "LOOPTOOL_S3_SECRET_KEY")]
    assert sts["metadata"]["name"] == svc["metadata"]["name"]
    cfg = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {}))
    return {
        "service": svc["metadata"]["name"],
        "port": str(next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "s3")),
        "secret": refs[0]["name"],
        "keys": f"{refs[0]['key']},{refs[1]['key']}",
        "bucket": yaml.safe_load(cfg["data"]["config.yaml"])["storage"]["s3"]["bucket"],
    }


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_docs_model_import_commands_run_against_s3_and_both_services_load_the_model(seaweed, tmp_path):  # noqa: F811
    block = doc_block()
    assert "mc cp" not in block and "looptool model import" in block and "looptool model list" in block
    uris = re.findall(r"s3://[^\s'\"]+", block)
    model_uri = next(u for u in uris if "import" in block.split(u)[0].splitlines()[-1])
    names = chart_names()
    assert names["keys"] == "accessKey,secretKey"
    assert model_uri.startswith(f"s3://{names['bucket']}/"), (model_uri, names["bucket"])
    if not port_free(FORWARD_PORT):
        pytest.skip(f"127.0.0.1:{FORWARD_PORT} is taken on this machine; the doc's port-forward needs it")

    work = tmp_path / "laptop"
    work.mkdir()
    local_dir = block.split("looptool model import ", 1)[1].split()[0]
    model_copy(work / local_dir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPTOOL_", "AWS_"))}
    env.update({
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "FAKE_NS": "looptool", "FAKE_SERVICE": names["service"], "FAKE_SERVICE_PORT": names["port"],
        "FAKE_TARGET": seaweed.endpoint, "FAKE_SECRET": names["secret"],
        "FAKE_ACCESS_KEY": seaweed.access_key, "FAKE_SECRET_KEY": seaweed.secret_key,
    })
    script = tmp_path / "doc-block.sh"
    script.write_text(block)

    def run_block() -> str:
        p = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"the docs' commands failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        return p.stdout

    first = run_block()
    wait_for(lambda: port_free(FORWARD_PORT), what="the block's `kill %1` to end the port-forward")
    assert f"imported {model_uri}" in first, first
    settings = seaweed.settings()
    (info,) = [m for m in list_models(model_uri.rsplit("/", 1)[0], settings) if m.uri == model_uri]
    assert info.files == len(file_hashes(work / local_dir)) and info.content_hash[:12] in first  # `list` printed it
    assert re.search(rf"^{re.escape(info.name)}\s+.*\b{info.files}\s+{info.content_hash[:12]}\s+\d{{4}}-", first, re.M), first
    again = run_block()  # idempotent: the same block again uploads nothing
    assert f"unchanged {model_uri}" in again, again
    wait_for(lambda: port_free(FORWARD_PORT), what="the block's `kill %1` to end the port-forward")

    # The trainer's resolver and check read it from S3 (fetched, checksums verified), same bytes.
    from looptool.services.trainer.modeling import check_base, load_model, resolve_base
    from looptool.shared.loop.manifest import TrainingSpec

    assert check_base(model_uri, TrainingSpec(), settings)
    fetched = resolve_base(model_uri, tmp_path / "trainer-cache", settings)
    assert file_hashes(fetched) == file_hashes(work / local_dir)
    model, tokenizer = load_model(fetched)
    assert model.config.hidden_size == 32 and tokenizer.chat_template

    # The inference server's transformers backend loads the same URI with the storage settings.
    from looptool.services.inference.backends import make_backend
    from looptool.shared.generation import GenRequest, SamplingParams
    from looptool.shared.records import Message

    cwd = os.getcwd()
    os.chdir(tmp_path)  # its model cache is relative to the working directory
    try:
        backend = make_backend(InferenceSettings(model=model_uri, max_context=512), s3=settings)
    finally:
        os.chdir(cwd)
    try:
        (res,) = backend.generate([GenRequest([Message(role="user", content="weather in Oslo?")], [], SamplingParams(max_tokens=4))])
        assert not res.error and res.completion_tokens > 0
    finally:
        backend.close()


# ------------------------------------------------------------------------------------------------ import / list


def test_import_is_verified_idempotent_and_refuses_other_content_without_force(tmp_path, capsys):
    src = model_copy(tmp_path / "m")
    dest = tmp_path / "store" / "models" / "m"
    assert main(["model", "import", str(src), str(dest), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    manifest = json.loads((dest / ARTIFACT_MANIFEST).read_text())
    assert out["action"] == "imported" and out["content_hash"] == manifest["content_hash"]
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == file_hashes(src)
    assert file_hashes(dest / "files") == file_hashes(src)
    mtime = (dest / ARTIFACT_MANIFEST).stat().st_mtime_ns

    assert main(["model", "import", str(src), dest.as_uri()]) == 0
    assert capsys.readouterr().out.startswith(f"unchanged {dest.as_uri()}")
    assert (dest / ARTIFACT_MANIFEST).stat().st_mtime_ns == mtime  # nothing rewritten

    (src / "model.safetensors").rename(src / "pytorch_model.bin")  # other content, fewer files of the old kind
    assert main(["model", "import", str(src), str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(dest) in err and "already holds a different model" in err and "--force" in err
    assert json.loads((dest / ARTIFACT_MANIFEST).read_text())["content_hash"] == manifest["content_hash"]  # untouched

    assert main(["model", "import", str(src), str(dest), "--force"]) == 0
    assert capsys.readouterr().out.startswith("replaced ")
    assert file_hashes(dest / "files") == file_hashes(src)  # the old weights file is gone from files/
    assert resolve_model_dir(str(dest)) == dest / "files"


def test_list_shows_every_model_below_a_prefix(tmp_path, capsys):
    src = model_copy(tmp_path / "m")
    store = tmp_path / "store"
    import_model(src, str(store / "models" / "a"))
    (src / "extra.txt").write_text("x")
    import_model(src, str(store / "models" / "team" / "b"))
    assert main(["model", "list", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "FILES", "HASH", "CREATED"]
    rows = [ln.split() for ln in lines[1:]]
    n = len(file_hashes(src))
    assert [(r[0], r[3]) for r in rows] == [("models/a", str(n - 1)), ("models/team/b", str(n))]
    models = list_models(str(store / "models"))
    assert [m.name for m in models] == ["a", "team/b"] and all(len(m.content_hash) == 64 and m.created_at for m in models)
    assert models[0].content_hash[:12] == rows[0][4]


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def test_bad_model_directories_and_empty_uris_are_one_line_errors(tmp_path, moto_s3, capsys, monkeypatch):  # noqa: F811
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"0")
    hidden_only = tmp_path / "hidden-only"
    (hidden_only / ".cache").mkdir(parents=True)
    (hidden_only / ".cache" / "model.safetensors").write_bytes(b"0")
    (hidden_only / "config.json").write_text("{}")
    dest = str(tmp_path / "out")
    for d, what in [(no_weights, "has no weights"), (no_config, "has no config.json"), (hidden_only, "has no weights"),
                    (tmp_path / "missing", "is not a directory")]:
        err = one_line_error(["model", "import", str(d), dest], capsys)
        assert str(d) in err and what in err, err
    assert not Path(dest).exists()  # nothing written

    for k, v in {"ENDPOINT": moto_s3.endpoint, "ACCESS_KEY": moto_s3.access_key, "SECRET_KEY": moto_s3.secret_key}.items():
        monkeypatch.setenv(f"LOOPTOOL_STORAGE__S3__{k}", v)
    err = one_line_error(["model", "list", "s3://looptool/nothing-here"], capsys)
    assert "s3://looptool/nothing-here" in err and "no model" in err and "looptool model import" in err
    err = one_line_error(["model", "import", str(model_copy(tmp_path / "m")), "s3://looptool"], capsys)
    assert "s3://looptool" in err and "prefix" in err


def test_s3_uri_without_a_model_stays_s3_and_names_the_fix(moto_s3, tmp_path):  # noqa: F811
    from looptool.services.trainer.modeling import resolve_base

    settings = moto_s3.settings()
    # what `mc cp --recursive` leaves: the files, no _artifact.json
    store, key = split_uri("s3://looptool/copied/Qwen", settings)
    store.put_bytes(f"{key}/config.json", b"{}")
    store.put_bytes(f"{key}/model.safetensors", b"0")
    for uri, words in [("s3://looptool/copied/Qwen", ["holds files but no committed model", "mc cp"]),
                       ("s3://looptool/models/absent", ["no model there"])]:
        for call in (lambda u: resolve_base(u, tmp_path / "cache", settings),
                     lambda u: resolve_model_dir(u, tmp_path / "cache", settings),
                     lambda u: check_model_uri(u, settings, purpose="train")):
            with pytest.raises(ModelNotFound) as exc:
                call(uri)
            msg = str(exc.value)
            assert "\n" not in msg and uri in msg and f"looptool model import DIR {uri}" in msg, msg
            assert all(w in msg for w in words), msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

    # the trainer's own check (its request validation) says the same
    from looptool.services.trainer.modeling import check_base
    from looptool.shared.errors import InputError
    from looptool.shared.loop.manifest import TrainingSpec

    with pytest.raises(InputError, match=r"base_checkpoint_uri: .*s3://looptool/models/absent.*looptool model import"):
        check_base("s3://looptool/models/absent", TrainingSpec(), settings)


def test_model_kinds_per_purpose(tmp_path):
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "q4.gguf").write_bytes(b"GGUF")
    check_model_uri(str(gguf_dir), purpose="serve")  # GGUF carries its config: the inference server loads it
    assert import_model(gguf_dir, str(tmp_path / "store" / "q")).model.format == "gguf"
    check_model_uri(str(tmp_path / "store" / "q"), purpose="serve")
    with pytest.raises(ModelNotFound, match="artifact has no config.json .the trainer loads a transformers model"):
        check_model_uri(str(tmp_path / "store" / "q"), purpose="train")
    (gguf_dir / "config.json").write_text("{}")
    assert import_model(gguf_dir, str(tmp_path / "store" / "q"), force=True).action == "replaced"
    with pytest.raises(ModelNotFound, match="only GGUF weights; the trainer needs"):
        check_model_uri(str(tmp_path / "store" / "q"), purpose="train")
    with pytest.raises(ModelNotFound, match="does not exist"):
        check_model_uri(str(tmp_path / "nope"))
    check_model_uri(str(tmp_path / "nope"), local_paths=False)  # the operator cannot see local paths: skipped


# ------------------------------------------------------------------------------------------------ before any stage


def round_doc(name: str = "r1", base: str = "s3://looptool/models/missing", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"baseModel": {"uri": base}, "toolset": {"bfcl": {"category": "simple_python", "limit": 3}}}
    body.update(spec)
    return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name}, "spec": body}


def test_round_model_check_covers_base_and_judge_models(moto_s3, tmp_path):  # noqa: F811
    cfg = s3_config(moto_s3)
    with pytest.raises(ModelNotFound, match=r"^LoopRound r1: spec\.baseModel\.uri: s3://looptool/models/missing: .*looptool model import"):
        check_round_models(parse_round(round_doc()), cfg)
    check_round_models(parse_round(round_doc(previousRound="r0")), cfg)  # starts from r0's checkpoint, not baseModel
    check_round_models(parse_round(round_doc(base="builtin:tiny")), cfg)
    tiny = round_doc()
    tiny["spec"]["baseModel"] = {"builtin": "tiny"}
    check_round_models(parse_round(tiny), cfg)

    judged = parse_round(round_doc(base="builtin:tiny", judge={"backend": "llm", "model": "s3://looptool/models/judge"}))
    with pytest.raises(ModelNotFound, match=r"spec\.judge\.model: s3://looptool/models/judge"):
        check_round_models(judged, cfg)
    hosted = cfg.model_copy(update={"inference": InferenceSettings(backend="openai", base_url="http://x/v1", model="gpt")})
    check_round_models(judged, hosted)  # a hosted judge is a model *name*, not a location
    import_model(model_copy(tmp_path / "j"), "s3://looptool/models/judge", cfg.storage.s3)
    check_round_models(judged, cfg)


def test_looptool_run_checks_models_before_starting_services(moto_s3, tmp_path, monkeypatch, capsys):  # noqa: F811
    for k, v in {"ENDPOINT": moto_s3.endpoint, "ACCESS_KEY": moto_s3.access_key, "SECRET_KEY": moto_s3.secret_key}.items():
        monkeypatch.setenv(f"LOOPTOOL_STORAGE__S3__{k}", v)
    root = tmp_path / "store"
    manifest = tmp_path / "round.yaml"
    manifest.write_text(yaml.safe_dump(round_doc(base="s3://looptool/models/missing")))
    err = one_line_error(["run", str(manifest), "--storage-root", str(root), "--quiet"], capsys)
    assert "spec.baseModel.uri: s3://looptool/models/missing" in err and "looptool model import DIR s3://looptool/models/missing" in err
    judge = tmp_path / "no-judge"
    manifest.write_text(yaml.safe_dump(round_doc(base="builtin:tiny", judge={"model": str(judge)})))
    err = one_line_error(["run", str(manifest), "--storage-root", str(root), "--quiet"], capsys)
    assert f"spec.judge.model: {judge} does not exist" in err
    assert not (root / "logs").exists()  # no service was started, no stage ran


# ------------------------------------------------------------------------------------------------ the operator


def test_operator_reports_model_not_found_before_any_stage_and_starts_once_imported(moto_s3, tmp_path):  # noqa: F811
    from kopf.testing import KopfRunner

    from looptool.operators.executor import ServiceExecutor
    from looptool.operators.main import build
    from looptool.operators.settings import OperatorSettings
    from support.fake_kube import FakeKubeApi

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed once the block ends: every gRPC call fails UNAVAILABLE
    services = ServicesSettings(**{n: ServiceEndpoint(port=dead) for n in ("inference", "toolsim", "synthesizer", "expander", "trainer")})
    cfg = s3_config(moto_s3, services=services)
    uri = "s3://looptool/models/Qwen3-8B-op"
    lr = ("looptool.io/v1alpha1", "looprounds")
    with FakeKubeApi() as api:
        settings = OperatorSettings(namespaces=["default"], apiUrl=api.url, metricsPort=0, pollSeconds=0.3,
                                    progressSeconds=0.2, stageRetries=0, retryBackoffSeconds=0.05)
        rt, registry, kopf_settings = build(settings, ServiceExecutor(cfg))
        try:
            with KopfRunner(["run", "--standalone", "-n", "default"], registry=registry, settings=kopf_settings, timeout=60) as runner:
                api.create(*lr, round_doc("r1", base=uri, training={"backend": "verl", "gpus": 1}))
                st = wait_for(lambda: ((api.get(*lr, "r1") or {}).get("status") or {}).get("reason") == "ModelNotFound"
                              and api.get(*lr, "r1")["status"], what="ModelNotFound")
                msg = st["message"]
                assert "\n" not in msg and "spec.baseModel.uri" in msg and uri in msg and f"looptool model import DIR {uri}" in msg
                conds = {c["type"]: c for c in st["conditions"]}
                assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "ModelNotFound")
                assert conds["ModelsFound"]["status"] == "False" and conds["SpecValid"]["status"] == "True"
                assert st.get("phase", "Pending") == "Pending" and not st.get("stages")
                time.sleep(1.0)  # several checks: still nothing created, one Warning event
                assert api.list("batch/v1", "jobs") == [] and api.list("v1", "configmaps") == []
                warnings = [e for e in api.list("v1", "events") if e["reason"] == "ModelNotFound"]
                assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

                import_model(model_copy(tmp_path / "m"), uri, cfg.storage.s3)  # the fix the message names
                st = wait_for(lambda: ((api.get(*lr, "r1") or {}).get("status") or {}).get("phase") == "Failed"
                              and api.get(*lr, "r1")["status"], what="the round to start (and fail: no services here)")
                assert st["stages"]["synthesize"]["state"] == "Failed" and "UNAVAILABLE" in st["message"], st
                assert {c["type"]: c["status"] for c in st["conditions"]}["ModelsFound"] == "True"
        finally:
            rt.close()
    assert runner.exception is None, runner.output[-3000:]
