"""Train/test split of a toolset's functions, so BFCL evaluation never scores functions a round
trained on (the paper trains on other tools than it tests on).

Each function lands in train or test by a seeded hash of its name alone: the split of a name does
not depend on which other functions the toolset holds or their order, so a toolset that grows
keeps its earlier functions where they were.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field


class FunctionSplit(BaseModel):
    """Recorded in the round's status (``status.functionSplit``)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    testFraction: float = 0.0
    allowOverlap: bool = False
    # every function the model has trained on up to this round (this round's and earlier rounds')
    train: list[str] = Field(default_factory=list)
    # this round's toolset functions kept out of training
    test: list[str] = Field(default_factory=list)


def _unit(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_functions(names: Iterable[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, test)``: disjoint, covering ``names``, in their order. At least one function is
    trained on (a round needs tools); with two or more, at least one is tested."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction {test_fraction} is not in [0, 1)")
    unique = list(dict.fromkeys(names))
    draws = {n: _unit(seed, n) for n in unique}
    test = {n for n in unique if draws[n] < test_fraction}
    if unique and len(test) == len(unique):  # keep the function with the highest draw for training
        test.discard(max(unique, key=lambda n: draws[n]))
    if len(unique) > 1 and not test and test_fraction > 0:  # and the lowest for testing
        test.add(min(unique, key=lambda n: draws[n]))
    return [n for n in unique if n not in test], [n for n in unique if n in test]


__all__ = ["FunctionSplit", "split_functions"]
