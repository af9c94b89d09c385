"""The layers, enforced: import-linter runs pyproject's ``[tool.importlinter]`` contracts.

CLI commands and the local runner sit on top, the operator below them, then the services, the
shared library, and the generated gRPC stubs at the bottom; a module imports only from its own layer
or below, and the operator never loads a model stack. grimp (import-linter's graph) walks the
``looptool`` folder, whose links (looptool/shared → shared/ and so on) make it the whole import root.

Also: shared/loop and the operator import first-party modules at module top, so what depends on
what is visible at a glance (and to the contracts).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

PROBE = "_layer_probe.py"


def _link_tree(dest: Path, src: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name != "__pycache__":
            (dest / entry.name).symlink_to(entry)


def _root_with_probe(tmp: Path, package: str, code: str) -> Path:
    """The ``looptool`` import root as links under ``tmp``, with a module of ``code`` added to
    ``package`` (a real folder of links there, so the probe is not written into the repo)."""
    top = tmp / "looptool"
    _link_tree(top, REPO / "looptool")
    sub = package.removeprefix("looptool.")
    (top / sub).unlink()
    _link_tree(top / sub, REPO / "looptool" / sub)
    (top / sub / PROBE).write_text(code)
    return tmp


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # ahead of the editable install's finder
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_layer_contracts_hold() -> None:
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("package", "code", "broken"),
    [
        ("looptool.shared", "import looptool.services.inference.client\n", "looptool.shared is not allowed to import looptool.services"),
        ("looptool.services", "from looptool import runner\n", "looptool.services is not allowed to import looptool.runner"),
        ("looptool.operators", "import torch\n", "looptool.operators is not allowed to import torch"),
    ],
)
def test_a_violation_breaks_the_contracts(tmp_path: Path, package: str, code: str, broken: str) -> None:
    out = lint_imports(_root_with_probe(tmp_path, package, code))
    assert out.returncode != 0 and broken in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------------------------ imports at module top

TOP_IMPORTS = [REPO / "shared" / "loop", REPO / "operators"]
# CRD rendering (`looptool operator --print-crd`) stays free of the operator's runtime; test scaffolding.
TOP_IMPORTS_EXEMPT = {REPO / "operators" / "crd.py", REPO / "operators" / "testing.py"}


def _function_level_imports(path: Path) -> list[str]:
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "looptool"]
    return found


def test_first_party_imports_are_at_module_top() -> None:
    files = [f for d in TOP_IMPORTS for f in sorted(d.rglob("*.py")) if f not in TOP_IMPORTS_EXEMPT]
    assert files
    hidden = [hit for f in files for hit in _function_level_imports(f)]
    assert not hidden, "import these at module top (lazy imports only for heavy optional packages):\n" + "\n".join(hidden)


# ------------------------------------------------------------------------------------ one list of services


def test_the_chart_runs_the_services_the_code_knows() -> None:
    from looptool.shared.config import SERVICE_NAMES, ServicesSettings

    assert set(SERVICE_NAMES) == set(ServicesSettings.model_fields) - {"judge"}
    expected = "list " + " ".join(f'"{n}"' for n in SERVICE_NAMES)
    for template in ("services.yaml", "config.yaml"):
        text = (REPO / "charts" / "looptool" / "templates" / template).read_text()
        assert expected in text, f"charts/looptool/templates/{template}: the service list differs from SERVICE_NAMES"
