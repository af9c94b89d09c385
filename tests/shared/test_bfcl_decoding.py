"""Decoding parity with bfcl-eval: raw model text → calls, and Java/JavaScript literals → values.

Every row of the tables is decoded by our code and by bfcl-eval's own functions, called
directly: the Qwen FC handler (the handler for our ``<tool_call>`` JSON format) splits the raw
completion (``_parse_query_response_prompting``) and decodes it (``decode_ast`` for single-turn,
``decode_execute`` for multi-turn); the AST checker's ``java_type_converter`` /
``js_type_converter`` parse literals. Results are compared with their types (``1 == 1.0 == True``
in Python; here they differ); "raises" on their side must be "fails" on ours.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from looptool.shared import ast_check, bfcl

RAISED = "<raised>"


def typed(value: Any) -> Any:
    """A value with its types spelled out, so that 1, 1.0 and True compare different (and NaN equal)."""
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


@pytest.fixture(scope="module")
def handler():
    from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler

    return QwenFCHandler.__new__(QwenFCHandler)  # the decoders need no model or server state


def bfcl_answer(handler, raw: Any) -> Any:
    """What bfcl-eval stores for a raw completion (the text it later decodes)."""
    api_response = SimpleNamespace(choices=[SimpleNamespace(text=raw)], usage=SimpleNamespace(prompt_tokens=0, completion_tokens=0))
    return handler._parse_query_response_prompting(api_response)["model_responses"]


def theirs(fn, *args) -> Any:
    try:
        return typed(fn(*args))
    except Exception:  # noqa: BLE001 - any exception is BFCL's "decoder failed"
        return RAISED


CALL = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "g", "arguments": {"s": "x", "b": true, "n": null, "l": [1, 2.0]}}\n</tool_call>'

#: (label, raw completion)
OUTPUTS = [
    ("one call", CALL),
    ("two calls", CALL + "\n" + CALL2),
    ("adjacent blocks", CALL + CALL2),
    ("text around", "Sure, here you go.\n" + CALL + "\nLet me know."),
    ("plain text", "I cannot help with that."),
    ("empty", ""),
    ("reasoning then call", "<think>\nI should call f.\n</think>\n\n" + CALL),
    ("call inside reasoning", "<think>" + CALL + "</think>\nNo call after all."),
    ("unclosed reasoning keeps its call", "<think>\nhmm " + CALL),
    ("orphan </think>", "reasoning text</think>" + CALL),
    ("two </think>", "<think>a</think>" + CALL + "</think>\n" + CALL2),
    ("no newlines in block", '<tool_call>{"name": "f", "arguments": {}}</tool_call>'),
    ("CRLF block", '<tool_call>\r\n{"name": "f", "arguments": {}}\r\n</tool_call>'),
    ("blank lines in block", '<tool_call>\n\n{"name": "f", "arguments": {}}\n\n</tool_call>'),
    ("spaces around body", '<tool_call>\n   {"name": "f", "arguments": {}}   \n</tool_call>'),
    ("unclosed block", '<tool_call>\n{"name": "f", "arguments": {}}\n'),
    ("invalid JSON block skipped", "<tool_call>\n{oops}\n</tool_call>\n" + CALL),
    ("body is a list", "<tool_call>\n[1, 2]\n</tool_call>"),
    ("body is a string", '<tool_call>\n"f"\n</tool_call>'),
    ("name is an int", '<tool_call>\n{"name": 5, "arguments": {"a": 1}}\n</tool_call>'),
    ("name is null", '<tool_call>\n{"name": null, "arguments": {}}\n</tool_call>'),
    ("name is true", '<tool_call>\n{"name": true, "arguments": {}}\n</tool_call>'),
    ("name is a float", '<tool_call>\n{"name": 1.5, "arguments": {}}\n</tool_call>'),
    ("name is a list", '<tool_call>\n{"name": ["f"], "arguments": {}}\n</tool_call>'),
    ("name is an object", '<tool_call>\n{"name": {"f": 1}, "arguments": {}}\n</tool_call>'),
    ("name missing", '<tool_call>\n{"arguments": {}}\n</tool_call>'),
    ("arguments missing", '<tool_call>\n{"name": "f"}\n</tool_call>'),
    ("arguments as JSON string", '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>'),
    ("arguments as non-JSON string", '<tool_call>\n{"name": "f", "arguments": "a=1"}\n</tool_call>'),
    ("arguments as string of a list", '<tool_call>\n{"name": "f", "arguments": "[1]"}\n</tool_call>'),
    ("arguments a list", '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>'),
    ("arguments null", '<tool_call>\n{"name": "f", "arguments": null}\n</tool_call>'),
    ("extra keys ignored", '<tool_call>\n{"name": "f", "arguments": {}, "id": "c1"}\n</tool_call>'),
    ("one bad block among good", CALL + '\n<tool_call>\n{"name": "f", "arguments": 3}\n</tool_call>'),
    ("NaN and big numbers", '<tool_call>\n{"name": "f", "arguments": {"x": NaN, "y": 123456789012345678901234567890, "z": 1e400}}\n</tool_call>'),
    ("duplicate keys", '<tool_call>\n{"name": "f", "name": "g", "arguments": {"a": 1, "a": 2}}\n</tool_call>'),
    ("tags inside strings", '<tool_call>\n{"name": "f", "arguments": {"s": "</tool_call> <think>"}}\n</tool_call>'),
    ("unicode", '<tool_call>\n{"name": "f", "arguments": {"s": "caf\\u00e9 ☕"}}\n</tool_call>'),
    ("nested values", '<tool_call>\n{"name": "f", "arguments": {"d": {"k": [1, {"x": "y"}]}, "q": "it\'s"}}\n</tool_call>'),
]


def ours_ast(raw: str) -> Any:
    decoded = bfcl.decode_ast_like_bfcl(raw)
    return RAISED if decoded is None else typed(decoded)


def ours_execute(raw: str) -> Any:
    decoded = bfcl.decode_execute_like_bfcl(raw)
    return RAISED if decoded is None else typed(decoded)


@pytest.mark.parametrize("label,raw", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_decode_ast_matches_qwen_fc_handler(label, raw, handler):
    from bfcl_eval.constants.enums import ReturnFormat

    expected = theirs(lambda r: handler.decode_ast(bfcl_answer(handler, r), ReturnFormat.PYTHON, False), raw)
    assert ours_ast(raw) == expected


@pytest.mark.parametrize("label,raw", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_decode_execute_matches_qwen_fc_handler(label, raw, handler):
    expected = theirs(lambda r: handler.decode_execute(bfcl_answer(handler, r), False), raw)
    assert ours_execute(raw) == expected


@pytest.mark.parametrize("label,raw", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_reasoning_split_matches_qwen_fc_handler(label, raw, handler):
    api_response = SimpleNamespace(choices=[SimpleNamespace(text=raw)], usage=SimpleNamespace(prompt_tokens=0, completion_tokens=0))
    parsed = handler._parse_query_response_prompting(api_response)
    assert bfcl.bfcl_clean_response(raw) == (parsed["model_responses"], parsed["reasoning_content"])


def test_non_string_input():
    assert bfcl.decode_ast_like_bfcl(None) is None and bfcl.decode_execute_like_bfcl(b"x") is None


@pytest.mark.parametrize("label,raw", OUTPUTS, ids=[o[0] for o in OUTPUTS])
@pytest.mark.parametrize("category", ["simple_python", "irrelevance", "live_relevance", "parallel_multiple"])
def test_verdicts_on_unusual_outputs(label, raw, category, handler):
    """Our checker on the raw text = bfcl-eval's checker on its handler's decoding."""
    from bfcl_eval.constants.enums import ReturnFormat

    entry = bfcl.load_entries(category, limit=1)[0]
    try:
        decoded = handler.decode_ast(bfcl_answer(handler, raw), ReturnFormat.PYTHON, False)
    except Exception:  # noqa: BLE001 - the runner's "decoder failed"
        decoded = None
    assert ast_check.check_response(entry, raw)[0] == bfcl.official_check_decoded(entry, decoded)[0]


def test_decode_like_bfcl_keeps_a_non_string_name_as_a_call():
    calls = bfcl.decode_like_bfcl('<tool_call>\n{"name": 5, "arguments": {}}\n</tool_call>')
    assert calls is not None and [c.name for c in calls] == ["5"]
    irrelevance = bfcl.load_entries("irrelevance", limit=1)[0]
    assert not ast_check.check_response(irrelevance, '<tool_call>\n{"name": null, "arguments": {}}\n</tool_call>')[0]


# ---------------------------------------------------------------------------------------------
# Literals: Java and JavaScript parameter values arrive as source text
# ---------------------------------------------------------------------------------------------

_WS = ["", " ", "\n", "\t"]


def _dressed(texts: list[str]) -> list[str]:
    """Each literal bare and with whitespace before / after (BFCL's "$" matches before a final "\\n")."""
    return [pre + t + post for t in texts for pre, post in [("", "")] + [(w, "") for w in _WS[1:]] + [("", w) for w in _WS[1:]]]


JAVA_SCALARS = _dressed([
    "1", "-12", "007", "1L", "1l", "-5L", "12L", "1.0f", "1.5F", "3f", "1e3f", "2.5e-3F", "1.0", "1.5e2", "-0.25",
    "1.0d", "true", "false", "TRUE", "'a'", "a", '"str"', "null", "0x1F", "1_000", "١٢", "", "1 L",
])
JAVA_TYPES = ["byte", "short", "integer", "long", "float", "double", "boolean", "char", "String", "any"]
JAVA_COLLECTIONS = [
    ("Array", "integer", "new int[]{1, 2, 3}"),
    ("Array", "integer", "new int[] { 1 ,2 }"),
    ("Array", "long", "new long[]{1L, 2L}"),
    ("Array", "float", "new float[]{1.5f, 2f}"),
    ("Array", "String", 'new String[]{"a", "b"}'),
    ("Array", "boolean", "new boolean[]{true, false}"),
    ("Array", "integer", "new int[]{}"),
    ("Array", None, 'new Object[]{1, "abc", true, 2L, 1.5f, 2.5}'),
    ("Array", "integer", "{1, 2}"),
    ("ArrayList", "integer", "new ArrayList<>(Arrays.asList(1, 2))"),
    ("ArrayList", "String", 'new ArrayList<String>(Arrays.asList("a", "b, c"))'),
    ("ArrayList", "char", "new ArrayList<Character>(Arrays.asList('a', 'b'))"),
    ("ArrayList", "long", "new ArrayList<Long>(Arrays.asList(1L, 2L))"),
    ("ArrayList", None, 'new ArrayList<>(Arrays.asList(1, "x", false))'),
    ("ArrayList", "integer", "new ArrayList<Integer>() {{ add(1); add(2); }}"),
    ("ArrayList", "String", 'new ArrayList<String>() {{\n  add("a");\n  add("b");\n}}'),
    ("ArrayList", "integer", "new ArrayList<>()"),
    ("ArrayList", "integer", "Arrays.asList(1, 2)"),
    ("HashMap", None, 'new HashMap<String, Object>() {{ put("k", 1); put("s", "v"); put("b", true); put("l", 3L); }}'),
    ("HashMap", None, 'new HashMap<String, String>() {{\n put("a", "x");\n}}'),
    ("HashMap", None, "new HashMap<>()"),
    ("HashMap", None, "Map.of(\"a\", 1)"),
    ("Set", None, "new HashSet<>()"),
    ("Queue", None, "new LinkedList<>()"),
    ("Hashtable", None, "new Hashtable<>()"),
    ("NoSuchType", None, "1"),
]

JS_SCALARS = _dressed([
    "1", "-12", "1.5", "1e3", "5n", "-5n", "5", "true", "false", '"str"', "'str'", "'", '"', "str", "null",
    "undefined", "NaN", "", "1 n",
])
JS_TYPES = ["String", "integer", "float", "Bigint", "Boolean", "any"]
JS_COLLECTIONS = [
    ("array", "integer", "[1, 2, 3]"),
    ("array", "integer", " [1,2] "),
    ("array", "float", "[1.5, 2]"),
    ("array", "String", "['a', \"b\"]"),
    ("array", "String", "[a, b]"),
    ("array", "Bigint", "[1n, 2n]"),
    ("array", "Boolean", "[true, false]"),
    ("array", "integer", "new Array(4, 5)"),
    ("array", "integer", "[]"),
    ("array", None, "[1, 'two', true, 2.5]"),
    ("array", "array", "[[1, 2], [3, 4]]"),
    ("array", "array", " [ [ 1, 2 ], [ 3,   4]]"),
    ("array", "array", "new Array([1, 2], [3, 4])"),
    ("array", "dict", '[{"k": 1}, {"k": 2}]'),
    ("array", "integer", "not an array"),
    ("array", "integer", "[1, 2"),
    ("array", "NoSuchType", "[1, 2]"),
    ("dict", None, "{}"),
    ("dict", None, "{'a': 1, 'b': 'x', 'c': true}"),
    ("dict", None, '{"k": "42"}'),
    ("dict", None, "{a: [1, 2], b: {c: 1}}"),
    ("dict", None, "{ 'a': 1.5 , 'b' : [\"x\"] }"),
    ("dict", None, '{"initialState": initialStateObject, "middlewares": ["loggerMiddleware"]}'),
    ("dict", None, "{'a': 1,\n 'b': 2}"),
    ("dict", None, "not a dict"),
    ("dict", None, " {} "),
]


def ours_literal(fn, *args) -> Any:
    try:
        return typed(fn(*args))
    except Exception:  # noqa: BLE001 - our checker reports these as an invalid answer
        return RAISED


@pytest.mark.parametrize("jtype", JAVA_TYPES)
def test_java_scalars_parse_like_bfcl(jtype):
    from bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter import java_type_converter

    diffs = [(t, ours_literal(ast_check._java_value, t, jtype), theirs(java_type_converter, t, jtype)) for t in JAVA_SCALARS]
    assert [d for d in diffs if d[1] != d[2]] == []


@pytest.mark.parametrize("jtype,item,text", JAVA_COLLECTIONS)
def test_java_collections_parse_like_bfcl(jtype, item, text):
    from bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter import java_type_converter

    for dressed in _dressed([text]):
        assert ours_literal(ast_check._java_value, dressed, jtype, item) == theirs(java_type_converter, dressed, jtype, item), dressed


def test_java_untyped_elements_parse_like_bfcl():
    from bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter import parse_java_value

    texts = [t.strip() for t in JAVA_SCALARS]  # BFCL strips elements before this parser
    assert [t for t in texts if ours_literal(ast_check._java_scalar, t) != theirs(parse_java_value, t)] == []


@pytest.mark.parametrize("jstype", JS_TYPES)
def test_js_scalars_parse_like_bfcl(jstype):
    from bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter import js_type_converter

    diffs = [(t, ours_literal(ast_check._js_value, t, jstype), theirs(js_type_converter, t, jstype)) for t in JS_SCALARS]
    assert [d for d in diffs if d[1] != d[2]] == []


@pytest.mark.parametrize("jstype,item,text", JS_COLLECTIONS)
def test_js_collections_parse_like_bfcl(jstype, item, text):
    from bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter import js_type_converter

    for dressed in _dressed([text]):
        assert ours_literal(ast_check._js_value, dressed, jstype, item) == theirs(js_type_converter, dressed, jstype, item), dressed


def test_js_untyped_elements_parse_like_bfcl():
    from bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter import parse_js_value

    assert [t for t in JS_SCALARS if ours_literal(ast_check._js_scalar, t) != theirs(parse_js_value, t)] == []


def test_python_call_literals_round_trip_like_bfcl():
    """Multi-turn calls are executed as Python source (``name(k=repr(v))``); our text is BFCL's and
    evaluates back to the decoded values."""
    import ast

    from bfcl_eval.model_handler.utils import convert_to_function_call

    args = {"s": "it's \"q\"\n", "i": 10**30, "f": 1.0, "e": 1e-7, "b": False, "n": None, "l": [1, [2.5]], "d": {"k": "v"}}
    text = bfcl.bfcl_call_text("f", args)
    assert text == convert_to_function_call([{"f": args}])[0]
    node = ast.parse(text, mode="eval").body
    assert typed({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}) == typed(args)
