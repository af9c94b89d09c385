"""Builds the CPU image (`make image`) with Debian's buildah, from a base root filesystem made by
mmdebstrap: no container registry is needed. Standard library only (runs before `make setup`).

The image is tagged ``<chart image.repository>:<chart appVersion>`` and labelled with a hash of its
build inputs; an image whose label matches is reused. pip inside the build uses the host's pip
configuration, certificate bundle and local wheel/index directories, mounted read-only for the
build only (nothing of them is committed to the image).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
CONTAINERFILE = IMAGES / "Containerfile"
IGNORE_FILE = ROOT / ".containerignore"
CHART = ROOT / "charts" / "looptool"
INPUTS_LABEL = "io.looptool.build-inputs"

# The base root filesystem: Python 3.11 (the package's range), tini as PID 1, useradd; no docs.
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini", "passwd")
MMDEBSTRAP_ARGS = (
    "--variant=minbase",
    "--include=" + ",".join(BASE_PACKAGES),
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)


class BuildError(RuntimeError):
    """A build step failed; the message says which and how to fix it."""


def container_env() -> dict[str, str]:
    """Environment for podman/buildah: this folder's containers.conf (runc, ulimits) and storage.conf."""
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(IMAGES / "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(IMAGES / "storage.conf")
    return env


def chart_image_ref() -> str:
    """``<values.yaml image.repository>:<Chart.yaml appVersion>``: what the chart deploys by default."""
    values = (CHART / "values.yaml").read_text()
    repo = re.search(r"^image:\n(?:[ \t]+#.*\n)*[ \t]+repository:[ \t]*(\S+)", values, re.M)
    app = re.search(r"^appVersion:[ \t]*[\"']?([^\"'\s]+)", (CHART / "Chart.yaml").read_text(), re.M)
    if not repo or not app:
        raise BuildError(f"cannot read image.repository from {CHART}/values.yaml or appVersion from Chart.yaml")
    return f"{repo.group(1)}:{app.group(1)}"


def context_roots() -> list[str]:
    """The build context's allow-list: the ``!path`` lines of .containerignore (which starts with ``*``)."""
    return [line[1:].strip() for line in IGNORE_FILE.read_text().splitlines() if line.startswith("!")]


def context_files() -> list[Path]:
    files: list[Path] = []
    for root in context_roots():
        path = ROOT / root
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            ]
    return files


def base_image_ref() -> str:
    key = hashlib.sha256("\n".join((SUITE, *MMDEBSTRAP_ARGS)).encode()).hexdigest()[:12]
    return f"localhost/looptool-base:{SUITE}-{key}"


def inputs_hash() -> str:
    """Hash of everything the image is made from: base, Containerfile, this script, the context."""
    digest = hashlib.sha256()
    digest.update(base_image_ref().encode())
    digest.update(chart_image_ref().encode())
    for path in [CONTAINERFILE, IGNORE_FILE, Path(__file__).resolve(), *context_files()]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run(cmd: list[str], what: str) -> None:
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, env=container_env()).returncode != 0:
        raise BuildError(f"{what} failed (command above); run `bash images/deps.sh` if a tool is missing")


def image_label(ref: str, label: str) -> str | None:
    """The image's label value, or None when there is no such image."""
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', ref],
        env=container_env(),
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def image_id(ref: str) -> str | None:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref], env=container_env(), capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_base() -> str:
    ref = base_image_ref()
    if image_label(ref, INPUTS_LABEL) is not None:
        return ref
    with tempfile.TemporaryDirectory(prefix="looptool-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        run(["mmdebstrap", "--quiet", *MMDEBSTRAP_ARGS, SUITE, str(tar)], "mmdebstrap (Debian base root filesystem)")
        run(
            ["podman", "import", "--quiet", "--change", f"LABEL {INPUTS_LABEL}={ref}", str(tar), ref],
            "podman import of the base root filesystem",
        )
    return ref


@dataclass(frozen=True)
class PipHost:
    """The host's effective pip configuration as one pip.conf, and the local paths it names."""

    conf: str
    mounts: tuple[str, ...]


def host_pip() -> PipHost:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    # Lowest precedence first, so later variants win: global < user < site < environment.
    order = {"global": 0, "user": 1, "site": 2, ":env:": 3}
    settings: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        name, _, raw = line.partition("=")
        variant, _, key = name.partition(".")
        rank = order.get(variant, 0)
        value = ast.literal_eval(raw)
        if key not in settings or settings[key][0] <= rank:
            settings[key] = (rank, value)
    mounts: set[str] = set()
    for _, value in settings.values():
        for token in value.split():
            path = token.removeprefix("file://")
            if not path.startswith("/") or not Path(path).exists():
                continue
            # A file:// simple index links to ../files/...: mount the folder that holds both.
            if token.startswith("file://") and Path(path).name == "simple":
                path = str(Path(path).parent)
            mounts.add(path)
    conf = "[global]\n" + "".join(f"{key} = {value}\n" for key, (_, value) in sorted(settings.items()))
    return PipHost(conf=conf, mounts=tuple(sorted(mounts)))


def build(ref: str, digest: str) -> None:
    base = ensure_base()
    version = ref.rpartition(":")[2]
    pip = host_pip()
    with tempfile.TemporaryDirectory(prefix="looptool-pip-") as tmp:
        conf = Path(tmp) / "pip.conf"
        conf.write_text(pip.conf)
        volumes = [f"{conf}:/etc/pip.conf:ro"] + [f"{path}:{path}:ro" for path in pip.mounts]
        cmd = [
            "buildah", "bud", "--isolation", "chroot", "--layers", "--force-rm", "--pull=never",
            "--file", str(CONTAINERFILE),
            "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"VERSION={version}",
            "--label", f"{INPUTS_LABEL}={digest}",
            "--tag", ref,
        ]  # fmt: skip
        for volume in volumes:
            cmd += ["--volume", volume]
        run([*cmd, str(ROOT)], "buildah bud")


def ensure_image(force: bool = False) -> str:
    """Builds the CPU image unless one with the same build inputs exists; returns its reference."""
    ref = chart_image_ref()
    digest = inputs_hash()
    if not force and image_label(ref, INPUTS_LABEL) == digest:
        print(f"{ref} is up to date ({INPUTS_LABEL}={digest[:12]})")
        return ref
    previous = image_id(ref)
    build(ref, digest)
    if previous and previous != image_id(ref):
        # The replaced build is now untagged; drop it (its cached layers stay for the next build).
        subprocess.run(["podman", "rmi", previous], env=container_env(), capture_output=True)
    return ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the build inputs are unchanged")
    parser.add_argument("--print-ref", action="store_true", help="print the image reference and exit")
    args = parser.parse_args()
    if args.print_ref:
        print(chart_image_ref())
        return 0
    for tool in ("buildah", "podman", "mmdebstrap", "runc"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found: run `bash images/deps.sh`", file=sys.stderr)
            return 2
    try:
        ref = ensure_image(force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
