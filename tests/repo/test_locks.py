"""The dependency locks against pyproject.toml's ranges, offline.

locks/cpu.txt is what `make setup` installs (checked against this very venv); locks/gpu-*.txt are
written by `make lock` (locks/lock.py, uv's resolver) for the official vLLM and verl images.
The conflict messages are checked on uv 0.13.8's real explanations, captured from `make lock`
runs against PyPI (the test venv has no uv, and CI should not resolve 250 GPU packages)."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import platform
import sys

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from support import REPO



def _load_lock_module():
    spec = importlib.util.spec_from_file_location("looptool_locks", REPO / "locks" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


lock = _load_lock_module()
PROJECT = lock.project_table()
SETS = {s.name: s for s in lock.SETS}
CPU_EXTRAS = ["test", "bfcl", "gguf"]  # every extra that runs on the CPU lock


def _gpu_lock(name: str) -> tuple[dict[str, str], dict[str, lock.Pin]]:
    header, pins = lock.parse_lock(lock.lock_path(SETS[name]).read_text())
    return header, {p.name: p for p in pins}


def _image_env(python: str) -> dict[str, str]:
    """Marker environment of the images: CPython `python` on linux x86_64."""
    return {
        "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "platform_release": "",
        "platform_version": "", "implementation_version": f"{python}.0", "extra": "",
    }


def _unsatisfied(reqs: list[Requirement], pins: dict[str, str], env: dict[str, str]) -> list[str]:
    bad = []
    for r in reqs:
        if r.marker is not None and not r.marker.evaluate(env):
            continue
        got = pins.get(canonicalize_name(r.name))
        if got is None:
            bad.append(f"{r} (not pinned)")
        elif not r.specifier.contains(Version(got), prereleases=True):
            bad.append(f"{r} (pinned {got})")
    return bad


def _cpu_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, raw in enumerate((REPO / "locks" / "cpu.txt").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        r = Requirement(line)
        spec = list(r.specifier)
        assert len(spec) == 1 and spec[0].operator == "==" and not r.marker and not r.extras, f"cpu.txt line {n}: {line!r} is not name==version"
        pins[canonicalize_name(r.name)] = spec[0].version
    return pins


# ----------------------------------------------------------------------------- GPU locks


@pytest.mark.parametrize("name", sorted(SETS))
def test_gpu_lock_is_exact_and_fresh(name: str) -> None:
    s = SETS[name]
    header, pins = _gpu_lock(name)  # parse_lock raises on any line that is not name==version
    assert len(pins) > 100
    assert header["image"] == s.image and header["python"] == s.python and header["extra"] == s.extra
    assert header["platform"] == lock.PLATFORM and header["command"].startswith("uv pip compile ")
    constraints = lock.verl_constraints(lock.verl_requires_lines()[1]) if s.paired_with_verl else []
    assert header.get("constraints", "") == "; ".join(constraints)
    assert header["input-sha256"] == lock.input_hash(PROJECT, s, constraints), (
        f"locks/{name}.txt is stale for pyproject.toml: run `make lock`")


def test_input_hash_tells_a_stale_lock() -> None:
    s = SETS["gpu-trainer"]
    base = lock.input_hash(PROJECT, s, [])
    dep = copy.deepcopy(PROJECT)
    dep["dependencies"].append("rich-argparse>=1")
    extra = copy.deepcopy(PROJECT)
    extra["optional-dependencies"]["trainer-gpu"] = ["verl>=0.9.2,<0.10", "vllm>=0.24,<0.25"]
    py = copy.deepcopy(PROJECT)
    py["requires-python"] = ">=3.11,<3.14"
    for changed in (dep, extra, py):
        assert lock.input_hash(changed, s, []) != base
    assert lock.input_hash(PROJECT, s, ["torch==2.11.0"]) != base
    other = copy.deepcopy(PROJECT)  # an extra the trainer set does not read
    other["optional-dependencies"]["inference-gpu"] = ["vllm>=0.34,<0.35"]
    other["description"] = "changed"
    assert lock.input_hash(other, s, []) == base


@pytest.mark.parametrize("name", sorted(SETS))
def test_gpu_lock_satisfies_the_package_ranges(name: str) -> None:
    s = SETS[name]
    assert SpecifierSet(PROJECT["requires-python"]).contains(f"{s.python}.0"), f"requires-python excludes the image's {s.python}"
    _, pins = _gpu_lock(name)
    reqs = lock.declared_requirements(PROJECT, [s.extra])
    assert _unsatisfied(reqs, {n: p.version for n, p in pins.items()}, _image_env(s.python)) == []


@pytest.mark.parametrize("name", sorted(SETS))
def test_gpu_lock_via_graph_is_closed(name: str) -> None:
    """Every pin is wanted by the project, a constraint, or another pin of the same lock, and
    every package a pin is wanted by is itself in the lock: nothing installs outside it."""
    s = SETS[name]
    _, pins = _gpu_lock(name)
    roots = {lock.PROJECT, "-c"}
    for p in pins.values():
        assert p.via, f"{p.name} has no '# via'"
        assert set(p.via) <= set(pins) | roots, f"{p.name} via {sorted(set(p.via) - set(pins) - roots)} not in the lock"
    wanted = {canonicalize_name(r.name) for r in lock.declared_requirements(PROJECT, [s.extra])
              if r.marker is None or r.marker.evaluate(_image_env(s.python))}
    assert all(lock.PROJECT in pins[n].via for n in wanted)
    reached, todo = set(), [n for n, p in pins.items() if roots & set(p.via)]
    users: dict[str, list[str]] = {}
    for p in pins.values():
        for v in p.via:
            users.setdefault(v, []).append(p.name)
    while todo:
        n = todo.pop()
        if n not in reached:
            reached.add(n)
            todo += users.get(n, [])
    assert reached == set(pins)


@pytest.mark.parametrize("name", sorted(SETS))
def test_gpu_lock_matches_its_image(name: str) -> None:
    """torch and vLLM in the lock are the image's, so installing the lock re-resolves neither."""
    s = SETS[name]
    _, pins = _gpu_lock(name)
    versions = {n: p.version for n, p in pins.items()}
    lock.check_image(s, versions)
    major, minor, *_ = Version(versions["vllm"]).release
    if s.image.startswith("vllm/vllm-openai:"):
        assert s.image.endswith(f":v{versions['vllm']}")
    else:
        assert f":vllm{major}{minor:02d}" in s.image  # verl's tags name the vLLM: vllm024 = 0.24
    drifted = dict(versions, torch="2.13.0")
    with pytest.raises(lock.LockError, match="pins torch 2.13.0 but"):
        lock.check_image(s, drifted)


