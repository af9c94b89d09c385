"""`make lock`: resolve the GPU dependency sets from pyproject.toml's ranges into exact locks.

Each set in SETS becomes ``locks/<name>.txt``: every distribution pinned ``name==version`` with
uv's ``# via`` annotations, for the Python and platform of the official image it is installed
into, so that image's torch is never re-resolved. The header records the command and a hash of
the pyproject input (``input-sha256``); tests/repo/test_locks.py recomputes it to catch a stale lock.

The trainer set is verl plus the vLLM it rolls out with. verl's wheel declares the exact
vllm/torch/transformers it is tested with in its ``vllm`` extra; those pins are fetched from the
wheel's METADATA into ``locks/verl-requires.txt`` and constrain the trainer resolution.

A resolution conflict ends with one line naming the conflicting packages (``-v`` also prints the
resolver's own explanation). The CPU lock (locks/cpu.txt) is not made here: it is the
``pip freeze --exclude-editable`` of the venv `make setup` builds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
PYPROJECT = ROOT / "pyproject.toml"
VERL_REQUIRES = LOCKS / "verl-requires.txt"
PROJECT = "looptool"
# Both images are glibc >= 2.35 (vLLM's on Ubuntu 22.04, verl's on 24.04); 2_28 would miss
# wheels such as llguidance's manylinux_2_31 ones and fall back to building from source.
PLATFORM = "x86_64-manylinux_2_35"
# verl's extra naming the inference engine it rolls out with, and the pins of it we adopt.
VERL_ROLLOUT_EXTRA = "vllm"
VERL_PAIRED = ("vllm", "torch", "torchvision", "torchaudio", "transformers")


@dataclass(frozen=True)
class LockSet:
    name: str  # locks/<name>.txt
    extra: str  # pyproject extra installed on top of the runtime dependencies
    python: str  # the image's Python
    image: str  # the official image the lock is installed into (its torch must equal the lock's)
    image_vllm: str  # the vLLM and torch releases that image ships
    image_torch: str
    paired_with_verl: bool = False


SETS = (
    # vLLM 0.33.0 requires torch==2.14.0; its image installs exactly that.
    LockSet("gpu-inference", "inference-gpu", "3.12", "vllm/vllm-openai:v0.33.0", "0.33.0", "2.14.0"),
    # verl's docker/Dockerfile.stable.vllm (target vllm024.dev2): vllm 0.24.0, torch 2.11.0 (cu130).
    LockSet("gpu-trainer", "trainer-gpu", "3.12", "verlai/verl:vllm024.dev2", "0.24.0", "2.11.0", paired_with_verl=True),
)


class LockError(Exception):
    """One line for the user: what failed and what to do."""


def lock_path(s: LockSet) -> Path:
    return LOCKS / f"{s.name}.txt"


# ----------------------------------------------------------------------------- pyproject input


def project_table(pyproject: Path = PYPROJECT) -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


def extra_closure(project: dict, extras: list[str]) -> list[str]:
    """The extras named plus those they pull in through ``looptool[...]`` self-references."""
    optional = project.get("optional-dependencies", {})
    seen: list[str] = []
    todo = list(extras)
    while todo:
        e = todo.pop(0)
        if e in seen:
            continue
        if e not in optional:
            raise LockError(f"pyproject.toml has no extra {e!r} (project.optional-dependencies)")
        seen.append(e)
        for line in optional[e]:
            r = Requirement(line)
            if canonicalize_name(r.name) == PROJECT:
                todo += sorted(r.extras)
    return seen


def declared_requirements(project: dict, extras: list[str]) -> list[Requirement]:
    """Runtime dependencies plus the extras' (self-references to the project dropped)."""
    lines = list(project.get("dependencies", []))
    for e in extra_closure(project, extras):
        lines += project["optional-dependencies"][e]
    reqs = [Requirement(x) for x in lines]
    return [r for r in reqs if canonicalize_name(r.name) != PROJECT]


