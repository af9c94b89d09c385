"""The tool-call reward: one implementation for the CPU GRPO trainer, verl, probing and evaluation.

Rules (the same text is in ``docs/reward.md``; tests in ``tests/shared/test_reward.py``):

1. **Reasoning is stripped first.** Everything inside ``<think>…</think>`` (or an unclosed
   ``<think>`` to the end) is removed before anything else; calls written there never count.
2. **Format.** The rest must parse with the strict ``<tool_call>`` parser
   (``looptool.shared.toolcall_format``): every block closed, each body one JSON object
   ``{"name": str, "arguments": object}``. A parse error scores 0 (``format_ok=False``).
3. **Call expected** (the reference has ≥1 call): the response must contain calls; a free-text
   answer instead is wrong (``format_ok=False``, reason ``no_call``). Text *next to* calls is
   tolerated by default (BFCL's decoder ignores it too); ``RewardConfig(strict_format=True)``
   makes it a format error (``text_with_calls``).
   **No call expected** (empty reference: irrelevance or a text turn): the right answer contains
   no call; any call is wrong (``format_ok=False``, reason ``unexpected_call``). The text itself is
   not judged.
4. **Same number of calls** as the reference (``count_mismatch``).
5. **Function names are exact** (case-sensitive). With a toolset given, a call to a function that
   is not in it is wrong (``hallucinated_function``).
6. **Arguments against the schema** (toolset given): an argument the function's schema does not
   declare is wrong (``extra_argument``; allowed only when the schema says
   ``additionalProperties`` is true or a schema); a ``required`` argument missing is wrong
   (``missing_required``).
7. **Calls are matched as a multiset, ignoring order.** Each call is reduced to a canonical form
   (below); prediction and reference must hold the same canonical calls with the same
   multiplicities. Because canonical equality is an equivalence relation, this equals a maximum
   bipartite matching by exact equality (no greedy-order artefacts).
8. **Canonical argument values** (type-aware, recursive, guided by the parameter's JSON Schema):

   - ``bool`` is its own type: ``True`` never equals ``1`` and ``False`` never equals ``0``.
   - Numbers: ints and floats compare by value (``5 == 5.0``) — for ``number`` (BFCL ``float``)
     parameters, untyped ones and without a schema — except for a parameter typed ``integer``,
     where the Python type matters: ``5.0`` is not ``5`` (as in BFCL).
   - Strings are normalised before comparison: Unicode NFKC, every run of whitespace (``\\s+``,
     Unicode-aware) collapsed to one space, leading/trailing whitespace stripped, then
     ``str.casefold()``. Punctuation is kept (``"New-York"`` ≠ ``"New York"``). A string never
     equals a number (``"5"`` ≠ ``5``). ``RewardConfig(normalize_strings=False)`` compares exactly.
   - Lists (and tuples) are ordered sequences: same length, same order, same multiplicity
     (``[1, 2]`` ≠ ``[2, 1]`` and ``[1, 2]`` ≠ ``[1, 2, 2]``); items use the ``items`` schema.
   - Objects are compared key by key, recursively (keys exact, values canonical); nested objects
     get rule 9 for their own ``properties`` too.
   - ``null`` equals only ``null``.
9. **Optional arguments and defaults.** Before comparison, every schema property with a declared
   ``default`` that a call omits is filled with that default — on both sides. So an argument
   absent in the prediction equals the reference giving the default value, and vice versa; an
   argument absent on both sides is equal; an omitted optional argument *without* a declared
   default never equals a given value (``null`` included). ``RewardConfig(use_schema_defaults=False)``
   turns the filling off (BFCL-like: absent ≠ default).
10. **Score.** Binary by default: 1.0 when correct, else 0.0 (as in the paper). With
    ``RewardConfig(partial_credit=True)``: a correct answer still scores 1.0; a wrong answer whose
    format is right (rules 2–3) scores ``format_credit`` plus ``name_credit`` × the fraction of
    function names matched as a multiset (``|pred ∩ ref| / max(|pred|, |ref|)``); otherwise 0.

Without a toolset (``tools=None``) rules 5–6 are skipped and values compare as if untyped
(numbers by value). Values are not validated against the schema's types: a value is right when it
canonically equals the reference's value (validating labels is the data pipeline's job,
``looptool.shared.schema.validate_call``).

Entry points: :func:`score_response`, :func:`score_sample`, :func:`calls_match`, and
:func:`compute_score` (verl's ``custom_reward_function`` signature).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from looptool.shared.records import Sample, Tool, ToolCall
from looptool.shared.schema import normalize_schema
from looptool.shared.toolcall_format import parse_tool_calls

# ---------------------------------------------------------------------------------------------
# Config and result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardConfig:
    """Knobs of the reward. The defaults are the documented rules (binary, like the paper)."""

    partial_credit: bool = False
    format_credit: float = 0.1
    name_credit: float = 0.2
    strict_format: bool = False
    normalize_strings: bool = True
    use_schema_defaults: bool = True

    def __post_init__(self) -> None:
        if not (0.0 <= self.format_credit and 0.0 <= self.name_credit and self.format_credit + self.name_credit < 1.0):
            raise ValueError(
                "RewardConfig: format_credit and name_credit must be >= 0 and sum to < 1.0 "
                f"(got {self.format_credit} + {self.name_credit})"
            )

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> "RewardConfig":
        """Build from a plain mapping (verl ``reward_kwargs``, YAML); unknown keys are an error."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"RewardConfig: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class RewardResult:
    score: float
    correct: bool
    format_ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Canonical values