def test_trainer_lock_pairs_vllm_torch_transformers_as_verl_does() -> None:
    verl_version, verl_reqs = lock.verl_requires_lines()
    _, pins = _gpu_lock("gpu-trainer")
    versions = {n: p.version for n, p in pins.items()}
    assert versions["verl"] == verl_version, "locks/verl-requires.txt is from another verl: run `make lock`"
    reqs = [Requirement(x) for x in verl_reqs]
    env = _image_env(SETS["gpu-trainer"].python)
    base = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]
    assert {"transformers", "numpy", "ray"} <= {canonicalize_name(r.name) for r in base}
    assert _unsatisfied(base, versions, env) == []
    rollout = [r for r in reqs if canonicalize_name(r.name) in lock.VERL_PAIRED and r.marker is not None
               and r.marker.evaluate(dict(env, extra=lock.VERL_ROLLOUT_EXTRA))]
    assert {canonicalize_name(r.name) for r in rollout} >= {"vllm", "torch", "transformers"}
    assert _unsatisfied(rollout, versions, env) == []
    # The inference set cannot share that transformers (vLLM 0.33 wants >=5.16.1): two images.
    _, inference = _gpu_lock("gpu-inference")
    assert not SpecifierSet("!=5.6.0,<5.11,>=5.5.3").contains(inference["transformers"].version)


# ----------------------------------------------------------------------------- CPU lock


def test_cpu_lock_is_exact_and_satisfies_the_ranges() -> None:
    pins = _cpu_pins()
    python = platform.python_version()
    assert SpecifierSet(PROJECT["requires-python"]).contains(python)
    reqs = lock.declared_requirements(PROJECT, CPU_EXTRAS)
    assert _unsatisfied(reqs, pins, dict(default_environment(), extra="")) == []


