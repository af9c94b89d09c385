"""Test scaffolding shared by the test folders (never shipped in the package).

``tests/conftest.py`` puts ``tests/`` on ``sys.path`` (pytest's default ``prepend`` import mode), so
test modules import these as ``support.<module>``. Scripts outside ``tests/`` (``bench/``) add
``tests/`` to ``sys.path`` themselves.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository root (tests/support/ -> tests/ -> root)
