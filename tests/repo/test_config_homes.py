"""One home per setting: ``LOOPTOOL_*`` environment variables are read only by ``shared/config.py``.

Everything else gets its settings from a loaded ``LoopToolConfig`` (or ``load_config()``), so a
setting has one name, one type, one default, and YAML and the environment both reach it.
Writing a variable (a child process's environment) is not reading one and is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("shared", "services", "operators", "looptool")
CONFIG_MODULE = Path("shared/config.py")


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    return next(p for p in here.parents if (p / "setup.py").is_file())


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or a bare ``environ``."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _looptool_name(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("LOOPTOOL_"):
        return node.value
    return None


def env_reads(source: str) -> list[tuple[int, str]]:
    """(line, variable) of every read of a ``LOOPTOOL_*`` variable from the process environment:
    ``os.environ.get(...)``, ``os.getenv(...)``, ``os.environ[...]`` (not as an assignment target),
    ``... in os.environ``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "pop") and _is_environ(func.value):
                name = _looptool_name(node.args[0])
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                isinstance(func, ast.Name) and func.id == "getenv"
            ):
                name = _looptool_name(node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            name = _looptool_name(node.slice)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if any(_is_environ(c) for c in node.comparators):
                name = _looptool_name(node.left)
        if name is not None:
            found.append((node.lineno, name))
    return sorted(found)


def offending_reads(root: Path) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if rel == CONFIG_MODULE:
                continue
            out += [f"{rel}:{line}: {name}" for line, name in env_reads(path.read_text(encoding="utf-8"))]
    return out


def test_only_the_config_module_reads_looptool_environment_variables():
    bad = offending_reads(_repo_root())
    assert not bad, (
        "LOOPTOOL_* variables read outside shared/config.py; add a typed setting to LoopToolConfig "
        "(LOOPTOOL_<SECTION>__<FIELD>) and pass it in instead:\n" + "\n".join(bad)
    )


def test_the_check_finds_each_kind_of_read(tmp_path):
    pkg = tmp_path / "services" / "x"
    pkg.mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "config.py").write_text('import os\nA = os.environ.get("LOOPTOOL_OK", "")\n')
    (pkg / "mod.py").write_text(
        "import os\nfrom os import environ, getenv\n"
        'a = os.environ.get("LOOPTOOL_A", "")\n'
        'b = os.getenv("LOOPTOOL_B")\n'
        'c = os.environ["LOOPTOOL_C"]\n'
        'd = "LOOPTOOL_D" in os.environ\n'
        'e = getenv("LOOPTOOL_E") or environ.get("LOOPTOOL_F")\n'
        'os.environ["LOOPTOOL_WRITTEN"] = "1"\n'  # writes and other variables are fine
        'os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")\n'
        'env = {"LOOPTOOL_TRAINER__WORKDIR": "/w"}\n'
    )
    assert offending_reads(tmp_path) == [
        "services/x/mod.py:3: LOOPTOOL_A",
        "services/x/mod.py:4: LOOPTOOL_B",
        "services/x/mod.py:5: LOOPTOOL_C",
        "services/x/mod.py:6: LOOPTOOL_D",
        "services/x/mod.py:7: LOOPTOOL_E",
        "services/x/mod.py:7: LOOPTOOL_F",
    ]