def test_cpu_lock_pins_every_installed_distribution() -> None:
    """Everything `make setup` put in this venv is pinned at the installed version (pip itself is
    upgraded by `make setup` outside the lock)."""
    pins = _cpu_pins()
    missing, differ = [], []
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in {lock.PROJECT, "pip"}:
            continue
        if name not in pins:
            missing.append(f"{name}=={dist.version}")
        elif not SpecifierSet(f"=={pins[name]}").contains(dist.version, prereleases=True):
            differ.append(f"{name} {dist.version} (locked {pins[name]})")
    assert (missing, differ) == ([], []), "refresh locks/cpu.txt: .venv/bin/pip freeze --exclude-editable"


# ----------------------------------------------------------------------------- conflicts

# uv 0.13.8's stderr, captured from `make lock` runs (lock.py's uv flags) on variants of this
# pyproject.toml: bfcl-eval as a runtime dependency (as it was), then verl 0.9.1 with vLLM 0.33.
UV_BFCL_INFERENCE = """\
error: No solution found when resolving dependencies
  cause: Because vllm>=0.33.0 depends on filelock>=3.20.3 and bfcl-eval>=2026.3.23 depends on filelock==3.20.0, we can conclude that bfcl-eval>=2026.3.23 and vllm>=0.33.0 are incompatible.
         And because looptool depends on bfcl-eval==2026.3.23 and vllm>=0.33, we can conclude that your requirements are unsatisfiable.
"""
UV_BFCL_TRAINER = """\
error: No solution found when resolving dependencies
  cause: Because bfcl-eval>=2026.3.23 depends on numpy==1.26.4 and verl>=0.9.1 depends on numpy>=2.0.0, we can conclude that bfcl-eval>=2026.3.23 and verl>=0.9.1 are incompatible.
         And because looptool depends on bfcl-eval==2026.3.23 and verl>=0.9.1, we can conclude that your requirements are unsatisfiable.
"""
UV_VERL_WITH_VLLM_033 = """\
error: No solution found when resolving dependencies
  cause: Because vllm>=0.33.0 depends on transformers>=5.16.1,<5.21.0 and verl>=0.9.1 depends on one of:
             transformers>=5.5.3,<5.6.0
             transformers>5.6.0,<5.11
         we can conclude that verl>=0.9.1 and vllm>=0.33.0 are incompatible.
         And because you require verl==0.9.1 and vllm==0.33.0, we can conclude that your requirements are unsatisfiable.
"""
UV_CONSTRAINT = """\
error: No solution found when resolving dependencies
  cause: Because verl>=0.9.1 depends on one of:
             transformers>=5.5.3,<5.6.0
             transformers>5.6.0,<5.11
         and transformers==5.20.2, we can conclude that verl>=0.9.1 cannot be used.
         And because you require verl>=0.9.1, we can conclude that your requirements are unsatisfiable.
"""
UV_NO_VERSION = """\
error: No solution found when resolving dependencies
  cause: Because only vllm<=0.33.0 is available and you require vllm>=99, we can conclude that your requirements are unsatisfiable.
"""


@pytest.mark.parametrize(
    ("stderr", "names", "detail"),
    [
        (UV_BFCL_INFERENCE, "vllm, filelock, bfcl-eval", "bfcl-eval>=2026.3.23 needs filelock==3.20.0"),
        (UV_BFCL_TRAINER, "bfcl-eval, numpy, verl", "verl>=0.9.1 needs numpy>=2.0.0"),
        (UV_VERL_WITH_VLLM_033, "vllm, transformers, verl",
         "verl>=0.9.1 needs transformers>=5.5.3,<5.6.0 or transformers>5.6.0,<5.11"),
        (UV_CONSTRAINT, "verl, transformers", "transformers==5.20.2 is required"),
        (UV_NO_VERSION, "vllm", "only vllm<=0.33.0 is available; the lock input requires vllm>=99"),
    ],
)
def test_conflict_is_one_line_naming_the_packages(stderr: str, names: str, detail: str) -> None:
    msg = lock.explain_conflict("gpu-trainer", stderr)
    assert "\n" not in msg
    assert msg.startswith(f"gpu-trainer: no solution; conflicting packages: {names} (")
    assert detail in msg


def test_lock_without_uv_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert lock.main(["--uv", str(REPO / "build" / "no-such-uv"), "gpu-inference"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("make lock: uv not found at ") and "\n" not in err
    assert lock.main(["gpu-cpu"]) == 1
    assert "unknown lock 'gpu-cpu'" in capsys.readouterr().err
