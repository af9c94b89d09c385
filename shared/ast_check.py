"""Our BFCL-style AST checker: ``check(entry, calls) -> (valid, reason)``.

Independent code that implements the semantics of bfcl-eval's official AST checker (see
``looptool.shared.bfcl.official_check``) and is tested to agree with it on every shipped entry
and on systematic perturbations of the answers (``tests/shared/test_bfcl_agreement.py``). Agreement is
the target, so BFCL's quirks are reproduced on purpose; each is marked ``QUIRK`` below and listed
in ``docs/reward.md``.

Possible-answer semantics (per expected call ``{name: {param: [acceptable values]}}``):

1. The model must name the function exactly.
2. Every parameter the function doc lists as ``required`` must be present.
3. Every parameter the model passes must exist in the doc *and* in the possible answer (a
   parameter of the doc that the answer does not list is "unexpected").
4. Type: the value must have the Python type of the doc's type (``string``→str, ``integer``→int,
   ``float``→float, ``boolean``→bool, ``array``/``tuple``→list, ``dict``→dict, ``any``→str;
   ``type(v) is T`` exactly, so ``True`` is not an ``integer``). An int passed for a ``float``
   parameter is converted to float first (Python only). When the acceptable values are of a
   different type than the doc's ("variable" answers, e.g. ``None`` or ``"x"`` for an integer),
   a value of the answers' type is accepted and then compared exactly.
   For ``array``/``tuple`` the items are type-checked against ``items.type`` (one level).
5. Value: strings are compared after BFCL's standardisation (remove spaces and ``,./-_*^``,
   lower-case, ``'``→``"``); lists element-wise in order, with top-level string elements
   standardised; dicts key by key against ``{key: [acceptable values]}`` (keys whose acceptable
   values contain ``""`` may be omitted); lists of dicts dict by dict; anything else with ``==``.
6. A parameter of the answer that the model omits must have ``""`` among its acceptable values.
7. Call counts: ``simple`` exactly one call; ``multiple`` as many calls as the answer (only the
   first is checked); ``parallel*`` as many calls as the answer, matched without order by BFCL's
   greedy first-fit (QUIRK: not a maximum bipartite matching).
8. ``irrelevance``: correct iff no call was decoded; ``live_relevance``: correct iff one was.

Java and JavaScript entries: values arrive as strings in Java/JS syntax and are converted back to
typed values before the same checks (``_java_value`` / ``_js_value``).
"""

from __future__ import annotations

import re
from typing import Any

from looptool.shared.bfcl import BfclEntry
from looptool.shared.records import ToolCall

# Python types BFCL maps its doc type names to (its checker compares ``type(v) == T``).
_PY_TYPE: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
_NESTED_TYPES = ("array", "tuple")

_JAVA_TYPE: dict[str, type] = {
    "byte": int,
    "short": int,
    "integer": int,
    "float": float,
    "double": float,
    "long": int,
    "boolean": bool,
    "char": str,
    "Array": list,
    "ArrayList": list,
    "Set": set,
    "HashMap": dict,
    "Hashtable": dict,
    "Queue": list,
    "Stack": list,
    "String": str,
    "any": str,
}
_JS_TYPE: dict[str, type] = {
    "String": str,
    "integer": int,
    "float": float,
    "Bigint": int,
    "Boolean": bool,
    "dict": dict,
    "array": list,
    "any": str,
}
_LANG_NESTED = ("Array", "ArrayList", "array")

_STRIP_CHARS = re.compile(r"[ ,./\-_*^]")


class _Reject(Exception):
    """A check failed; carries the reason."""


def bfcl_standardize(text: str) -> str:
    """BFCL's string standardisation: drop ASCII spaces and ``,./-_*^``, lower-case, ``'``→``"``.

    Only the ASCII space is removed (tabs/newlines stay), and ``str.lower`` is used, not casefold.
    """
    return _STRIP_CHARS.sub("", text).lower().replace("'", '"')


def _std(value: Any) -> Any:
    return bfcl_standardize(value) if type(value) is str else value


def _answer_type(acceptable: list[Any]) -> type | None:
    """The type of the first acceptable value that is not the optional marker ``""``."""
    for a in acceptable:
        if not (type(a) is str and a == ""):
            return type(a)
    return None


