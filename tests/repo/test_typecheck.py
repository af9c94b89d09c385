"""Types checked, and one import name per file.

looptool/shared, looptool/services and looptool/operators are relative links to the top-level
folders, so the source tree is the import tree: mypy (pyproject ``[tool.mypy]``), IDEs and
import-linter resolve ``looptool.shared.…`` from the repository as it is, and a wheel holds the
files themselves. A file must be imported under that one name only: ``import shared.config`` would
load a second copy of the module (two registries, two classes that fail ``isinstance``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
LINKED = ("shared", "services", "operators")
# Top-level folders that hold no first-party Python, or none of ours.
NOT_SOURCE = {"build", "charts", "docs", "examples", "protos", "runs"}


def test_the_package_type_checks() -> None:
    # A cold run (fresh clone) takes about a minute on two cores; .mypy_cache makes later ones seconds.
    out = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    assert out.stdout.startswith("Success:"), out.stdout


def test_the_import_root_links_the_top_level_folders() -> None:
    for name in LINKED:
        link = REPO / "looptool" / name
        assert link.is_symlink() and os.readlink(link) == f"../{name}", f"looptool/{name} must be a relative link to ../{name}"
        spec = importlib.util.find_spec(f"looptool.{name}")
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).resolve() == (REPO / name / "__init__.py").resolve()


def _python_files() -> list[Path]:
    files: list[Path] = []
    for top in sorted(REPO.iterdir()):
        if top.name.startswith(".") or top.name in NOT_SOURCE or top.is_symlink():
            continue
        if top.suffix == ".py":
            files.append(top)
        elif top.is_dir():  # rglob does not descend into the looptool/ links: each file once
            files += [p for p in top.rglob("*.py") if "__pycache__" not in p.parts]
    return files


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in LINKED]
    return found


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    files = _python_files()
    assert any(f.parts[-2:] == ("shared", "config.py") for f in files)
    bare = [hit for f in files for hit in _bare_imports(f)]
    assert not bare, "import these as looptool.<name>, the one name of each module:\n" + "\n".join(bare)
