"""Our BFCL AST checker (shared/ast_check.py) must agree with bfcl-eval's official checker.

For every entry of every static category that the installed bfcl-eval ships, model outputs are
built from the possible answers (first acceptable value of each parameter, and the last one) and
from systematic perturbations of them; both checkers score every output and must agree on all.
The reward (shared/reward.py) is compared with the official checker too, on single-valued
versions of the possible answers (where the two semantics coincide); the differences that are
intended are predicted by documented rules (docs/reward.md) and every other output must agree.

Run with ``-s`` to see the per-category counts.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections import Counter
from typing import Any, Iterator

import pytest

from looptool.shared import ast_check, bfcl
from looptool.shared.bfcl import BfclEntry, answer_to_calls
from looptool.shared.records import ToolCall
from looptool.shared.reward import RewardConfig, score_response
from looptool.shared.toolcall_format import render_tool_calls

ALL_CATEGORIES = bfcl.BFCL_AST_CATEGORIES
REWARD_CATEGORIES = [
    c
    for c in (
        "simple_python",
        "multiple",
        "parallel",
        "parallel_multiple",
        "live_simple",
        "live_multiple",
        "live_parallel",
        "live_parallel_multiple",
        "irrelevance",
        "live_irrelevance",
    )
    if c in ALL_CATEGORIES
]


# ---------------------------------------------------------------------------------------------
# Perturbations
# ---------------------------------------------------------------------------------------------


def _props(entry: BfclEntry, name: str) -> dict[str, Any]:
    for fn in entry.functions:
        if fn["name"] == name:
            return fn["parameters"].get("properties", {})
    return {}


def _required(entry: BfclEntry, name: str) -> list[str]:
    for fn in entry.functions:
        if fn["name"] == name:
            return list(fn["parameters"].get("required", []))
    return []


def _with_arg(calls: list[ToolCall], i: int, arg: str, value: Any = ..., drop: bool = False) -> list[ToolCall]:
    out = [ToolCall(name=c.name, arguments=copy.deepcopy(c.arguments)) for c in calls]
    if drop:
        out[i].arguments.pop(arg, None)
    else:
        out[i].arguments[arg] = value
    return out


def _first_arg(calls: list[ToolCall], pred) -> tuple[int, str, Any] | None:
    for i, c in enumerate(calls):
        for k, v in c.arguments.items():
            if pred(v):
                return i, k, v
    return None


def _is_int(v: Any) -> bool:
    return type(v) is int


def _dummy(schema: dict[str, Any]) -> Any:
    t = schema.get("type")
    return {
        "integer": 987654,
        "float": 98765.4321,
        "number": 98765.4321,
        "boolean": True,
        "array": ["zz-unlikely"],
        "tuple": ["zz-unlikely"],
        "dict": {"zz_unlikely": 1},
        "object": {"zz_unlikely": 1},
    }.get(t, "zz unlikely value")


def _wrong_type(v: Any) -> Any:
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) in (int, float):
        return str(v)
    if type(v) is str:
        return [v]
    if type(v) is list:
        return ", ".join(map(str, v))
    if type(v) is dict:
        return json.dumps(v)
    return 0


def perturbations(entry: BfclEntry, seed: int = 0) -> Iterator[tuple[str, list[ToolCall] | None]]:
    """(kind, calls) pairs for one entry; ``None`` calls = an undecodable output."""
    yield "no_call", []
    yield "undecodable", None
    if entry.kind != "ast":
        # (ir)relevance: make calls to the offered functions
        for fn in entry.functions[:2]:
            props = fn["parameters"].get("properties", {})
            args = {r: _dummy(props.get(r, {})) for r in fn["parameters"].get("required", [])}
            yield f"call_{len(args)}_args", [ToolCall(name=fn["name"], arguments=args)]
            yield "call_no_args", [ToolCall(name=fn["name"], arguments={})]
        return
    base = answer_to_calls(entry.possible_answer, 0)
    yield "answer_first", base
    last = answer_to_calls(entry.possible_answer, -1)
    if last != base:
        yield "answer_last", last
    yield "wrong_name", [ToolCall(name=base[0].name + "_v2", arguments=base[0].arguments)] + base[1:]
    yield "extra_call", base + [base[0]]
    if len(base) > 1:
        yield "missing_call", base[:-1]
        yield "shuffled", list(reversed(base))
        rot = base[1:] + base[:1]
        if rot != list(reversed(base)):
            yield "rotated", rot
    yield "extra_unknown_arg", _with_arg(base, 0, "zz_not_a_param", 1)
    for i, c in enumerate(base):
        props = _props(entry, c.name)
        req = _required(entry, c.name)
        present_req = [r for r in req if r in c.arguments]
        if present_req:
            yield "drop_required", _with_arg(base, i, present_req[0], drop=True)
        optional = [k for k in c.arguments if k not in req]
        if optional:
            yield "drop_optional", _with_arg(base, i, optional[0], drop=True)
            yield "null_optional", _with_arg(base, i, optional[0], None)
        absent = [k for k in props if k not in c.arguments]
        if absent:
            yield "extra_schema_arg", _with_arg(base, i, absent[0], _dummy(props[absent[0]]))
            default = props[absent[0]].get("default", ...)
            if default is not ...:
                yield "explicit_default", _with_arg(base, i, absent[0], default)
        if i >= 1:
            break
    hit = _first_arg(base, lambda v: True)
    if hit:
        yield "wrong_type", _with_arg(base, hit[0], hit[1], _wrong_type(hit[2]))
    hit = _first_arg(base, _is_int)
    if hit:
        yield "int_to_float", _with_arg(base, hit[0], hit[1], float(hit[2]))
        if hit[2] in (0, 1):
            yield "int_to_bool", _with_arg(base, hit[0], hit[1], bool(hit[2]))
    hit = _first_arg(base, lambda v: type(v) is float)
    if hit:
        if float(hit[2]).is_integer():
            yield "float_to_int", _with_arg(base, hit[0], hit[1], int(hit[2]))
        yield "float_changed", _with_arg(base, hit[0], hit[1], hit[2] + 0.5)
    hit = _first_arg(base, lambda v: type(v) is bool)
    if hit:
        yield "bool_to_int", _with_arg(base, hit[0], hit[1], int(hit[2]))
        yield "bool_flipped", _with_arg(base, hit[0], hit[1], not hit[2])
    hit = _first_arg(base, lambda v: type(v) is str and v.strip())
    if hit:
        v = hit[2]
        yield "string_case_ws", _with_arg(base, hit[0], hit[1], "  " + v.swapcase().replace(" ", "  ") + " ")
        yield "string_changed", _with_arg(base, hit[0], hit[1], v + " extra")
        if " " in v.strip():
            yield "string_no_spaces", _with_arg(base, hit[0], hit[1], v.replace(" ", ""))
    hit = _first_arg(base, lambda v: type(v) is list and len(v) >= 2 and list(reversed(v)) != v)
    if hit:
        yield "list_reordered", _with_arg(base, hit[0], hit[1], list(reversed(hit[2])))
    hit = _first_arg(base, lambda v: type(v) is list and len(v) >= 1)
    if hit:
        yield "list_duplicate", _with_arg(base, hit[0], hit[1], hit[2] + hit[2][-1:])
        yield "list_truncated", _with_arg(base, hit[0], hit[1], hit[2][:-1])
        if all(type(x) is int for x in hit[2]):
            yield "list_int_to_float", _with_arg(base, hit[0], hit[1], [float(x) for x in hit[2]])
    hit = _first_arg(base, lambda v: type(v) is dict and v)
    if hit:
        key = next(iter(hit[2]))
        dropped = dict(hit[2])
        dropped.pop(key)
        yield "dict_drop_key", _with_arg(base, hit[0], hit[1], dropped)
        yield "dict_extra_key", _with_arg(base, hit[0], hit[1], {**hit[2], "zz_key": 1})
        yield "dict_wrong_value", _with_arg(base, hit[0], hit[1], {**hit[2], key: _wrong_type(hit[2][key])})


def model_outputs(entry: BfclEntry) -> Iterator[tuple[str, list[ToolCall] | None]]:
    """All outputs to score for one entry. Java/JavaScript outputs are the value-level
    perturbations rendered as source-literal strings (what BFCL asks those models for), plus
    literal-level perturbations and the unrendered Python values."""
    if entry.language == "python" or entry.kind != "ast":
        yield from perturbations(entry)
        return
    for kind, calls in perturbations(entry):
        if calls is None:
            yield kind, calls
        else:
            yield kind, [bfcl.render_arguments(c, entry.functions, entry.language) for c in calls]
    base = answer_to_calls(entry.possible_answer, 0)
    yield "unrendered_values", base
    rendered = entry.reference_calls()
    for i, (arg, text) in enumerate(rendered[0].arguments.items()):
        if i >= 3:
            break
        yield "literal_upper", _with_arg(rendered, 0, arg, text.upper())
        yield "literal_quoted", _with_arg(rendered, 0, arg, f'"{text}"')
        yield "literal_unsuffixed", _with_arg(rendered, 0, arg, text.rstrip("LlfFn"))
        yield "literal_spaced", _with_arg(rendered, 0, arg, text.replace(", ", ",").replace("{", "{ "))


# ---------------------------------------------------------------------------------------------
# Our checker vs the official one
# ---------------------------------------------------------------------------------------------


def _agreement(category: str):
    entries = bfcl.load_entries(category)
    counts: Counter[str] = Counter()
    disagreements = []
    for entry in entries:
        for kind, calls in model_outputs(entry):
            official, err = bfcl.official_check(entry, calls)
            ours, reason = ast_check.check(entry, calls)
            counts["outputs"] += 1
            counts["official_valid"] += official
            if official != ours:
                disagreements.append((entry.id, kind, official, err, ours, reason, calls))
            if kind == "answer_first":
                counts["answer_first_valid"] += official
    counts["entries"] = len(entries)
    return counts, disagreements


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_ast_checker_agrees_with_official(category):
    t0 = time.perf_counter()
    counts, disagreements = _agreement(category)
    print(
        f"\n[agreement] {category}: entries={counts['entries']} outputs={counts['outputs']} "
        f"official_valid={counts['official_valid']} answer_first_valid={counts['answer_first_valid']} "
        f"disagree={len(disagreements)} ({time.perf_counter() - t0:.1f}s)"
    )
    assert counts["entries"] > 0
    shown = "\n".join(repr(d)[:600] for d in disagreements[:5])
    assert not disagreements, f"{len(disagreements)} disagreements in {category}:\n{shown}"


# ---------------------------------------------------------------------------------------------
# The reward vs the official checker
# ---------------------------------------------------------------------------------------------

#: Why the reward may legitimately differ from BFCL (docs/reward.md, "Reward vs BFCL").
DOCUMENTED_DIFFERENCES = (
    "malformed_output_no_call_expected",  # reward: a broken <tool_call> is a format error; BFCL: "no call"
    "bfcl_punctuation_stripping",  # BFCL drops spaces and ,./-_*^ from strings; the reward keeps them
    "schema_defaults",  # reward: an omitted argument equals the schema default (rule 9); BFCL: no defaults
    "off_schema_answer",  # BFCL "variable" answer (type differs from the doc): numbers compared by value
    "bfcl_alternative_values",  # multi-valued answers only: BFCL accepts any listed alternative
    "bfcl_greedy_parallel_matching",  # BFCL's first-fit matching rejects a valid order; the reward does not
)


def _single_valued(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ([_single_valued(v[0])] if isinstance(v, list) and v else v) for k, v in value.items()}
    if isinstance(value, list):
        return [_single_valued(v) for v in value]
    return value


def single_valued_entry(entry: BfclEntry) -> BfclEntry:
    """The entry with every parameter's acceptable values cut to the first one (nested too):
    the BFCL semantics that coincide with one reference value per argument."""
    out = copy.copy(entry)
    out.possible_answer = [
        {name: {p: ([_single_valued(vals[0])] if vals else vals) for p, vals in params.items()}}
        for item in entry.possible_answer
        for name, params in item.items()
    ]
    return out


def _changed_arg(base: list[ToolCall], calls: list[ToolCall]) -> tuple[str, str] | None:
    for b, c in zip(base, calls, strict=False):
        for k in set(b.arguments) | set(c.arguments):
            if repr(b.arguments.get(k, ...)) != repr(c.arguments.get(k, ...)):  # type-aware: 2 vs 2.0
                return c.name, k
    return None


def _declared_type(entry: BfclEntry, fn: str, arg: str) -> str | None:
    return _props(entry, fn).get(arg, {}).get("type")


def classify_difference(entry: BfclEntry, kind: str, calls, official: bool, reward_ok: bool, reward_nodefaults_ok: bool) -> str | None:
    """None when the reward and BFCL agree, else the documented reason, else 'UNEXPLAINED'."""
    if reward_ok == official:
        return None
    if kind == "undecodable" and not entry.expects_call and official:
        return "malformed_output_no_call_expected"
    if kind == "string_no_spaces" and official:
        return "bfcl_punctuation_stripping"
    if reward_nodefaults_ok == official:
        return "schema_defaults"
    if kind in ("int_to_float", "float_to_int") and calls:
        changed = _changed_arg(answer_to_calls(entry.possible_answer, 0), calls)
        if changed and _declared_type(entry, *changed) not in ("integer", "float"):
            return "off_schema_answer"
    if reward_ok and not official and calls and 1 < len(calls) <= 6 and "parallel" in entry.category:
        if any(bfcl.official_check(entry, list(order))[0] for order in itertools.permutations(calls)):
            return "bfcl_greedy_parallel_matching"
    return "UNEXPLAINED"


_BROKEN = "<tool_call>\n{\"name\": \"oops\", \"arguments\": {\n"


def _reward_vs_official(category: str):
    no_defaults = RewardConfig(use_schema_defaults=False)
    counts: Counter[str] = Counter()
    unexplained = []
    for entry in bfcl.load_entries(category):
        single = single_valued_entry(entry)
        reference = answer_to_calls(entry.possible_answer, 0)
        for kind, calls in perturbations(single):
            response = _BROKEN if calls is None else render_tool_calls(calls)
            reward = score_response(response, reference, entry.tools)
            reward_nd = score_response(response, reference, entry.tools, no_defaults)
            counts["outputs"] += 1
            counts["reward_correct"] += reward.correct
            # 1) single-valued answers: the semantics coincide up to the documented differences
            official, _ = bfcl.official_check(single, calls)
            why = classify_difference(single, kind, calls, official, reward.correct, reward_nd.correct)
            counts[why or "agree"] += 1
            if why == "UNEXPLAINED":
                unexplained.append(("single", entry.id, kind, official, reward.reason, calls))
            # 2) the real (multi-valued) answers: whatever the reward accepts, BFCL accepts too,
            #    up to the same documented differences (BFCL may accept more: alternative values)
            official_multi, _ = bfcl.official_check(entry, calls)
            if reward.correct and not official_multi:
                why = classify_difference(entry, kind, calls, official_multi, True, reward_nd.correct)
                counts[f"multi:{why}"] += 1
                if why == "UNEXPLAINED":
                    unexplained.append(("multi", entry.id, kind, official_multi, reward.reason, calls))
            elif official_multi and not reward.correct:
                counts["multi:bfcl_accepts_more"] += 1
    return counts, unexplained


@pytest.mark.parametrize("category", REWARD_CATEGORIES)
def test_reward_agrees_with_official(category):
    t0 = time.perf_counter()
    counts, unexplained = _reward_vs_official(category)
    detail = " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k not in ("outputs",))
    print(f"\n[reward] {category}: outputs={counts['outputs']} {detail} ({time.perf_counter() - t0:.1f}s)")
    assert counts["outputs"] > 0
    assert counts["agree"] > 0, counts
    shown = "\n".join(repr(u)[:600] for u in unexplained[:5])
    assert not unexplained, f"{len(unexplained)} unexplained reward/BFCL differences in {category}:\n{shown}"


# ---------------------------------------------------------------------------------------------
# Loader, conversion and the official-checker wrapper
# ---------------------------------------------------------------------------------------------


def test_shipped_categories_and_aliases():
    for cat in ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple",
                "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance"):
        assert cat in ALL_CATEGORIES
    assert set(bfcl.BFCL_PYTHON_CATEGORIES) <= set(ALL_CATEGORIES)
    assert bfcl.load_entries("simple", limit=2)[0].category == "simple_python"
    with pytest.raises(ValueError, match="available"):
        bfcl.load_entries("multi_turn_base")


def test_entries_carry_raw_docs_tools_and_answers():
    entry = bfcl.load_entries("simple_python", limit=1)[0]
    assert entry.kind == "ast" and entry.expects_call and entry.language == "python"
    assert entry.functions[0]["parameters"]["type"] == "dict"  # raw BFCL doc, untouched
    tool = entry.tools[0]
    assert tool.parameters["type"] == "object" and tool.name == entry.functions[0]["name"]
    assert tool.description.endswith("Python 3 syntax.")
    assert entry.messages()[0].role == "user"
    assert entry.reference_calls()[0].name == tool.name
    assert bfcl.official_check(entry, entry.reference_calls()) == (True, None)
    irr = bfcl.load_entries("irrelevance", limit=1)[0]
    assert irr.kind == "irrelevance" and not irr.expects_call and irr.possible_answer == []


def test_bfcl_function_to_tool_normalises_types():
    fn = {
        "name": "math.hypot",
        "description": "d",
        "parameters": {
            "type": "dict",
            "properties": {
                "x": {"type": "float"},
                "pts": {"type": "tuple", "items": {"type": "integer"}},
                "opt": {"type": "dict", "properties": {"k": {"type": "any"}}},
            },
            "required": ["x"],
        },
    }
    raw = copy.deepcopy(fn)
    tool = bfcl.bfcl_function_to_tool(fn)
    assert fn == raw
    props = tool.parameters["properties"]
    assert props["x"]["type"] == "number" and props["pts"]["type"] == "array"
    assert props["pts"]["items"]["type"] == "integer" and props["opt"]["type"] == "object"
    assert "type" not in props["opt"]["properties"]["k"]
    assert tool.description == "d"
    java = bfcl.bfcl_function_to_tool({**fn, "parameters": {"type": "dict", "properties": {"n": {"type": "long"}}}},
                                      category="simple_java")
    assert java.parameters["properties"]["n"]["type"] == "string"
    assert "Java long type parameter in string representation" in java.parameters["properties"]["n"]["description"]


def test_official_check_relevance_rules():
    irr = bfcl.load_entries("irrelevance", limit=1)[0]
    fn = irr.functions[0]["name"]
    assert bfcl.official_check(irr, [])[0] and bfcl.official_check(irr, None)[0]
    assert not bfcl.official_check(irr, [ToolCall(name=fn, arguments={})])[0]
    rel = bfcl.load_entries("live_relevance", limit=1)[0]
    assert not bfcl.official_check(rel, [])[0]
    assert bfcl.official_check(rel, [ToolCall(name="anything", arguments={})])[0]
    for entry in (irr, rel):
        for calls in ([], None, [ToolCall(name=fn, arguments={})]):
            assert ast_check.check(entry, calls)[0] == bfcl.official_check(entry, calls)[0]


def test_java_and_javascript_reference_calls_are_source_literals():
    java = {e.id: e for e in bfcl.load_entries("simple_java")}["simple_java_1"]
    ref = java.reference_calls()[0]
    assert ref.arguments["useShortName"] == "true"
    assert ref.arguments["params"].startswith("new HashMap")
    assert bfcl.official_check(java, [ref])[0] and ast_check.check(java, [ref])[0]
    js = bfcl.load_entries("simple_javascript", limit=1)[0]
    assert all(isinstance(v, str) for v in js.reference_calls()[0].arguments.values())


def test_bfcl_string_standardisation():
    assert ast_check.bfcl_standardize("April 1, 2024") == ast_check.bfcl_standardize("april 1 2024")
    assert ast_check.bfcl_standardize("it's") == 'it"s'
    assert ast_check.bfcl_standardize("a\tb") != ast_check.bfcl_standardize("ab")  # only ASCII spaces go


_QUIRK_FN = {
    "name": "f",
    "description": "d",
    "parameters": {
        "type": "dict",
        "properties": {
            "xs": {"type": "array", "items": {"type": "integer"}},
            "fs": {"type": "array", "items": {"type": "float"}},
            "d": {"type": "dict", "properties": {"k": {"type": "integer"}}},
            "s": {"type": "string"},
            "n": {"type": "integer"},
            "x": {"type": "float"},
        },
        "required": [],
    },
}

# (quirk, possible answer for f, arguments, what BFCL's official checker says) — docs/reward.md
BFCL_QUIRKS = [
    ("bool items pass in an optional int list", {"xs": [[1, 2], ""]}, {"xs": [True, 2]}, True),
    ("bool items fail in a required int list", {"xs": [[1, 2]]}, {"xs": [True, 2]}, False),
    ("no int->float inside lists", {"fs": [[1.0, 2.0]]}, {"fs": [1, 2]}, False),
    ("int->float at top level", {"x": [2.0]}, {"x": 2}, True),
    ("float is not an integer", {"n": [2]}, {"n": 2.0}, False),
    ("True is not an integer", {"n": [1]}, {"n": True}, False),
    ("empty list matches the optional marker", {"xs": [[1, 2], ""]}, {"xs": []}, True),
    ("string answer compared as its characters", {"xs": [[1, 2], "ab"]}, {"xs": ["a", "b"]}, True),
    ("dict values are not type-checked", {"d": [{"k": [1]}]}, {"d": {"k": True}}, True),
    ("punctuation and spaces are dropped", {"s": ["New York"]}, {"s": "new-york"}, True),
    ("tabs are not dropped", {"s": ["New York"]}, {"s": "New\tYork"}, False),
    ("a dict whose only answer is '' cannot be given", {"d": [""]}, {"d": {}}, False),
    ("variable answer: compared exactly", {"n": ["x"]}, {"n": "X"}, False),
    ("variable answer: same value passes", {"n": ["x"]}, {"n": "x"}, True),
]


@pytest.mark.parametrize("quirk,answer,arguments,official_says", BFCL_QUIRKS, ids=[q[0] for q in BFCL_QUIRKS])
def test_documented_bfcl_quirks(quirk, answer, arguments, official_says):
    entry = BfclEntry(id="q", category="simple_python", question=[], functions=[_QUIRK_FN], tools=[],
                      possible_answer=[{"f": answer}])
    calls = [ToolCall(name="f", arguments=arguments)]
    assert bfcl.official_check(entry, calls)[0] is official_says
    assert ast_check.check(entry, calls)[0] is official_says


def test_greedy_parallel_matching_quirk():
    """BFCL matches parallel calls first-fit: a valid answer in another order can be rejected.
    Our checker does the same; the reward (exact multiset) accepts it."""
    entry = {e.id: e for e in bfcl.load_entries("parallel")}["parallel_178"]
    calls = list(reversed(answer_to_calls(entry.possible_answer, 0)))
    assert not bfcl.official_check(entry, calls)[0]
    assert not ast_check.check(entry, calls)[0]
    assert bfcl.official_check(entry, answer_to_calls(entry.possible_answer, 0))[0]
    assert score_response(render_tool_calls(calls), answer_to_calls(entry.possible_answer, 0), entry.tools).correct


def test_decode_like_bfcl():
    from looptool.shared.bfcl import decode_like_bfcl

    good = render_tool_calls([ToolCall(name="f", arguments={"a": 1})])
    assert decode_like_bfcl(good) == [ToolCall(name="f", arguments={"a": 1})]
    # text and undecodable blocks are ignored, like BFCL's Qwen FC handler
    assert decode_like_bfcl("Sure.\n<tool_call>\n{oops}\n</tool_call>\n" + good) == [ToolCall(name="f", arguments={"a": 1})]
    assert decode_like_bfcl("<think>" + good + "</think>\nno call") == []
    assert decode_like_bfcl('<tool_call>{"name": "f", "arguments": {}}</tool_call>') == []  # needs the newlines
    assert decode_like_bfcl('<tool_call>\n[1]\n</tool_call>') is None
    assert decode_like_bfcl('<tool_call>\n{"name": "f"}\n</tool_call>') is None
    entry = bfcl.load_entries("simple_python", limit=1)[0]
    text = render_tool_calls(entry.reference_calls())
    assert ast_check.check_response(entry, text)[0]
    assert ast_check.check_response(entry, "<think>x</think>" + text)[0]
