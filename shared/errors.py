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


class ServiceError(Exception):
    """An error that names the status it ends an RPC with: ``code`` is a ``grpc.StatusCode`` name
    (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...); an unknown name ends it with ``INTERNAL``.
    ``shared.grpc_util.handle_errors`` turns it into the status; the message is the client's details."""

    def __init__(self, message: str, code: str = "INTERNAL"):
        super().__init__(message)
        self.code = code


UserError = (ConfigError, StorageError, ToolSchemaError, InputError)