# ---------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")


def normalize_string(text: str) -> str:
    """NFKC, collapse whitespace runs to one space, strip, casefold (rule 8)."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _schema_types(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}
    return set()


def _is_integer_typed(schema: Any) -> bool:
    types = _schema_types(schema)
    return "integer" in types and "number" not in types


def _fill_defaults(value: dict[str, Any], schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return value
    props = schema.get("properties")
    if not isinstance(props, dict):
        return value
    out = dict(value)
    for key, prop in props.items():
        if key not in out and isinstance(prop, dict) and "default" in prop:
            out[key] = prop["default"]
    return out


def _property_schema(schema: Any, key: str) -> Any:
    if not isinstance(schema, dict):
        return None
    props = schema.get("properties")
    if isinstance(props, dict) and key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def canonical_value(value: Any, schema: Any = None, normalize_strings: bool = True, use_defaults: bool = True) -> Any:
    """A hashable, type-tagged canonical form of a JSON value (rules 8–9); equal forms = equal values."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        if _is_integer_typed(schema):
            return ("int", value) if isinstance(value, int) else ("float", value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return ("num", int(value))
        return ("num", value)
    if isinstance(value, str):
        return ("str", normalize_string(value) if normalize_strings else value)
    if isinstance(value, (list, tuple)):
        items = schema.get("items") if isinstance(schema, dict) else None
        if isinstance(items, list):  # tuple-style items: one schema per position
            return (
                "list",
                tuple(
                    canonical_value(v, items[i] if i < len(items) else None, normalize_strings, use_defaults)
                    for i, v in enumerate(value)
                ),
            )
        return ("list", tuple(canonical_value(v, items, normalize_strings, use_defaults) for v in value))
    if isinstance(value, dict):
        filled = _fill_defaults(value, schema) if use_defaults else value
        return (
            "dict",
            tuple(
                sorted(
                    (str(k), canonical_value(v, _property_schema(schema, str(k)), normalize_strings, use_defaults))
                    for k, v in filled.items()
                )
            ),
        )
    return ("other", repr(value))


def canonical_call(call: ToolCall, tool: Tool | None, config: RewardConfig | None = None) -> tuple[str, Any]:
    """(name, canonical arguments) with schema defaults filled in (rule 9)."""
    cfg = config or RewardConfig()
    schema = normalize_schema(tool.parameters) if tool is not None else None
    return call.name, canonical_value(dict(call.arguments), schema, cfg.normalize_strings, cfg.use_schema_defaults)


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def as_tools(tools: Iterable[Tool | dict[str, Any]] | None) -> dict[str, Tool] | None:
    """Tool records or OpenAI-format dicts (``{"type": "function", "function": {...}}`` or the bare
    function) → {name: Tool}. ``None`` or empty → None (no toolset: schema rules skipped)."""
    if tools is None:
        return None
    out: dict[str, Tool] = {}
    for t in tools:
        if isinstance(t, Tool):
            tool = t
        elif isinstance(t, dict):
            fn = t["function"] if isinstance(t.get("function"), dict) else t
            tool = Tool(
                name=fn["name"],
                description=fn.get("description", "") or "",
                parameters=fn.get("parameters") or {"type": "object", "properties": {}},
            )
        else:
            raise TypeError(f"not a tool: {t!r:.120}")
        out[tool.name] = tool
    return out or None


def _schema_issue(call: ToolCall, tool: Tool) -> str | None:
    schema = normalize_schema(tool.parameters)
    props = schema.get("properties") if isinstance(schema, dict) else None
    props = props if isinstance(props, dict) else {}
    extra_ok = isinstance(schema, dict) and (
        schema.get("additionalProperties") is True or isinstance(schema.get("additionalProperties"), dict)
    )
    if not extra_ok:
        for arg in call.arguments:
            if arg not in props:
                return f"extra_argument: {call.name}.{arg} is not in the schema"
    required = schema.get("required", []) if isinstance(schema, dict) else []
    for req in required if isinstance(required, list) else []:
        if req not in call.arguments:
            return f"missing_required: {call.name}.{req}"
    return None


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _explain_mismatch(pred: list[ToolCall], ref: list[ToolCall], pkeys: list[Any], rkeys: list[Any]) -> str:
    """A short, specific reason for the first unmatched reference call."""
    remaining = Counter(pkeys)
    unmatched_ref = []
    for call, key in zip(ref, rkeys, strict=True):
        if remaining[key] > 0:
            remaining[key] -= 1
        else:
            unmatched_ref.append((call, key))
    unmatched_pred = []
    for call, key in zip(pred, pkeys, strict=True):
        if remaining[key] > 0:
            remaining[key] -= 1
            unmatched_pred.append((call, key))
    if not unmatched_ref:
        return "calls_differ"
    rcall, rkey = unmatched_ref[0]
    same_name = [(c, k) for c, k in unmatched_pred if c.name == rcall.name]
    if not same_name:
        got = sorted({c.name for c, _ in unmatched_pred}) or ["nothing"]
        return f"wrong_name: expected {rcall.name}, got {', '.join(got)}"
    pcall, pkey = same_name[0]
    rargs, pargs = dict(rkey[1][1]), dict(pkey[1][1])
    for arg in sorted(set(rargs) | set(pargs)):
        if arg not in pargs:
            return f"argument_mismatch: {rcall.name}.{arg} missing (expected {_show(rcall.arguments.get(arg))})"
        if arg not in rargs:
            return f"argument_mismatch: {rcall.name}.{arg} not expected (got {_show(pcall.arguments.get(arg))})"
        if rargs[arg] != pargs[arg]:
            return (
                f"argument_mismatch: {rcall.name}.{arg} expected {_show(rcall.arguments.get(arg))}, "
                f"got {_show(pcall.arguments.get(arg))}"
            )
    return f"argument_mismatch: {rcall.name}"


def calls_match(
    pred: list[ToolCall],
    ref: list[ToolCall],
    tools: Iterable[Tool | dict[str, Any]] | dict[str, Tool] | None = None,
    *,
    config: RewardConfig | None = None,
) -> tuple[bool, str]:
    """Do the predicted calls equal the reference calls (rules 4–9)? Returns ``(ok, reason)``."""
    by_name = tools if isinstance(tools, dict) else as_tools(tools)
    if len(pred) != len(ref):
        return False, f"count_mismatch: expected {len(ref)} call(s), got {len(pred)}"
    if by_name is not None:
        for call in pred:
            tool = by_name.get(call.name)
            if tool is None:
                return False, f"hallucinated_function: {call.name} is not in the toolset"
            issue = _schema_issue(call, tool)
            if issue:
                return False, issue
    lookup = by_name or {}
    pkeys = [canonical_call(c, lookup.get(c.name), config) for c in pred]
    rkeys = [canonical_call(c, lookup.get(c.name), config) for c in ref]
    if Counter(pkeys) == Counter(rkeys):
        return True, "ok"
    return False, _explain_mismatch(pred, ref, pkeys, rkeys)


def _name_overlap(pred: list[ToolCall], ref: list[ToolCall]) -> float:
    denom = max(len(pred), len(ref))
    if denom == 0:
        return 1.0
    common = Counter(c.name for c in pred) & Counter(c.name for c in ref)
    return sum(common.values()) / denom


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def score_response(
    response: str,
    reference: list[ToolCall],
    tools: Iterable[Tool | dict[str, Any]] | None = None,
    config: RewardConfig | None = None,
) -> RewardResult:
    """Score one model response against the reference calls (rules 1–10). Never raises on model
    output; an empty ``reference`` means "no call expected"."""
    cfg = config or RewardConfig()
    parsed = parse_tool_calls(response)
    details: dict[str, Any] = {
        "n_ref": len(reference),
        "n_pred": len(parsed.calls),
        "reasoning_stripped": bool(parsed.reasoning),
    }

    def result(correct: bool, format_ok: bool, reason: str) -> RewardResult:
        if correct:
            score = 1.0
        elif cfg.partial_credit and format_ok:
            overlap = _name_overlap(parsed.calls, reference)
            details["name_overlap"] = overlap
            score = cfg.format_credit + cfg.name_credit * overlap
        else:
            score = 0.0
        return RewardResult(score=score, correct=correct, format_ok=format_ok, reason=reason, details=details)

    if parsed.error is not None:
        details["n_pred"] = 0
        return result(False, False, f"parse_error: {parsed.error}")
    details["pred_calls"] = [{"name": c.name, "arguments": c.arguments} for c in parsed.calls]
    if not reference:
        if parsed.calls:
            return result(False, False, f"unexpected_call: no call expected, got {len(parsed.calls)}")
        return result(True, True, "ok: no call expected and none made")
    if not parsed.calls:
        return result(False, False, "no_call: a call was expected, got text only" if parsed.text else "no_call: empty response")
    if cfg.strict_format and parsed.text:
        return result(False, False, "text_with_calls: text outside <tool_call> blocks")
    ok, why = calls_match(parsed.calls, reference, tools, config=cfg)
    return result(ok, True, why)


def score_sample(response: str, sample: Sample, config: RewardConfig | None = None) -> RewardResult:
    """Score a response for a Sample: its reference calls and its tools (if it has any)."""
    return score_response(response, list(sample.reference), sample.tools or None, config)


# ---------------------------------------------------------------------------------------------
# verl entry point
# ---------------------------------------------------------------------------------------------


def _as_call(item: Any) -> ToolCall:
    if isinstance(item, ToolCall):
        return item
    if not isinstance(item, dict):
        raise ValueError(f"reference call must be an object, got {type(item).__name__}")
    if "function" in item and isinstance(item["function"], dict):  # OpenAI tool_calls entry
        item = item["function"]
    name = item.get("name")
    args = item.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        raise ValueError(f"reference call needs a string 'name' and object 'arguments': {item!r:.200}")
    return ToolCall(name=name, arguments=args)


def parse_ground_truth(ground_truth: Any) -> tuple[list[ToolCall], list[dict[str, Any]] | None]:
    """verl's ``reward_model.ground_truth`` → (reference calls, tools or None).

    Accepted: a JSON string (or already-decoded value) holding a list of calls
    ``[{"name", "arguments"}]`` (OpenAI ``{"function": {...}}`` entries too), or an object
    ``{"calls": [...], "tools": [...]}``. Raises ValueError on anything else — use it to validate a
    dataset before training.
    """
    value = ground_truth
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"ground_truth is not JSON: {exc}") from None
    tools = None
    if isinstance(value, dict):
        tools = value.get("tools")
        value = value.get("calls", value.get("reference", []))
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, list):
        raise ValueError(f"ground_truth must be a list of calls, got {type(value).__name__}")
    return [_as_call(v) for v in value], tools


