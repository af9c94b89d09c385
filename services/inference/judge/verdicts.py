"""Verdicts: the judge interface, the strict parser of a judge model's answer, and the check that
turns a ``label_wrong`` verdict into a corrected label (or ``unclear``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from looptool.shared.records import Decision, ProbeResult, Tool, ToolCall, Verdict
from looptool.shared.schema import ToolSchemaError, validate_call
from looptool.shared.toolcall_format import parse_tool_calls, strip_reasoning

JUDGE_ERROR = "judge_error"  # reason prefix of verdicts whose judge model produced nothing usable
CANDIDATE_REASON = "sampled candidate"  # reason prefix of verdicts settled by a sampled candidate


class Judge(Protocol):
    name: str

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        """One verdict per result, in order. Never raises for a per-item problem."""
        ...


_DECISIONS = {d.value: d for d in Decision}
_MAX_SCAN = 20000


@dataclass
class ParsedVerdict:
    decision: Decision | None = None
    reason: str = ""
    error: str = ""
    analysis: str = ""  # the paper's error analysis (optional in the answer)
    correct_approach: str = ""  # what the correct answer does (optional in the answer)

    @property
    def ok(self) -> bool:
        return self.decision is not None and not self.error


# The paper's wording of the four outcomes, accepted as synonyms.
_SYNONYMS = {
    "label_incorrect": Decision.LABEL_WRONG,
    "prediction_incorrect": Decision.MODEL_WRONG,
    "both_correct": Decision.BOTH_ACCEPTABLE,
    "both_incorrect": Decision.BOTH_WRONG,
}


def _norm_decision(value: Any) -> Decision | None:
    if not isinstance(value, str):
        return None
    key = re.sub(r"[\s\-]+", "_", value.strip().lower())
    return _DECISIONS.get(key) or _SYNONYMS.get(key)


def parse_verdict(text: object) -> ParsedVerdict:
    """Judge output → decision + reason. Strict and total: never raises.

    Accepted: reasoning in ``<think>`` (ignored), prose or code fences around the JSON. Required:
    a JSON object with a string ``decision`` that is one of the four decisions (case, spaces and
    hyphens ignored: ``"Label-Wrong"`` is ``label_wrong``; ``"both_incorrect"`` is ``both_wrong``);
    ``reason``, ``analysis`` and ``correct_approach``, when present, must be strings (null = empty);
    other keys are ignored. Several objects with a ``decision`` must agree, else error.
    """
    if not isinstance(text, str):
        return ParsedVerdict(error=f"judge output is {type(text).__name__}, not text")
    try:
        visible, _ = strip_reasoning(text)
        visible = visible[:_MAX_SCAN]
        decoder = json.JSONDecoder()
        found: list[dict[str, Any]] = []
        pos = 0
        attempts = 0
        while attempts < 200:
            i = visible.find("{", pos)
            if i < 0:
                break
            attempts += 1
            try:
                obj, end = decoder.raw_decode(visible, i)
            except (json.JSONDecodeError, RecursionError):
                pos = i + 1
                continue
            if isinstance(obj, dict) and "decision" in obj:
                found.append(obj)
            pos = end
        if not found:
            return ParsedVerdict(error="no JSON object with a 'decision' field")
        decisions = []
        for obj in found:
            d = _norm_decision(obj["decision"])
            if d is None:
                return ParsedVerdict(
                    error=f"decision {str(obj['decision'])[:60]!r} is not one of {sorted(_DECISIONS)}"
                )
            decisions.append(d)
        if len(set(decisions)) > 1:
            return ParsedVerdict(error=f"conflicting decisions {[d.value for d in decisions]}")
        texts: dict[str, str] = {}
        for key in ("reason", "analysis", "correct_approach"):
            value = found[0].get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                return ParsedVerdict(error=f"'{key}' must be a string, got {type(value).__name__}")
            texts[key] = value.strip()
        return ParsedVerdict(decision=decisions[0], **texts)
    except Exception as exc:  # totality
        return ParsedVerdict(error=f"unparseable judge output: {exc!r}")


# ---------------------------------------------------------------------------------------------
# Corrected labels


def corrected_calls(prediction: str, tools: list[Tool]) -> tuple[list[ToolCall] | None, str]:
    """The prediction's calls when they parse and validate against the tools; else (None, why)."""
    parsed = parse_tool_calls(prediction)
    if parsed.error is not None:
        return None, f"prediction does not parse: {parsed.error}"
    if not parsed.calls:
        return None, "prediction has no call"
    for call in parsed.calls:
        try:
            issues = validate_call(call, tools)
        except ToolSchemaError as exc:
            return None, str(exc)
        if issues:
            return None, f"prediction call {call.name!r} is invalid: {'; '.join(str(i) for i in issues[:3])}"
    return parsed.calls, ""


def apply_label_check(result: ProbeResult, verdict: Verdict) -> Verdict:
    if verdict.decision != Decision.LABEL_WRONG:
        return verdict
    calls, why = corrected_calls(result.prediction, result.sample.tools)
    if calls is None:
        verdict.decision = Decision.UNCLEAR
        verdict.reason = f"judged label_wrong, but {why}; kept as unclear. Judge said: {verdict.reason}"
        verdict.corrected = []
    else:
        verdict.corrected = [ToolCall(name=c.name, arguments=c.arguments) for c in calls]
    return verdict
