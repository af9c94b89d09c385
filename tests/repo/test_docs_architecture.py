"""docs/architecture.md cannot rot silently: every backticked reference in it must exist.

Each span outside fenced blocks is checked by what it looks like:

* a path (``shared/loop/stages.py``, ``services/<name>/server.py``: ``<...>`` globs) exists in the tree;
* a module (``looptool.shared.loop.chain``, optionally ``.Name``) is found by the import system and
  the trailing names are defined in it (read with ``ast``, nothing is imported but packages);
* ``Service.Rpc`` names a service and RPC of ``protos/looptool/v1/*.proto``;
* a round output ``<prefix>-<key>`` is a name ``shared/loop/stages.py`` writes (``ctx.out(f"<prefix>-{``);
* ``looptool <cmd> ...`` / ``make <target>`` name a sub-command / Makefile target;
* an identifier (``StageContext``, ``StageRuns.judge``, ``handle_errors()``) is a class, function or
  module-level name of the first-party code, or a member of such a class, or a proto name;
* a settings path (``spec.previousRound``, ``services.judge``) is a field of ``LoopRoundSpec`` or
  ``LoopToolConfig``; a bare word may also be a string key the code uses (a status output name);
* anything else (a file name written at run time) occurs verbatim in the code.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from looptool.shared.config import LoopToolConfig
from looptool.shared.loop.manifest import LoopRoundSpec

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
DOC = REPO / "docs" / "architecture.md"
CODE_DIRS = ("shared", "services", "operators", "looptool")
# Where a bare file name (``test_layers.py``) may live: the repository without .venv and build outputs.
TREE_DIRS = (*CODE_DIRS, "tests", "docs", "protos", "charts", "examples", "images", "locks", "bench")
MAX_LINES = 250  # one page

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PLACEHOLDER = re.compile(r"<[^<>]+>")


def spans(text: str) -> list[str]:
    """The inline code spans outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


# ----------------------------------------------------------------------------- what exists


@cache
def python_files() -> list[Path]:
    files = [f for d in CODE_DIRS for f in (REPO / d).rglob("*.py") if "__pycache__" not in f.parts]
    return [f for f in files if not f.name.endswith(("_pb2.py", "_pb2_grpc.py"))]


@cache
def corpus() -> str:
    """Source text a verbatim reference may point at: the code, protos, build and chart files."""
    extra = [*(REPO / "protos").rglob("*.proto"), *(REPO / "charts").rglob("*.yaml"), REPO / "pyproject.toml", REPO / "Makefile"]
    return "\n".join(p.read_text(errors="replace") for p in [*python_files(), *extra])


def _members(cls: ast.ClassDef) -> set[str]:
    out: set[str] = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def _defined(tree: ast.Module) -> tuple[set[str], dict[str, set[str]]]:
    """Module-level names (classes, functions, assignments) and each class's members."""
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            classes[node.name] = _members(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names, classes


@cache
def definitions() -> tuple[set[str], dict[str, set[str]]]:
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for f in python_files():
        n, c = _defined(ast.parse(f.read_text(), str(f)))
        names |= n
        for cls, members in c.items():
            classes.setdefault(cls, set()).update(members)
    return names, classes


@cache
def protos() -> tuple[dict[str, set[str]], set[str]]:
    """Proto services → their RPCs, and every message/field name."""
    services: dict[str, set[str]] = {}
    words: set[str] = set()
    for f in sorted((REPO / "protos").rglob("*.proto")):
        text = f.read_text()
        for m in re.finditer(r"service\s+(\w+)\s*\{(.*?)\}", text, flags=re.S):
            services[m.group(1)] = set(re.findall(r"rpc\s+(\w+)\s*\(", m.group(2)))
        words |= set(re.findall(r"message\s+(\w+)", text))
        words |= set(re.findall(r"^\s*(?:repeated\s+|optional\s+)?[\w.]+\s+(\w+)\s*=\s*\d+", text, flags=re.M))
    return services, words


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent is not a package, or not found
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


# ----------------------------------------------------------------------------- the checks


def _check_glob(pattern: str) -> str:
    pattern = PLACEHOLDER.sub("*", pattern).rstrip("/")
    if "*" in pattern:
        return "" if any(REPO.glob(pattern)) else "no such path"
    return "" if (REPO / pattern).exists() else "no such path"


def _check_module(span: str) -> str:
    parts = span.split(".")
    if any(PLACEHOLDER.fullmatch(p) for p in parts):  # looptool.services.<name>.server
        i = next(i for i, p in enumerate(parts) if PLACEHOLDER.fullmatch(p))
        parent = importlib.util.find_spec(".".join(parts[:i])) if i else None
        if parent is None or not parent.submodule_search_locations:
            return "no such package"
        rest = "/".join("*" if PLACEHOLDER.fullmatch(p) else p for p in parts[i:])
        ok = any(any(Path(loc).glob(rest + ext)) for loc in parent.submodule_search_locations for ext in (".py", "/__init__.py"))
        return "" if ok else "no such module"
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module; the rest are names in it
        origin = _module_file(".".join(parts[:i]))
        if origin is not None:
            break
    else:
        return "no such module"
    attrs = parts[i:]
    if not attrs:
        return ""
    names, classes = _defined(ast.parse(origin.read_text()))
    if attrs[0] not in names:
        return f"{attrs[0]} is not defined in {'.'.join(parts[:i])}"
    if len(attrs) > 1 and attrs[1] not in classes.get(attrs[0], set()):
        return f"{attrs[0]} has no member {attrs[1]}"
    return ""


def _check_command(span: str) -> str:
    words = span.split()
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M)
        return "" if words[1] in targets else "no such Makefile target"
    commands: set[str] = set()
    for node in ast.walk(ast.parse((REPO / "looptool" / "cli.py").read_text())):  # the COMMANDS table
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            commands |= {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return "" if words[1] in commands else "no such looptool sub-command"


def _check_identifier(span: str) -> str:
    names, classes = definitions()
    services, proto_words = protos()
    parts = span.split(".")
    if len(parts) == 1:
        known = names | proto_words | set(services) | {m for ms in classes.values() for m in ms}
        if span in known or f'"{span}"' in corpus() or f"'{span}'" in corpus():  # or a string key
            return ""
        return "not defined in the code or the protos, nor a string in the code"
    head, member = parts[0], parts[1]
    if head in services:
        return "" if member in services[head] and len(parts) == 2 else f"{head} has no RPC {member}"
    if head in classes:
        return "" if member in classes[head] and len(parts) == 2 else f"{head} has no member {member}"
    return _check_field_path(parts)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_of(a)) is not None), None)