def _tools_from_extra(extra_info: Any) -> list[dict[str, Any]] | None:
    if not isinstance(extra_info, dict):
        return None
    tools: Any = extra_info.get("tools")  # a list, its JSON text, or an array (rows read from parquet)
    if tools is None:
        return None
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    if hasattr(tools, "tolist"):
        tools = tools.tolist()
    return tools or None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    **config: Any,
) -> dict[str, float]:
    """verl ``custom_reward_function`` entry point.

    ``ground_truth``: JSON string of the reference calls list (see :func:`parse_ground_truth`).
    The toolset comes from ``ground_truth["tools"]`` or ``extra_info["tools"]`` (list or JSON
    string) when present. ``data_source`` is recorded, never used to pick the rules. Extra keyword
    arguments (verl's ``custom_reward_function.reward_kwargs``) are RewardConfig options.

    Returns ``{"score", "correct", "format_ok", "n_pred_calls", "n_ref_calls"}`` — all numeric,
    because verl averages every returned key into its metrics.
    """
    cfg = RewardConfig.from_mapping(config)
    reference, tools = parse_ground_truth(ground_truth)
    tools = tools or _tools_from_extra(extra_info)
    res = score_response(solution_str if isinstance(solution_str, str) else str(solution_str), reference, tools, cfg)
    return {
        "score": float(res.score),
        "correct": float(res.correct),
        "format_ok": float(res.format_ok),
        "n_pred_calls": float(res.details.get("n_pred", 0)),
        "n_ref_calls": float(len(reference)),
    }


__all__ = [
    "RewardConfig",
    "RewardResult",
    "as_tools",
    "calls_match",
    "canonical_call",
    "canonical_value",
    "compute_score",
    "normalize_string",
    "parse_ground_truth",
    "score_response",
    "score_sample",
]