def input_hash(project: dict, s: LockSet, constraints: list[str]) -> str:
    """sha256 over exactly what the resolution of ``s`` reads, so unrelated pyproject edits
    (pytest settings, the description) do not stale a lock."""
    optional = project.get("optional-dependencies", {})
    doc = {
        "requires-python": project.get("requires-python", ""),
        "dependencies": project.get("dependencies", []),
        "extras": {e: optional[e] for e in extra_closure(project, [s.extra])},
        "python": s.python,
        "platform": PLATFORM,
        "constraints": constraints,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- verl's pairing


def verl_requires_lines(path: Path = VERL_REQUIRES) -> tuple[str, list[str]]:
    """(verl version, its Requires-Dist lines) from the committed locks/verl-requires.txt."""
    if not path.exists():
        raise LockError(f"{path.relative_to(ROOT)} is missing: run `make lock` (it fetches verl's METADATA)")
    version = ""
    reqs: list[str] = []
    for line in path.read_text().splitlines():
        if m := re.match(r"#\s*verl-version:\s*(\S+)", line):
            version = m.group(1)
        elif line.strip() and not line.startswith("#"):
            reqs.append(line.strip())
    if not version:
        raise LockError(f"{path.relative_to(ROOT)} has no '# verl-version:' line: run `make lock`")
    return version, reqs


def verl_constraints(reqs: list[str]) -> list[str]:
    """verl's rollout-extra pins of VERL_PAIRED, as constraint lines (markers evaluated away)."""
    out = []
    for line in reqs:
        r = Requirement(line)
        if canonicalize_name(r.name) in VERL_PAIRED and r.marker and r.marker.evaluate({"extra": VERL_ROLLOUT_EXTRA}):
            out.append(f"{canonicalize_name(r.name)}{r.specifier}")
    return sorted(out)


def fetch_verl_requires(version: str) -> list[str]:
    """Requires-Dist of verl==version, read from its wheel (pip downloads it with its hash checked)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", tmp, f"verl=={version}"],
            capture_output=True, text=True,
        )
        wheels = sorted(Path(tmp).glob(f"verl-{version}-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = [x for x in proc.stderr.strip().splitlines() if x.strip()]
            raise LockError(f"no wheel of verl=={version} from the package index: {last[-1] if last else 'pip download failed'}")
        with zipfile.ZipFile(wheels[0]) as z:
            meta = z.read(f"verl-{version}.dist-info/METADATA").decode()
    return [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]


def write_verl_requires(version: str, reqs: list[str]) -> None:
    head = (
        f"# verl's own requirements (Requires-Dist of its wheel METADATA), written by `make lock`.\n"
        f"# The pins of its {VERL_ROLLOUT_EXTRA!r} extra for {', '.join(VERL_PAIRED)} constrain locks/gpu-trainer.txt.\n"
        f"# verl-version: {version}\n"
    )
    VERL_REQUIRES.write_text(head + "".join(f"{r}\n" for r in reqs))


# ----------------------------------------------------------------------------- resolver output

_SPEC = r"[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?(?:\{[^}]*\})?(?:[<>=!~]=?[^\s,]+(?:,[<>=!~]=?[^\s,]+)*)?"


def _names(text: str) -> list[str]:
    out: list[str] = []
    for m in re.finditer(_SPEC, text):
        token = m.group(0)
        if not re.search(r"[<>=!~]", token):
            continue  # words of the explanation, not package specs
        name = canonicalize_name(re.split(r"[\[{<>=!~]", token, maxsplit=1)[0])
        if name not in out:
            out.append(name)
    return out


def explain_conflict(set_name: str, stderr: str) -> str:
    """One line naming the conflicting packages, from uv's "No solution found" explanation.

    uv explains a conflict as derivation sentences ("Because A depends on X and B depends on Y,
    we can conclude that A and B are incompatible. And because ..."). The first sentence holds
    the packages in conflict and the requirement they disagree on; the rest walks back to the
    project's own requirements."""
    text = " ".join(stderr.replace("╰─▶", " ").split())
    m = re.search(r"Because (.*?)(?:,)? we can conclude that (.*?)(?:\.|$)", text)
    if not m:
        last = [x.strip() for x in stderr.strip().splitlines() if x.strip()]
        return f"{set_name}: the resolver failed: {last[-1] if last else 'no output'}"
    premise, conclusion = m.group(1), m.group(2)
    premise = re.sub(r"\{[^}]*\}", "", premise)  # platform markers uv prints inside names
    clauses = [c.strip() for c in re.split(r" and (?=[A-Za-z])", premise)]
    said: list[str] = []
    for c in clauses:
        if m1 := re.fullmatch(r"(.*?) depends on one of: (.*)", c):
            c = f"{m1.group(1)} needs {' or '.join(m1.group(2).split())}"
        elif re.fullmatch(_SPEC, c):
            c = f"{c} is required"  # a constraint, stated bare by uv
        c = c.replace(" depends on ", " needs ")
        said.append(re.sub(r"^you require ", "the lock input requires ", c))
    names = _names(premise + " " + re.sub(r"\{[^}]*\}", "", conclusion))
    return f"{set_name}: no solution; conflicting packages: {', '.join(names)} ({'; '.join(said)})"


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    via: tuple[str, ...]  # canonical names, "looptool" for pyproject, "-c" for constraints


def parse_lock(text: str) -> tuple[dict[str, str], list[Pin]]:
    """(header fields, pins) of a lock written by this script; raises LockError on a line that is
    not ``name==version`` or a comment."""
    header: dict[str, str] = {}
    pins: list[Pin] = []
    cur: tuple[str, str] | None = None
    via: list[str] = []

    def flush() -> None:
        if cur:
            pins.append(Pin(cur[0], cur[1], tuple(via)))

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if not raw.startswith((" ", "#")):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
            if not m:
                raise LockError(f"line {n}: {line!r} is not an exact pin name==version")
            flush()
            cur, via = (canonicalize_name(m.group(1)), m.group(2)), []
            continue
        if m := re.match(r"#\s*([a-z0-9-]+):\s*(.*)$", line):
            if cur is None:
                header[m.group(1)] = m.group(2).strip()
                continue
        body = re.sub(r"^#\s*(via)?\s*", "", line)
        if cur is not None and body:
            if body.startswith("-c") or body.startswith("-r"):
                via.append("-c")
            else:
                via.append(canonicalize_name(body.split()[0]))
    flush()
    return header, pins


# ----------------------------------------------------------------------------- main


def uv_compile(uv: str, s: LockSet, constraint_file: Path | None, out: Path, verbose: bool) -> list[str]:
    cmd = [uv, "pip", "compile", "--no-config", "--quiet", "--no-header", "--python-version", s.python,
           "--python-platform", PLATFORM, "pyproject.toml", "--extra", s.extra]
    if constraint_file is not None:
        cmd += ["-c", str(constraint_file.relative_to(ROOT))]
    cmd += ["-o", str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_uv_env())
    except FileNotFoundError:
        raise LockError(f"uv not found at {uv!r}: run `make lock` (it installs uv into build/lock-venv)") from None
    if proc.returncode != 0:
        if verbose:
            sys.stderr.write(proc.stderr)
        if "No solution found" in proc.stderr:
            raise LockError(explain_conflict(s.name, proc.stderr))
        last = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        raise LockError(f"{s.name}: uv failed: {last[-1] if last else proc.returncode}")
    return cmd


def _uv_env() -> dict[str, str]:
    # The image's interpreter is not needed to resolve; never let uv download one.
    return {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}


def check_image(s: LockSet, pins: dict[str, str]) -> None:
    """The lock must install into its image without replacing the image's vLLM or torch."""
    for name, shipped in (("vllm", s.image_vllm), ("torch", s.image_torch)):
        if pins.get(name) != shipped:
            raise LockError(f"{s.name}: the lock pins {name} {pins.get(name)} but {s.image} ships {shipped}: "
                            f"update SETS in locks/lock.py to the image of the locked release")


def lock_one(uv: str, s: LockSet, verbose: bool = False) -> None:
    project = project_table()
    out = lock_path(s)
    tmp = out.with_suffix(".tmp")
    constraints: list[str] = []
    cfile: Path | None = None
    try:
        if s.paired_with_verl:
            # First pass: which verl the ranges pick; then its own rollout pins constrain the set.
            uv_compile(uv, s, None, tmp, verbose)
            verl = dict((p.name, p.version) for p in parse_lock(tmp.read_text())[1]).get("verl")
            if verl is None:
                raise LockError(f"{s.name}: the {s.extra!r} extra does not install verl")
            write_verl_requires(verl, fetch_verl_requires(verl))
            constraints = verl_constraints(verl_requires_lines()[1])
            cfile = LOCKS / f".{s.name}.constraints.txt"
            cfile.write_text("".join(f"{c}\n" for c in constraints))
        cmd = uv_compile(uv, s, cfile, tmp, verbose)
        body = tmp.read_text()
    finally:
        tmp.unlink(missing_ok=True)
        if cfile is not None:
            cfile.unlink(missing_ok=True)
    pins = {p.name: p.version for p in parse_lock(body)[1]}
    check_image(s, pins)
    head = [
        f"# {s.name}: exact set for `pip install -r` into {s.image} (Python {s.python}, {PLATFORM}).",
        f"# Generated by `make lock` (python locks/lock.py); do not edit. torch here is the image's torch.",
        f"# image: {s.image}",
        f"# python: {s.python}",
        f"# platform: {PLATFORM}",
        f"# extra: {s.extra}",
    ]
    if constraints:
        head.append(f"# constraints: {'; '.join(constraints)}")
    head += [
        f"# input-sha256: {input_hash(project, s, constraints)}",
        f"# command: {' '.join(shlex.quote(c) for c in _display(cmd, cfile))}",
    ]
    out.write_text("\n".join(head) + "\n" + body)
    print(f"{out.relative_to(ROOT)}: {len(pins)} pins; vllm {pins.get('vllm')}, torch {pins.get('torch')}, "
          f"transformers {pins.get('transformers')}" + (f", verl {pins['verl']}" if "verl" in pins else ""))


def _display(cmd: list[str], cfile: Path | None) -> list[str]:
    """The uv command as run, less its temporary output and constraint file paths."""
    out, skip = ["uv"], False
    for c in cmd[1:]:
        if skip:
            skip = False
        elif c == "-o":
            skip = True
        elif cfile is not None and c == str(cfile.relative_to(ROOT)):
            out.append("<constraints above>")
        else:
            out.append(c)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uv", default="uv", help="the uv binary (make lock passes the tools venv's)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also print the resolver's explanation")
    ap.add_argument("sets", nargs="*", help=f"which locks (default all: {', '.join(s.name for s in SETS)})")
    args = ap.parse_args(argv)
    chosen = [s for s in SETS if not args.sets or s.name in args.sets]
    unknown = set(args.sets) - {s.name for s in SETS}
    try:
        if unknown:
            raise LockError(f"unknown lock {sorted(unknown)[0]!r}; choose from {', '.join(s.name for s in SETS)}")
        for s in chosen:
            lock_one(args.uv, s, args.verbose)
    except LockError as e:
        print(f"make lock: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
