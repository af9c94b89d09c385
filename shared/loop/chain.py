"""How rounds chain: one policy for the local runner (``looptool.runner``) and the Kubernetes
operator (``looptool.operators.reconciler``), so the two cannot drift apart.

* where a round's outputs live (``<base>/runs/<round>/<name>``, base = ``spec.storage`` or the
  configured store) and where the local runner keeps its status (the operator keeps it in ``.status``);
* the previous-round gate: a round with ``spec.previousRound`` starts only once that round succeeded;
* failure classification: a stage's exception becomes the round's ``reason`` and ``message``;
* stopping early: a round whose held-out gain fell below its ``spec.stopWhen.minHeldoutGain`` ends
  the chain (reason ``ChainStopped``).
"""

from __future__ import annotations

from dataclasses import dataclass

from looptool.shared.config import LoopToolConfig
from looptool.shared.loop.manifest import LoopRound, StopSpec
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


# The trainer also commits the policy after SFT, before GRPO, beside the final model, so that the
# evaluate stage can score both and every report shows GRPO's share of a round's gain.
SFT_MODEL = "model_sft"


def sft_model_uri(checkpoint_uri: str) -> str:
    """The post-SFT model of the run whose final model is ``checkpoint_uri`` (``<prefix>/model``)."""
    return f"{checkpoint_uri.rstrip('/').rpartition('/')[0]}/{SFT_MODEL}"


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


# ----------------------------------------------------------------------------- stopping early

CHAIN_STOPPED = "ChainStopped"  # reason on the round that stopped the chain and on the rounds not run
STOP_CONDITION = "ChainStop"  # condition type on the round whose gain fell below spec.stopWhen
HELDOUT = "heldout"  # the accuracy key the gain is measured on (status.accuracy)
HELDOUT_AFTER_SFT = "heldout_after_sft"  # the same held-out set scored on the round's post-SFT policy


@dataclass(frozen=True)
class StopDecision:
    """Does the chain stop after ``round`` (``spec.stopWhen``)? ``gain`` is None when it cannot be
    measured (round 1, or a missing held-out score); then the chain goes on."""

    round: str
    stop: bool
    gain: float | None
    message: str


def stop_decision(name: str, stop: StopSpec, status: RoundStatus, previous: RoundStatus | None) -> StopDecision:
    """After round ``name`` (its ``spec.stopWhen`` is ``stop``) succeeded: stop when its held-out
    accuracy gained less than ``stop.minHeldoutGain`` over ``previous`` (the round it continued from).
    One policy for the local runner and the operator's LoopPlan."""
    threshold = stop.minHeldoutGain
    if threshold is None or status.phase != Phase.SUCCEEDED:
        return StopDecision(name, False, None, "")
    now = status.accuracy.get(HELDOUT)
    before = previous.accuracy.get(HELDOUT) if previous is not None else None
    if now is None or before is None:
        return StopDecision(name, False, None, "")
    gain = now - before
    if gain >= threshold:
        return StopDecision(name, False, gain, "")
    return StopDecision(
        name, True, gain,
        f"held-out accuracy {before:.4f} → {now:.4f} ({gain:+.4f}) after {name} gained less than "
        f"spec.stopWhen.minHeldoutGain {threshold:g}; later rounds are not run",
    )


def mark_stopped(status: RoundStatus, decision: StopDecision) -> None:
    """Record on the round that stopped the chain why (it stays Succeeded)."""
    status.set_condition(STOP_CONDITION, True, CHAIN_STOPPED, decision.message)


def not_run_status(decision: StopDecision) -> RoundStatus:
    """The status of a round the chain did not run because ``decision`` stopped it."""
    st = RoundStatus(reason=CHAIN_STOPPED, message=f"not run: the chain stopped after {decision.round}: {decision.message}")
    st.set_condition("Ready", False, CHAIN_STOPPED, st.message)
    return st
