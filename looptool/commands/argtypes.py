"""argparse ``type=`` checks for the commands' numbers, ports and addresses.

A bad value ends the command in ``looptool.cli`` with one line naming the argument and what would
be valid, before any work: ``-n -1`` must not slice from the end, ``--port 70000`` must not wrap
to another port, ``--limit 1e99`` must not reach a parser.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

# Above any real dataset or request count, below what islice/ints in C accept (sys.maxsize):
# a bigger number is a typo, not a wish.
COUNT_MAX = 10**9


def count(low: int = 0, high: int = COUNT_MAX, what: str = "a count") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {what} from {low} to {high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {what} from {low} to {high}")
        return value

    parse.__name__ = "count"
    return parse


def number(low: float, high: float, low_open: bool = False, high_open: bool = False, what: str = "a number") -> Callable[[str], float]:
    lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what} in {lo}, {hi}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {what} in {lo}, {hi}")
        return value

    parse.__name__ = "number"
    return parse


def port(allow_zero: bool = True) -> Callable[[str], int]:
    """A TCP port; 0 (where allowed) = any free port / off."""
    return count(0 if allow_zero else 1, 65535, "a TCP port")


def address(text: str) -> str:
    """HOST:PORT of a gRPC server (the port 1-65535); "" (argparse passes string defaults through) = none."""
    if text == "":
        return text
    host, sep, p = text.rpartition(":")
    if not sep or not host or not p.isdigit() or not 1 <= int(p) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port from 1 to 65535; e.g. 127.0.0.1:50051")
    return text
