"""Polling for a condition that another thread or process brings about."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(fn: Callable[[], Any], timeout: float = 15.0, what: str = "condition", interval: float = 0.05,
             retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``fn`` until it returns something truthy and return that; an exception in ``retry_on``
    (say ``OSError`` while a server starts) counts as not yet. Fails naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except retry_on as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
