"""A side virtualenv holding verl's own code, to check what the verl backend generates against verl.

verl's wheel is pure Python and its Hydra configs compose with hydra-core and omegaconf alone, so
the side environment is ``pip install --no-deps verl==<version>`` plus those two: no torch, no
vLLM, no GPU. It is built once per verl version (and lock) under ``.looptool/verl-env/<version>-<hash>/``
(git-ignored; ``LOOPTOOL_VERL_ENV`` moves it), into a temporary directory renamed into place, so
concurrent builds never see a half-installed one. Nothing in it is imported into the test process:
``tests/support/verl_probe.py`` runs inside it and answers in JSON.

The version is the ``verl==`` pin of ``locks/gpu-trainer.txt`` (the lock the GPU trainer image
installs) when that file exists, else ``DEFAULT_VERL``; hydra-core/omegaconf follow that lock too.

Usage: ``python tests/support/verl_env.py`` builds the environment and prints its python.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # also run as a script: no ``support`` package then
LOCK = REPO / "locks" / "gpu-trainer.txt"
DEFAULT_VERL = "0.9.1"
CACHE = Path(os.environ.get("LOOPTOOL_VERL_ENV", REPO / ".looptool" / "verl-env"))
PROBE = Path(__file__).resolve().parent / "verl_probe.py"
# what composing verl's configs needs besides verl itself (verl's own requirement is unpinned)
CONFIG_DEPS = ("hydra-core", "omegaconf", "antlr4-python3-runtime")


class VerlEnvUnavailable(RuntimeError):
    pass


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#\\]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def requirements() -> tuple[str, list[str]]:
    """(verl version, pip requirements of the side environment)."""
    pins = _pins(LOCK.read_text()) if LOCK.is_file() else {}
    version = pins.get("verl", DEFAULT_VERL)
    return version, [f"{d}=={pins[d]}" if d in pins else d for d in CONFIG_DEPS]


@dataclass(frozen=True)
class VerlEnv:
    version: str
    python: Path

    def probe(self, command: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``tests/support/verl_probe.py <command>`` inside the side environment."""
        proc = subprocess.run(
            [str(self.python), str(PROBE), command],
            input=json.dumps(payload or {}),
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"verl probe {command} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout)


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VerlEnvUnavailable(f"pip install {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")


@lru_cache(maxsize=None)
def verl_env() -> VerlEnv:
    version, deps = requirements()
    target = CACHE / f"{version}-{hashlib.sha256(' '.join(deps).encode()).hexdigest()[:8]}"  # a new lock, a new env
    python = target / "bin" / "python"
    if (target / ".complete").is_file():
        return VerlEnv(version, python)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=CACHE))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        _pip(tmp / "bin" / "python", "--no-deps", f"verl=={version}")
        _pip(tmp / "bin" / "python", *deps)
        (tmp / ".complete").write_text(json.dumps({"verl": version, "deps": deps}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return VerlEnv(version, python)


if __name__ == "__main__":
    env = verl_env()
    print(env.version, env.python)
