"""EDDE seeds: the judged errors whose correct side is a call, and the call structure expansion keeps.

- ``model_wrong``: the label is right → the correct calls are the sample's reference;
- ``label_wrong``: the judge's corrected label is right (``verdict.corrected``, falling back to the
  model's calls when the judge left it empty);
- ``both_acceptable`` is not an error (skipped); ``both_wrong`` has no correct side to vary (skipped,
  ``not_error``); ``unclear`` is skipped unless ``includeUnclear`` (then the unchallenged reference
  counts as correct).

The judge's ``analysis`` and ``correct_approach`` travel with the seed into the LLM generator's prompt.

A seed whose correct calls do not validate against its tools is skipped (``invalid_label``).
"""

from __future__ import annotations

from dataclasses import dataclass

from looptool.shared.compose import label_before_judge
from looptool.shared.records import Decision, JudgedSample, Sample, Tool, ToolCall, canonical_json
from looptool.shared.schema import ToolSchemaError, validate_call


@dataclass
class Seed:
    """One judged error to expand."""

    id: str
    decision: Decision
    sample: Sample
    correct: list[ToolCall]
    wrong: list[ToolCall]
    wrong_text: str
    reason: str
    analysis: str = ""  # the judge's error analysis (paper: the generator reads it)
    correct_approach: str = ""  # the judge's account of the correct approach

    @property
    def tools(self) -> list[Tool]:
        return self.sample.tools


def seed_from_judged(j: JudgedSample, include_unclear: bool = False) -> tuple[Seed | None, str]:
    """(seed, "") or (None, why it is not a seed)."""
    sample, v = j.probe.sample, j.verdict
    sid = sample.id or v.sample_id or sample.content_id()
    if v.decision == Decision.MODEL_WRONG:
        correct, wrong = sample.reference, j.probe.predicted_calls
        wrong_text = j.probe.prediction
    elif v.decision == Decision.LABEL_WRONG:
        correct = v.corrected or j.probe.predicted_calls
        before = label_before_judge(sample)  # the judge may already have relabelled the sample
        if before is None:
            before = [] if calls_key(sample.reference) == calls_key(correct) else sample.reference
        wrong, wrong_text = before, ""
    elif v.decision == Decision.UNCLEAR:
        if not include_unclear:
            return None, "unclear"
        correct, wrong, wrong_text = sample.reference, j.probe.predicted_calls, j.probe.prediction
    else:
        return None, "not_error"
    if not correct:
        return None, "no_call"
    correct = [ToolCall(name=c.name, arguments=c.arguments) for c in correct]
    try:
        if any(validate_call(c, sample.tools) for c in correct):
            return None, "invalid_label"  # the "correct" side does not validate: nothing safe to vary
    except ToolSchemaError:
        return None, "invalid_tool"
    return Seed(sid, v.decision, sample, correct, list(wrong), wrong_text, v.reason, v.analysis, v.correct_approach), ""



def call_shape(calls: list[ToolCall]) -> list[tuple[str, tuple[str, ...]]]:
    """The structure EDDE keeps: function names and argument names, in call order."""
    return [(c.name, tuple(sorted(c.arguments))) for c in calls]


def calls_key(calls: list[ToolCall]) -> list[str]:
    """The calls' names and values, order-independent: equal keys mean nothing was varied."""
    return sorted(c.name + canonical_json(c.arguments) for c in calls)


def has_values(calls: list[ToolCall]) -> bool:
    return any(c.arguments for c in calls)