def _check_field_path(parts: list[str]) -> str:
    """A settings path: ``spec.previousRound`` / ``datasets.seed`` (a LoopRound spec), ``services.judge``
    (the LoopTool config)."""
    for root, path in ((LoopRoundSpec, parts[1:] if parts[0] == "spec" else parts), (LoopToolConfig, parts)):
        model: type[BaseModel] | None = root
        for i, name in enumerate(path):
            if model is None or name not in model.model_fields:
                break
            if i == len(path) - 1:
                return ""
            model = _model_of(model.model_fields[name].annotation)
    return "no such field in a LoopRound spec or the LoopTool config"


def _check_verbatim(span: str) -> str:
    return "" if span in corpus() else "does not occur in the code"


def check(span: str) -> str:
    """"" if the reference holds, else why not."""
    s = span.strip()
    if s.startswith(("looptool ", "make ")):
        return _check_command(s)
    if m := re.fullmatch(r"([a-z]+(?:-[a-z]+)*)-<key>(/.+)?", s):  # a round output
        if f'f"{m.group(1)}-{{' not in (REPO / "shared" / "loop" / "stages.py").read_text():
            return "shared/loop/stages.py writes no such output"
        return _check_verbatim(Path(m.group(2)).name) if m.group(2) else ""
    if s.startswith("looptool.") and " " not in s:
        return _check_module(s)
    if "/" in s and " " not in s and not s.startswith("<"):
        return _check_glob(s)
    if PLACEHOLDER.search(s):  # a pattern such as <base>/runs/<round>/ or a signature with placeholders
        return ""
    if re.fullmatch(r"[\w.-]+\.(py|toml|md|json|yaml|proto)", s):  # a file name: in the tree or written by the code
        if (REPO / s).exists() or any(any((REPO / d).rglob(s)) for d in TREE_DIRS) or s in corpus():
            return ""
        return "no such file, and the code does not name it"
    if m := re.fullmatch(rf"({IDENT}(?:\.{IDENT})*)(?:\(.*\))?", s):
        return _check_identifier(m.group(1))
    return _check_verbatim(s)


def broken_references(text: str) -> list[str]:
    return [f"`{s}`: {why}" for s in spans(text) if (why := check(s))]


# ----------------------------------------------------------------------------- tests


def test_every_reference_in_the_architecture_page_exists() -> None:
    broken = broken_references(DOC.read_text())
    assert not broken, "docs/architecture.md names what does not exist:\n" + "\n".join(broken)


def test_the_page_is_one_page_and_linked_from_the_readme() -> None:
    assert len(DOC.read_text().splitlines()) <= MAX_LINES
    readme = (REPO / "README.md").read_text()
    where = readme[readme.index("## What is where") :]
    assert re.search(r"^docs/.*\n  architecture\.md ", where, flags=re.M), "README's tree links docs/architecture.md"


def test_the_page_covers_every_rpc_and_service() -> None:
    text = DOC.read_text()
    services, _ = protos()
    missing = [f"{s}.{r}" for s, rpcs in services.items() for r in sorted(rpcs) if f"`{s}.{r}`" not in text]
    assert not missing, f"RPCs the page does not mention: {missing}"


@pytest.mark.parametrize(
    "span",
    [
        "shared/loop/runner.py",  # moved to looptool/runner.py
        "services/inference/judge.py",  # now a package
        "looptool.shared.loop.runner",
        "looptool.shared.loop.stages.NoSuchThing",
        "looptool.shared.loop.stages.StageContext.no_such_field",
        "looptool.services.<name>.nosuchmodule",
        "InferenceService.Verify",
        "Expander.Probe",
        "verified-<key>",
        "StageRuns.verify",
        "NoSuchExecutor",
        "looptool deploy",
        "make docs",
        "spec.noSuchField",
        "no_such_file.json",
        "test_no_such_thing.py",
    ],
)
def test_a_wrong_reference_is_caught(span: str) -> None:
    assert check(span), f"`{span}` should be reported"
    assert broken_references(f"see `{span}` here\n```\n`{span}` in a block is not checked\n```\n") == [f"`{span}`: {check(span)}"]