def _contains(seq: Any, value: Any) -> bool:
    """``value in seq`` with Python's semantics (identity or ``==``; so 1 == 1.0 == True)."""
    return value in seq


def _indexed(seq: Any) -> list[Any]:
    """``[seq[i] for i in range(len(seq))]``: how BFCL walks acceptable values. A string yields
    its characters, a dict raises KeyError, a number TypeError — as in BFCL."""
    return [seq[i] for i in range(len(seq))]


# ---------------------------------------------------------------------------------------------
# Type check
# ---------------------------------------------------------------------------------------------


def _item_type_ok(item: Any, acceptable_list: Any, item_type: type) -> bool:
    if type(item) is item_type:
        return True
    answer_type = _answer_type(acceptable_list)
    return answer_type is not None and type(item) is answer_type


def _type_check(value: Any, acceptable: list[Any], expected: type[Any], item_type: type | None) -> bool:
    """Return ``is_variable``; raise _Reject on a type error.

    ``is_variable`` means the acceptable values are of another type than the doc's: the value is
    then compared exactly (no string standardisation, no dict/list special handling).
    """
    answer_type = _answer_type(acceptable)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if item_type is None:
            return is_variable
        for answer in acceptable:
            # QUIRK: only list-typed acceptable values constrain the item types, so an optional
            # marker "" (or any non-list answer) among them lets any item types through.
            if type(answer) is not list or all(_item_type_ok(v, answer, item_type) for v in value):
                return is_variable
        raise _Reject(f"nested type check failed: items must be {item_type.__name__}")
    if answer_type is not None and type(value) is answer_type:
        return True
    raise _Reject(f"wrong type: expected {expected.__name__}, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Value checks
# ---------------------------------------------------------------------------------------------


def _check_string(value: str, acceptable: list[Any]) -> None:
    if bfcl_standardize(value) not in [bfcl_standardize(a) for a in acceptable if type(a) is str]:
        raise _Reject(f"string {value!r} not among {acceptable!r}")


def _std_sequence(answer: Any) -> list[Any]:
    # QUIRK: BFCL walks every acceptable value by index, so the optional marker "" becomes the
    # empty list (an empty list value then matches it) and a string answer becomes its characters.
    return [_std(x) for x in _indexed(answer)]


def _check_list(value: list[Any], acceptable: list[Any]) -> None:
    std_value = [_std(v) for v in value]
    if std_value not in [_std_sequence(a) for a in acceptable]:
        raise _Reject(f"list {value!r} not among {acceptable!r}")


def _dict_matches(value: dict[str, Any], answer: Any) -> bool:
    ok = True
    for key, item in value.items():
        if key not in answer:
            ok = False
            break
        std_options = [_std(a) for a in _indexed(answer[key])]
        if not _contains(std_options, _std(item)):
            ok = False
            break
    # as in BFCL the omitted-keys pass always runs (a non-dict answer raises here)
    for key, options in answer.items():
        if key not in value and "" not in options:
            ok = False
            break
    return ok


def _dict_among(value: dict[str, Any], acceptable: list[Any]) -> bool:
    # the optional marker "" is skipped: a dict never matches it (QUIRK: so a dict parameter whose
    # only acceptable value is "" can be omitted but never given, not even as {})
    return any(_dict_matches(value, answer) for answer in acceptable if not (type(answer) is str and answer == ""))


def _check_dict(value: dict[str, Any], acceptable: list[Any]) -> None:
    if not _dict_among(value, acceptable):
        raise _Reject(f"dict {value!r} not among {acceptable!r}")


def _check_list_of_dicts(value: list[Any], acceptable: list[Any]) -> None:
    for answer in acceptable:
        # QUIRK: len("") == 0, so an empty list matches the optional marker "".
        if len(value) != len(answer):
            continue
        if all(_dict_among(value[i], [answer[i]]) for i in range(len(value))):
            return
    raise _Reject(f"list of dicts {value!r} not among {acceptable!r}")


# ---------------------------------------------------------------------------------------------
# Java / JavaScript literals → values (BFCL asks the model for these as strings)
# ---------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^-?\d+$")


def _java_scalar(text: str) -> Any:
    """An untyped Java literal (collection element / map value)."""
    if text == "true":
        return True
    if text == "false":
        return False
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    if re.match(r"^-?\d+[lL]$", text):
        return int(text[:-1])
    if re.match(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]$", text):
        return float(re.sub(r"[fF]$", "", text))
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _java_value(text: str, jtype: str, item_type: str | None = None) -> Any:
    """Java source text → Python value for a doc type; text that does not parse stays a string."""
    if jtype in ("byte", "short", "integer"):
        return int(text) if _INT_RE.match(text) else text
    # QUIRK: "$" also matches before a final "\n", and the suffix is removed by a "$"-anchored
    # substitution, so "1.5f\n" and "7L\n" parse (float()/int() accept the newline), as in BFCL.
    if jtype == "float":
        m = re.match(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]$", text)
        return float(re.sub(r"[fF]$", "", text)) if m else text
    if jtype == "double":
        return float(text) if re.match(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$", text) else text
    if jtype == "long":
        return int(re.sub(r"[lL]$", "", text)) if re.match(r"^-?\d+[lL]$", text) else text
    if jtype == "boolean":
        return (text == "true") if text in ("true", "false") else text
    if jtype == "char":
        # QUIRK: BFCL's char pattern can never match, so a char is always kept as written.
        return text
    if jtype == "ArrayList":
        return _java_arraylist(text, item_type)
    if jtype == "Array":
        return _java_array(text, item_type)
    if jtype == "HashMap":
        return _java_hashmap(text)
    if jtype in ("String", "any"):
        return text
    raise _Reject(f"Java type {jtype!r} is not supported by the BFCL checker")


def _java_element(text: str, item_type: str | None) -> Any:
    if item_type in ("char", "String"):
        return text[1:-1]
    return _java_value(text, item_type) if item_type else _java_scalar(text)


def _java_arraylist(text: str, item_type: str | None) -> Any:
    m = re.search(r"new\s+ArrayList<\w*>\(Arrays\.asList\((.+?)\)\)", text)
    if m:
        # QUIRK: elements are split on every comma, also inside string literals.
        return [_java_element(part.strip(), item_type) for part in m.group(1).split(",")]
    m = re.search(r"new\s+ArrayList<\w*>\(\)\s*\{\{\s*(.+?)\s*\}\}", text, re.DOTALL)
    if m:
        return [_java_element(arg.strip(), item_type) for arg in re.findall(r"add\((.+?)\)", m.group(1))]
    if re.search(r"new\s+ArrayList<\w*>\(\)", text):
        return []
    return text


def _java_array(text: str, item_type: str | None) -> Any:
    m = re.search(r"new\s+\w+\[\]\s*\{(.*?)\}", text)
    if not m:
        return text
    parts = [p.strip() for p in m.group(1).split(",") if p.strip()]
    return [_java_value(p, item_type) if item_type else _java_scalar(p) for p in parts]


def _java_hashmap(text: str) -> Any:
    m = re.search(r"new\s+HashMap<.*?>\s*\(\)\s*\{\s*\{?\s*(.*?)\s*\}?\s*\}", text, re.DOTALL)
    if m:
        return {k: _java_scalar(v.strip()) for k, v in re.findall(r"put\(\"(.*?)\",\s*(.*?)\)", m.group(1))}
    if re.search(r"new\s+HashMap<.*?>\s*\(\)", text):
        return {}
    return text


def _js_scalar(text: str) -> Any:
    """An untyped JavaScript literal (array element / object value)."""
    text = text.strip()
    if text == "true":
        return True
    if text == "false":
        return False
    if _js_quoted(text):
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _js_quoted(text: str) -> bool:
    return (text.startswith('"') and text.endswith('"')) or (text.startswith("'") and text.endswith("'"))


def _js_value(text: str, jstype: str, item_type: str | None = None) -> Any:
    """JavaScript source text → Python value for a doc type; unparsable text stays a string."""
    if jstype == "String":
        return text[1:-1] if _js_quoted(text) else text
    if jstype == "integer":
        return int(text) if _INT_RE.match(text) else text
    if jstype == "float":
        return float(text) if re.match(r"^-?\d+(\.\d+)?$", text) else text
    if jstype == "Bigint":
        return int(text[:-1]) if re.match(r"^-?\d+n$", text) else text
    if jstype == "Boolean":
        return (text == "true") if text in ("true", "false") else text
    if jstype == "array":
        return _js_array(text.strip(), item_type)
    if jstype == "dict":
        return _js_object(text.strip())
    if jstype == "any":
        return text
    raise _Reject(f"JavaScript type {jstype!r} is not supported by the BFCL checker")


_JS_2D = re.compile(r"\[\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\]|\bnew\s+Array\(\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\)")
_JS_1D = re.compile(r"\[(.*?)\]|\bnew\s+Array\((.*?)\)")
# key: value pairs, a value running to the next ", key:" or the end (BFCL's pattern)
_JS_PAIR = re.compile(r"([^:]+):\s*(.*?)(?:,\s*(?=[^,]+:)|$)")


def _js_array(code: str, item_type: str | None) -> Any:
    try:
        nested = _JS_2D.match(code)
        if nested:
            # QUIRK: rows are cut at the first "]" and split on every comma; elements untyped
            rows = []
            for i, inner in enumerate(re.findall(r"\[(.*?)\]", nested.group(0))):
                inner = inner.strip()
                if i == 0 and inner.startswith("["):
                    inner = inner[1:]
                rows.append([_js_scalar(e.strip()) for e in inner.split(",")])
            return rows
        flat = _JS_1D.match(code)
        if not flat:
            return code
        body = flat.group(1) if flat.group(1) is not None else flat.group(2)
        body = body.strip() if body is not None else ""
        parts = body.split(",") if body else []
        if item_type:
            # a quoted element is read as a String whatever the declared item type
            return [
                _js_value(p.strip(), item_type, "String" if _js_quoted_start(p.strip()) else None) for p in parts
            ]
        return [_js_scalar(p.strip()) for p in parts]
    except Exception:  # noqa: BLE001 - as in BFCL, anything unparsable stays the original text
        return code


def _js_quoted_start(text: str) -> bool:
    return text.startswith("'") or text.startswith('"')


def _js_object(code: str) -> Any:
    if code == "{}":
        return {}
    m = re.match(r"\{(.*?)\}", code)  # QUIRK: stops at the first "}", so nested objects break
    if not m:
        return code
    try:
        out: dict[str, Any] = {}
        for key, val in _JS_PAIR.findall(m.group(1)):
            key = key.strip().strip("'\"")
            val = val.strip()
            if val.startswith("[") and val.endswith("]"):
                out[key] = _js_array(val, None)
            elif val.startswith("{") and val.endswith("}"):
                out[key] = _js_object(val)
            else:
                # QUIRK: quotes are stripped before typing, so '"42"' becomes the number 42
                out[key] = _js_scalar(val.strip("'\""))
        return out
    except Exception:  # noqa: BLE001
        return code


# ---------------------------------------------------------------------------------------------
# One call against one possible answer
# ---------------------------------------------------------------------------------------------


def _check_call(doc: dict[str, Any] | None, call: dict[str, dict[str, Any]], answer: dict[str, dict[str, list[Any]]], language: str) -> None:
    """Raise _Reject when ``call`` (``{name: args}``) does not satisfy ``answer`` for ``doc``."""
    if doc is None:
        raise _Reject("the expected function is not among the entry's functions")
    acceptable_by_param = next(iter(answer.values()))
    name = doc["name"]
    if name not in call:
        raise _Reject(f"wrong function: expected {name!r}, got {list(call)!r}")
    args = call[name]
    properties = doc["parameters"]["properties"]
    for required in doc["parameters"].get("required", []):
        if required not in args:
            raise _Reject(f"missing required parameter {required!r}")
    for param, value in args.items():
        if param not in properties or param not in acceptable_by_param:
            raise _Reject(f"unexpected parameter {param!r}")
        acceptable = acceptable_by_param[param]
        ptype = properties[param]["type"]
        item_type: type | None = None
        if language == "python":
            if ptype not in _PY_TYPE:
                raise _Reject(f"unsupported parameter type {ptype!r}")
            expected = _PY_TYPE[ptype]
            if ptype in _NESTED_TYPES:
                item_type = _PY_TYPE[properties[param]["items"]["type"]]
            if ptype == "float" and type(value) is int:
                value = float(value)
        else:
            table = _JAVA_TYPE if language == "java" else _JS_TYPE
            if ptype not in table:
                raise _Reject(f"unsupported parameter type {ptype!r}")
            expected = table[ptype]
            if type(value) is not str:
                raise _Reject(f"{language} values must be strings, got {type(value).__name__}")
            items_name = properties[param]["items"]["type"] if ptype in _LANG_NESTED else None
            if items_name is not None:
                item_type = table[items_name]
            if language == "java":
                value = _java_value(value, ptype, items_name)
            else:
                value = _js_value(value, ptype, items_name)

        is_variable = _type_check(value, acceptable, expected, item_type)
        if not is_variable:
            if expected is dict:
                _check_dict(value, acceptable)
                continue
            if expected is list and item_type is dict:
                _check_list_of_dicts(value, acceptable)
                continue
            if expected is str:
                _check_string(value, acceptable)
                continue
            if expected is list:
                _check_list(value, acceptable)
                continue
        if not _contains(acceptable, value):
            raise _Reject(f"value {value!r} for {param!r} not among {acceptable!r}")
    for param, acceptable in acceptable_by_param.items():
        if param not in args and "" not in acceptable:
            raise _Reject(f"parameter {param!r} omitted but not optional")


def _find_doc(functions: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for fn in functions:
        if fn["name"] == name:
            return fn
    return None


def check_decoded(
    functions: list[dict[str, Any]],
    decoded: list[dict[str, dict[str, Any]]],
    possible_answer: list[dict[str, dict[str, list[Any]]]],
    category: str,
    language: str = "python",
) -> tuple[bool, str]:
    """Check BFCL-decoded calls ``[{name: args}]`` against possible answers for a call category."""
    try:
        if "parallel" in category:
            if len(decoded) != len(possible_answer):
                raise _Reject(f"expected {len(possible_answer)} calls, got {len(decoded)}")
            used: set[int] = set()
            for i, answer in enumerate(possible_answer):
                doc = _find_doc(functions, next(iter(answer)))
                last = ""
                for j, call in enumerate(decoded):
                    if j in used:
                        continue
                    try:
                        _check_call(doc, call, answer, language)
                    except _Reject as exc:
                        last = str(exc)
                        continue
                    used.add(j)
                    break
                else:
                    raise _Reject(f"no call matches expected call {i} ({next(iter(answer))}): {last}")
            return True, "ok"
        if "multiple" in category:
            if len(decoded) != len(possible_answer):
                raise _Reject(f"expected {len(possible_answer)} calls, got {len(decoded)}")
            _check_call(_find_doc(functions, next(iter(possible_answer[0]))), decoded[0], possible_answer[0], language)
            return True, "ok"
        if len(decoded) != 1:
            raise _Reject(f"expected 1 call, got {len(decoded)}")
        # as in BFCL, a simple entry is checked against its first (only) function doc
        _check_call(functions[0], decoded[0], possible_answer[0], language)
        return True, "ok"
    except _Reject as exc:
        return False, str(exc)
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as exc:
        # Malformed data/answers: BFCL's checker raises on these too; an invalid output here.
        return False, f"checker error: {type(exc).__name__}: {exc}"


def check(entry: BfclEntry, calls: list[ToolCall] | None) -> tuple[bool, str]:
    """Check a model's decoded calls for one BFCL entry.

    ``calls`` is ``[]`` for a text answer and ``None`` when the output could not be decoded.
    """
    return check_decoded_output(entry, None if calls is None else [{c.name: dict(c.arguments)} for c in calls])


def check_decoded_output(entry: BfclEntry, decoded: list[dict[Any, dict[str, Any]]] | None) -> tuple[bool, str]:
    """Check BFCL's decoded form of a response (``[{name: args}]``, ``None`` = decoder failed)
    for one entry. Names are compared as decoded: a non-string name matches no function but is
    still a call (BFCL's ``is_empty_output`` only looks at the list)."""
    if entry.kind == "irrelevance":
        if decoded:
            return False, f"expected no call, got {len(decoded)}"
        return True, "ok: no call"
    if entry.kind == "relevance":
        if decoded:
            return True, "ok: a call was made"
        return False, "expected a call, got none"
    if decoded is None:
        return False, "output could not be decoded"
    return check_decoded(entry.functions, decoded, entry.possible_answer, entry.category, entry.language)


def check_response(entry: BfclEntry, response: str) -> tuple[bool, str]:
    """Check a raw model response, decoded exactly the way BFCL decodes Qwen FC output."""
    from looptool.shared.bfcl import decode_ast_like_bfcl

    return check_decoded_output(entry, decode_ast_like_bfcl(response))


__all__ = ["bfcl_standardize", "check", "check_decoded", "check_decoded_output", "check_response"]
