"""The grounding judge: a rule-based heuristic verifier for CPU demos without a judge LLM. A call
is grounded when it validates against its tool's schema and every argument value is supported by
the conversation (``value_supported``)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from looptool.shared.compose import format_calls
from looptool.shared.records import Decision, ProbeResult, Sample, Tool, ToolCall, Verdict
from looptool.shared.schema import ToolSchemaError, normalize_schema, validate_call
from looptool.shared.textnorm import normalize_text_folded
from looptool.shared.toolcall_format import parse_tool_calls

from .verdicts import apply_label_check

_NUM_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")

def numbers_in(text: str) -> list[float]:
    out = []
    for m in _NUM_RE.finditer(text):
        try:
            out.append(float(m.group(0).replace(",", "")))
        except ValueError:
            pass
    return out


@dataclass
class Evidence:
    text: str  # normalised, padded with spaces
    numbers: list[float]

    @classmethod
    def of(cls, sample: Sample) -> "Evidence":
        raw = "\n".join(m.content for m in sample.context if m.role in ("user", "tool"))
        return cls(text=f" {normalize_text_folded(raw)} ", numbers=numbers_in(raw))

    def has_number(self, x: float) -> bool:
        return any(math.isclose(x, n, rel_tol=1e-9, abs_tol=1e-9) for n in self.numbers)

    def has_text(self, s: str) -> bool:
        n = normalize_text_folded(s)
        return not n or f" {n} " in self.text


def _sub_schema(schema: Any, key: str | None, item: bool = False) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    if item:
        sub = schema.get("items")
    else:
        sub = (schema.get("properties") or {}).get(key) if key is not None else None
    return sub if isinstance(sub, dict) else {}


def value_supported(value: Any, schema: dict[str, Any], ev: Evidence) -> bool:
    """Is a scalar argument value supported by the conversation?

    Booleans and null: always (the model decides them). A value listed in the parameter's ``enum``
    or equal to its ``default``: yes. Numbers: some number in the user/tool messages equals it
    (numerically: ``5 == 5.0``, ``1,000 == 1000``). Strings: the normalised string occurs in the
    normalised user/tool text on word boundaries; a numeric string may also match a number.
    """
    if value is None or isinstance(value, bool):
        return True
    if "enum" in schema and isinstance(schema["enum"], list) and value in schema["enum"]:
        return True
    if "default" in schema and schema["default"] == value and type(schema["default"]) is type(value):
        return True
    if isinstance(value, (int, float)):
        return ev.has_number(float(value)) or ev.has_text(str(value))
    if isinstance(value, str):
        if ev.has_text(value):
            return True
        nums = numbers_in(value)
        return bool(nums) and normalize_text_folded(value) == normalize_text_folded(" ".join(_NUM_RE.findall(value))) and all(
            ev.has_number(n) for n in nums
        )
    return False


def unsupported_values(value: Any, schema: dict[str, Any], ev: Evidence, path: str) -> list[str]:
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += unsupported_values(v, _sub_schema(schema, k), ev, f"{path}.{k}")
        return out
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            out += unsupported_values(v, _sub_schema(schema, None, item=True), ev, f"{path}[{i}]")
        return out
    return [] if value_supported(value, schema, ev) else [f"{path}={json.dumps(value, ensure_ascii=False)[:60]}"]


def call_grounding(call: ToolCall, tools: list[Tool], ev: Evidence) -> list[str]:
    """Problems that make ``call`` ungrounded (empty list = grounded)."""
    try:
        issues = validate_call(call, tools)
    except ToolSchemaError as exc:
        return [f"{call.name}: tool schema invalid ({exc.problem})"]
    if issues:
        return [f"{call.name}: {i}" for i in issues[:3]]
    tool = next(t for t in tools if t.name == call.name)
    schema = normalize_schema(tool.parameters) if isinstance(tool.parameters, dict) else {}
    bad = unsupported_values(call.arguments, schema, ev, call.name)
    return [f"{b} not found in the conversation" for b in bad]


def calls_grounding(calls: list[ToolCall] | None, tools: list[Tool], ev: Evidence, parse_error: str = "") -> list[str]:
    if calls is None:
        return [f"unparseable ({parse_error})"]
    if not calls:
        return ["no call"]
    out: list[str] = []
    for c in calls:
        out += call_grounding(c, tools, ev)
    return out


class GroundingJudge:
    """Heuristic verifier (no model): compares which side's calls are grounded in the conversation.

    - prediction grounded, label not → ``label_wrong`` (corrected = the prediction's calls);
    - label grounded, prediction not (or unparseable, or no call) → ``model_wrong``;
    - both grounded → ``both_acceptable``, except when the prediction makes fewer calls than the
      label with a subset of its function names (it missed calls) → ``model_wrong``;
    - neither, and the label makes calls → ``both_wrong``;
    - neither, and the label is text → ``unclear``.
    A text-only side (no call) counts as not grounded: this heuristic cannot judge free text.
    Every verdict's ``analysis`` lists the rule's findings on the wrong side(s) and
    ``correct_approach`` the grounded calls (or what a grounded call needs).
    """

    name = "grounding"

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        return [self.judge_one(r) for r in results]

    def judge_one(self, result: ProbeResult) -> Verdict:
        s = result.sample
        ev = Evidence.of(s)
        parsed = parse_tool_calls(result.prediction)
        pred_calls = parsed.calls if parsed.error is None else None
        pred_bad = calls_grounding(pred_calls, s.tools, ev, str(parsed.error) if parsed.error else "")
        label_bad = calls_grounding(list(s.reference), s.tools, ev)
        pred_ok, label_ok = not pred_bad, not label_bad

        def why(side: str, bad: list[str]) -> str:
            return f"{side}: " + ("grounded" if not bad else "; ".join(bad[:4]))

        reason = f"{why('prediction', pred_bad)} | {why('label', label_bad)}"
        grounded = "every argument value comes from the conversation and fits the tool's schema"
        label_calls = format_calls(list(s.reference))
        if pred_ok and not label_ok:
            decision = Decision.LABEL_WRONG
            analysis = f"the label is not grounded: {'; '.join(label_bad[:4])}"
            approach = f"call {format_calls(pred_calls or [])}: {grounded}"
        elif label_ok and not pred_ok:
            decision = Decision.MODEL_WRONG
            analysis = f"the prediction is not grounded: {'; '.join(pred_bad[:4])}"
            approach = f"call {label_calls} (the label): {grounded}"
        elif pred_ok and label_ok:
            pn, ln = Counter(c.name for c in pred_calls or []), Counter(c.name for c in s.reference)
            if sum(pn.values()) < sum(ln.values()) and not (pn - ln):
                decision = Decision.MODEL_WRONG
                reason += " | prediction misses calls the label makes"
                missing = ", ".join(sorted((ln - pn).elements()))
                analysis = f"the prediction makes {sum(pn.values())} of the label's {sum(ln.values())} calls (missing: {missing})"
                approach = f"make every call the request needs: {label_calls}"
            else:
                decision = Decision.BOTH_ACCEPTABLE
                analysis = "both sides are grounded; the rule cannot tell which one the user wanted"
                approach = f"either {label_calls} or {format_calls(pred_calls or [])}"
        elif s.reference:
            decision = Decision.BOTH_WRONG
            analysis = f"neither side is grounded: prediction: {'; '.join(pred_bad[:3])}; label: {'; '.join(label_bad[:3])}"
            approach = f"call {', '.join(sorted({c.name for c in s.reference}))} with every argument value taken from the conversation (neither side does)"
        else:
            decision = Decision.UNCLEAR  # a text label: this rule cannot judge free text
            analysis = f"the label is text, which this rule cannot check; prediction: {'; '.join(pred_bad[:3])}"
            approach = ""
        verdict = Verdict(sample_id=s.id, decision=decision, reason=reason, analysis=analysis[:1000],
                          correct_approach=approach[:1000], raw="")
        return apply_label_check(result, verdict)
