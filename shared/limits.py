"""Checks of the sizes and numbers users and clients send, against ``config.LimitsSettings``.

Each raises ``InputError`` (one line: the field, the problem, the fix) before any work: the CLI
prints it without a traceback, the gRPC services end the RPC with INVALID_ARGUMENT. Values the
caps come from live in one place, ``LimitsSettings``; this module only compares.
"""

from __future__ import annotations

import math
from pathlib import Path

from looptool.shared.config import LimitsSettings
from looptool.shared.errors import InputError


def check_int(field: str, value: int, low: int, high: int | None = None, setting: str = "", fix: str = "") -> int:
    """``low <= value <= high``; ``setting`` names the ``limits.*`` setting ``high`` comes from."""
    if value < low:
        raise InputError(field, f"{value} is below {low}", fix or f"use a value >= {low}")
    if high is not None and value > high:
        where = f" (limits.{setting})" if setting else ""
        raise InputError(field, f"{value} is over the cap of {high}{where}", fix or f"use a value <= {high}")
    return value


def check_float(field: str, value: float, low: float, high: float | None = None, low_open: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if not math.isfinite(value):
        raise InputError(field, f"{value} is not a finite number", f"use a number >= {low}")
    if value < low or (low_open and value == low):
        raise InputError(field, f"{value} is {'not above' if low_open else 'below'} {low}", f"use a number {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise InputError(field, f"{value} is above {high}", f"use a number <= {high}")
    return value


def read_text_bounded(path: str | Path, max_bytes: int, field: str, setting: str, what: str) -> str:
    """The UTF-8 text of ``path``, read at most ``max_bytes + 1`` bytes (a 50 MB file or /dev/zero
    is refused before any parser sees it). Missing files and directories raise ``FileNotFoundError``
    / ``IsADirectoryError`` for the caller to word."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except OSError as exc:  # permissions, a device that cannot be read, ...
        raise InputError(field, f"cannot read ({exc.strerror or exc})", f"pass a readable {what}") from None
    if len(raw) > max_bytes:
        raise InputError(field, f"over {max_bytes} bytes (limits.{setting})", f"pass a smaller {what} or raise limits.{setting}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(field, f"not UTF-8 text (bad byte at offset {exc.start})", f"save the {what} as UTF-8") from None


def check_round_numbers(rnd: object, limits: LimitsSettings, source: str) -> None:
    """A LoopRound's counts against the caps the services enforce, so ``looptool run`` stops before
    starting anything rather than at the stage that would be refused."""
    spec = rnd.spec  # type: ignore[attr-defined]
    checks = [
        ("spec.synthesis.numDialogues", spec.synthesis.numDialogues, limits.dialogues, "dialogues"),
        ("spec.synthesis.concurrency", spec.synthesis.concurrency, limits.concurrency, "concurrency"),
        ("spec.expand.factor", spec.expand.factor, limits.expand_factor, "expand_factor"),
        ("spec.probe.k", spec.probe.k, limits.n, "n"),
        ("spec.probe.maxTokens", spec.probe.maxTokens, limits.max_tokens, "max_tokens"),
        ("spec.judge.votes", spec.judge.votes, limits.n, "n"),
        ("spec.judge.candidates", spec.judge.candidates, limits.n, "n"),
        ("spec.judge.candidateMaxTokens", spec.judge.candidateMaxTokens, limits.max_tokens, "max_tokens"),
        ("spec.eval.maxTokens", spec.eval.maxTokens, limits.max_tokens, "max_tokens"),
        ("spec.training.maxResponseTokens", spec.training.maxResponseTokens, limits.max_tokens, "max_tokens"),
    ]
    for field, value, high, setting in checks:
        if value > high:
            raise InputError(f"{source}: field '{field}'", f"{value} is over the cap of {high} (limits.{setting})",
                             f"use a value <= {high} or raise limits.{setting}")
