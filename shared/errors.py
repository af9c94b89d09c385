"""Errors meant for the user: one line naming the field/URI and the fix; the CLI prints them without a traceback."""

from __future__ import annotations

from looptool.shared.config import ConfigError
from looptool.shared.schema import ToolSchemaError
from looptool.shared.storage.base import StorageError


class InputError(ValueError):
    """Bad input (manifest, dataset, toolset, request) detected before work starts."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}" + (f"; {fix}" if fix else ""))


UserError = (ConfigError, StorageError, ToolSchemaError, InputError)
