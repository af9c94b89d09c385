"""Fixtures shared by every test folder (layout: tests/README.md).

pytest's default ``prepend`` import mode puts this file's directory (``tests/``) on ``sys.path``, which
makes the scaffolding importable as ``support.<module>``; test file names are unique across folders
(the folders have no ``__init__.py``).
"""

from __future__ import annotations

import pytest

# S3 servers on loopback, one per test module that asks for them (module-scoped fixtures).
from support.s3server import moto_s3, seaweed  # noqa: F401


@pytest.fixture
def store(tmp_path):
    from looptool.shared.storage import LocalStore

    return LocalStore(tmp_path / "store")
