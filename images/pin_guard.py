"""Keeps a GPU base image's torch stack while the project is installed into it (standard library only;
runs inside the vLLM and verl image builds).

    python3 pin_guard.py constraints LOCK > constraints.txt   # before `pip install -c constraints.txt`
    python3 pin_guard.py verify constraints.txt               # after it

``constraints`` prints the lock's pins, with every stack package the image already has (torch,
vLLM, triton, the CUDA wheels) pinned to the image's exact build instead, so pip can never replace
them; it fails first when the lock was made for another torch or vLLM than the image ships.
``verify`` fails when any of those packages changed anyway.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

IMAGE_MARK = "# image"
# Packages whose release must agree between the lock and the image (the lock was made for it).
AGREE = ("torch", "vllm")
STACK = re.compile(r"^(torch|torchvision|torchaudio|triton|vllm|xformers|flashinfer-python|nvidia-.*)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """``2.14.0+cu129`` -> ``2.14.0``: a lock from an index pins the public release of a local build."""
    return version.split("+", 1)[0]


def installed_stack() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if STACK.match(name):
            found[name] = dist.version
    return found


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def constraints(lock: Path) -> str:
    pins = read_pins(lock)
    stack = installed_stack()
    for name in AGREE:
        if name in pins and name in stack and public(stack[name]) != public(pins[name]):
            raise SystemExit(
                f"error: {lock} pins {name}=={pins[name]} but this image has {name} {stack[name]}: "
                f"build FROM the image the lock names in its '# image:' header, or run `make lock`"
            )
    lines = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in stack]
    lines += [f"{name}=={version}  {IMAGE_MARK}" for name, version in sorted(stack.items())]
    return "\n".join(lines) + "\n"


def verify(constraints_file: Path) -> None:
    kept = {
        canonical(line.split("==", 1)[0]): line.split("==", 1)[1].split()[0]
        for line in constraints_file.read_text().splitlines()
        if line.endswith(IMAGE_MARK)
    }
    now = installed_stack()
    changed = [f"{name} {version} -> {now.get(name, 'removed')}" for name, version in kept.items() if now.get(name) != version]
    if changed:
        raise SystemExit(f"error: installing looptool changed the image's torch stack: {', '.join(changed)}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("constraints", "verify"):
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[2])
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    if argv[1] == "constraints":
        sys.stdout.write(constraints(path))
    else:
        verify(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
