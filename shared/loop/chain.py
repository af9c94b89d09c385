"""How rounds chain: one policy for the local runner (``looptool.runner``) and the Kubernetes
operator (``looptool.operators.reconciler``), so the two cannot drift apart.

* where a round's outputs live (``<base>/runs/<round>/<name>``, base = ``spec.storage`` or the
  configured store) and where the local runner keeps its status (the operator keeps it in ``.status``);
* the previous-round gate: a round with ``spec.previousRound`` starts only once that round succeeded;
* failure classification: a stage's exception becomes the round's ``reason`` and ``message``.
"""

from __future__ import annotations

from dataclasses import dataclass

from looptool.shared.config import LoopToolConfig
from looptool.shared.loop.manifest import LoopRound
from looptool.shared.loop.state import Phase, RoundStatus

WAITING_FOR_PREVIOUS = "WaitingForPreviousRound"
PREVIOUS_FAILED = "PreviousRoundFailed"
GATE_REASONS = (WAITING_FOR_PREVIOUS, PREVIOUS_FAILED)
INTERNAL_ERROR = "InternalError"


# ----------------------------------------------------------------------------- where things live


def round_base_uri(round: LoopRound, config: LoopToolConfig) -> str:
    """The storage base of a round's outputs: ``spec.storage``, else the configured store."""
    return round.spec.storage or config.storage.base_uri()


def run_uri(base_uri: str, round_name: str, name: str) -> str:
    """A round's output ``name``: ``<base>/runs/<round>/<name>``."""
    return f"{base_uri.rstrip('/')}/runs/{round_name}/{name}"


def status_uri(base_uri: str, round_name: str) -> str:
    """The local runner's saved status of a round, beside the round's outputs."""
    return run_uri(base_uri, round_name, "status.json")


# ----------------------------------------------------------------------------- previous-round gate


@dataclass(frozen=True)
class PreviousGate:
    """May a round start after its ``spec.previousRound``? Only once that round succeeded: its
    checkpoint and composed dataset are this round's inputs."""

    name: str  # the previous round
    status: RoundStatus | None  # its status; None: it does not exist (yet)

    @property
    def open(self) -> bool:
        return self.status is not None and self.status.phase == Phase.SUCCEEDED

    @property
    def reason(self) -> str:
        """"" when open; ``PreviousRoundFailed`` (it will not succeed unless re-created) or
        ``WaitingForPreviousRound`` (missing or still running)."""
        if self.open:
            return ""
        return PREVIOUS_FAILED if self.status is not None and self.status.phase == Phase.FAILED else WAITING_FOR_PREVIOUS


# ----------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class Failure:
    reason: str  # CamelCase, Kubernetes style
    message: str
    internal: bool  # not a known stage failure: a bug or an unexpected error (log its traceback)


def classify_failure(exc: BaseException) -> Failure:
    """A stage's exception as a round failure. A ``StageError`` (or any exception with ``reason``
    and ``message``, such as a test executor's) keeps its reason; anything else is an InternalError."""
    reason = getattr(exc, "reason", None)
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    if reason:
        return Failure(str(reason), message, internal=False)
    return Failure(INTERNAL_ERROR, message, internal=True)
