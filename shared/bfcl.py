"""BFCL data shipped in ``bfcl-eval``: loading, conversion to our records, and the official checker.

What lives here:

- :data:`BFCL_AST_CATEGORIES` — the single-turn BFCL categories that are scored statically (AST
  comparison for call categories, "decoded a call or not" for (ir)relevance), restricted to the
  files the installed ``bfcl-eval`` actually ships. BFCL v4 renamed ``simple`` to
  ``simple_python``; :func:`resolve_category` accepts the old name.
- :func:`load_entries` — reads ``bfcl_eval/data/BFCL_v4_<category>.json`` and the matching
  ``possible_answer`` file (JSON lines) into :class:`BfclEntry` values. Only the data files are
  read; the heavy ``bfcl_eval`` modules are imported lazily by :func:`official_check`.
- :func:`bfcl_function_to_tool` — a BFCL function doc → our :class:`~looptool.shared.records.Tool`
  (schema kept, BFCL's Python-ish type names normalised to JSON Schema by
  :func:`~looptool.shared.schema.normalize_schema`). The untouched doc stays in
  :attr:`BfclEntry.functions`, which is what the official checker receives.
- :func:`official_check` — runs bfcl-eval's own ``ast_checker`` exactly the way its eval runner
  does for a function-calling ("FC") model whose output is ``<tool_call>`` JSON (Qwen FC handler):
  the decoded calls become ``[{name: {arg: value}}]``; relevance categories use bfcl's
  ``is_empty_output`` rule ("a call was decoded or not").

How bfcl-eval's runner (``bfcl_eval/eval_checker/eval_runner.py``) scores one entry, which
:func:`official_check` reproduces:

- AST categories: ``decoded = handler.decode_ast(raw)`` (for Qwen FC:
  ``[{call["name"]: call["arguments"]} for each <tool_call> block]``); a decode exception → invalid;
  ``is_function_calling_format_output(decoded)`` must hold; then
  ``ast_checker(prompt_entry["function"], decoded, ground_truth, language, test_category,
  model_name)``. ``prompt_entry`` is loaded with ``include_language_specific_hint=False``, so the
  checker sees the raw function docs (Java/JS types *not* rewritten to ``string``).
- ``irrelevance`` / ``live_irrelevance``: correct iff decoding fails or ``is_empty_output(decoded)``.
- ``live_relevance``: correct iff decoding succeeds and the output is not empty.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from looptool.shared.records import Message, Tool, ToolCall
from looptool.shared.schema import normalize_schema

#: The Qwen FC model key used for ``ast_checker``'s ``model_name`` argument. It only matters for
#: function names containing "." (``underscore_to_dot``), which is False for Qwen FC: names are
#: compared as written, exactly like our ``<tool_call>`` format carries them.
OFFICIAL_MODEL_NAME = "Qwen/Qwen3-8B-FC"

_VERSION_PREFIX = "BFCL_v4"

#: Every static (single-turn, no execution) category we know, in BFCL's order. Filtered below to
#: what the installed bfcl-eval ships.
_KNOWN_STATIC_CATEGORIES = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)

_ALIASES = {"simple": "simple_python", "java": "simple_java", "javascript": "simple_javascript"}


def data_dir() -> Path:
    """The ``bfcl_eval/data`` directory of the installed bfcl-eval (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("bfcl-eval is not installed; install the `bfcl` extra: `pip install -c locks/cpu.txt 'looptool[bfcl]'`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _question_path(category: str) -> Path:
    return data_dir() / f"{_VERSION_PREFIX}_{category}.json"


def _answer_path(category: str) -> Path:
    return data_dir() / "possible_answer" / f"{_VERSION_PREFIX}_{category}.json"


def is_irrelevance(category: str) -> bool:
    return "irrelevance" in category


def is_relevance(category: str) -> bool:
    return "relevance" in category and not is_irrelevance(category)


def language_of(category: str) -> str:
    """'python', 'java' or 'javascript' — the same test BFCL uses (``is_java`` / ``is_js``)."""
    if "javascript" in category:
        return "javascript"
    if "java" in category:
        return "java"
    return "python"


def _shipped(category: str) -> bool:
    try:
        if not _question_path(category).exists():
            return False
    except RuntimeError:
        return False
    # call categories need their possible answers; (ir)relevance have none
    return is_irrelevance(category) or is_relevance(category) or _answer_path(category).exists()


#: The static BFCL categories shipped by the installed bfcl-eval (AST-scored call categories plus
#: the irrelevance/relevance categories, which the runner scores by "decoded a call or not").
BFCL_AST_CATEGORIES: tuple[str, ...] = tuple(c for c in _KNOWN_STATIC_CATEGORIES if _shipped(c))

#: The subset in Python syntax (the categories the reward/agreement tests always cover).
BFCL_PYTHON_CATEGORIES: tuple[str, ...] = tuple(c for c in BFCL_AST_CATEGORIES if language_of(c) == "python")


def resolve_category(category: str) -> str:
    name = _ALIASES.get(category, category)
    if name not in BFCL_AST_CATEGORIES:
        raise ValueError(
            f"unknown or unshipped BFCL category {category!r}; available: {', '.join(BFCL_AST_CATEGORIES)}"
        )
    return name


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------

_LANGUAGE_HINT = {
    "python": " Note that the provided function is in Python 3 syntax.",
    "java": " Note that the provided function is in Java 8 SDK syntax.",
    "javascript": " Note that the provided function is in JavaScript syntax.",
}


def _language_prompt_doc(fn: dict[str, Any], language: str) -> dict[str, Any]:
    """What BFCL shows the model at inference time (``include_language_specific_hint=True``).

    Java/JavaScript parameters are presented as strings (the model writes Java/JS literals as
    strings and the checker converts them back); their real type goes into the description.
    """
    fn = copy.deepcopy(fn)
    fn["description"] = fn.get("description", "") + _LANGUAGE_HINT[language]
    if language == "python":
        return fn
    lang_name = "Java" if language == "java" else "JavaScript"
    for value in fn.get("parameters", {}).get("properties", {}).values():
        ptype = value.get("type")
        desc = value.get("description", "")
        if ptype == "any":
            desc += f" This parameter can be of any type of {lang_name} object in string representation."
        else:
            desc += f" This is {lang_name} {ptype} type parameter in string representation."
        if (language == "java" and ptype in ("ArrayList", "Array")) or (language == "javascript" and ptype == "array"):
            if "items" in value:
                desc += f" The list elements are of type {value['items'].get('type')}; they are not in string representation."
                value.pop("items")
        if language == "javascript" and ptype == "dict" and "properties" in value:
            desc += (
                " The dictionary entries have the following schema; they are not in string representation. "
                + json.dumps(value["properties"])
            )
            value.pop("properties")
        value["description"] = desc
        value["type"] = "string"
    return fn


def bfcl_function_to_tool(fn: dict[str, Any], category: str | None = None, language_hint: bool = True) -> Tool:
    """Convert one BFCL function doc into our Tool record.

    The schema is kept (descriptions, enums, defaults, required) and its BFCL type names
    (``dict``, ``float``, ``tuple``, ``any``, Java/JS names) are normalised to JSON Schema via
    :func:`normalize_schema`; the top level becomes ``{"type": "object", ...}``. ``fn`` is not
    modified: the raw doc is what :func:`official_check` passes to bfcl's checker.

    With ``category`` given, the doc is first rendered the way BFCL prompts a model for that
    category (the language hint appended to the description when ``language_hint``; for Java and
    JavaScript every parameter presented as a string, as BFCL does).
    """
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"not a BFCL function doc: {fn!r:.200}")
    doc = copy.deepcopy(fn)
    if category is not None:
        language = language_of(category)
        if language != "python" or language_hint:
            doc = _language_prompt_doc(doc, language)
            if not language_hint:
                doc["description"] = fn.get("description", "")
    params = normalize_schema(doc.get("parameters") or {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise ValueError(f"function {fn['name']!r}: parameters must be an object schema")
    params["type"] = "object"
    params.setdefault("properties", {})
    return Tool(name=doc["name"], description=doc.get("description", "") or "", parameters=params)


@dataclass
class BfclEntry:
    """One BFCL test entry.

    ``functions`` holds the raw BFCL docs (what the official checker sees); ``tools`` the same
    functions as our Tool records (as the model is prompted). ``possible_answer`` is BFCL's
    ground truth: a list of ``{function_name: {param: [acceptable values...]}}``, one per expected
    call, where ``""`` among the acceptable values means "may be omitted"; empty for
    (ir)relevance entries.
    """

    id: str
    category: str
    question: list[list[dict[str, Any]]]
    functions: list[dict[str, Any]]
    tools: list[Tool]
    possible_answer: list[dict[str, dict[str, list[Any]]]] = field(default_factory=list)

    @property
    def language(self) -> str:
        return language_of(self.category)

    @property
    def expects_call(self) -> bool:
        """False for irrelevance entries (the right answer is no call)."""
        return not is_irrelevance(self.category)

    @property
    def kind(self) -> str:
        """'ast' (compared against possible answers), 'irrelevance' or 'relevance'."""
        if is_irrelevance(self.category):
            return "irrelevance"
        if is_relevance(self.category):
            return "relevance"
        return "ast"

    def messages(self) -> list[Message]:
        """The (single-turn) question as our Message records, turns flattened in order."""
        out: list[Message] = []
        for turn in self.question:
            for m in turn:
                out.append(Message(role=m["role"], content=m.get("content") or ""))
        return out

    def reference_calls(self, choice: int = 0) -> list[ToolCall]:
        """Reference calls built from the possible answers (see :func:`answer_to_calls`); for
        Java/JavaScript entries the values are the source-literal strings BFCL expects."""
        return answer_to_calls(self.possible_answer, choice=choice, functions=self.functions, language=self.language)


def pick_answer_value(values: list[Any], choice: int = 0) -> tuple[bool, Any]:
    """Choose one acceptable value: ``(present, value)``; ``present`` is False when the chosen
    acceptable value is ``""`` (BFCL's "omit this parameter"). ``choice`` indexes the list
    (clamped; -1 = last). Dict values (BFCL nests ``{key: [acceptable...]}`` inside dict params)
    are resolved recursively with the first acceptable value of each key."""
    if not values:
        return False, None
    idx = max(-len(values), min(choice, len(values) - 1))
    value = values[idx]
    if isinstance(value, str) and value == "":
        return False, None
    return True, _resolve_nested(value)


def _resolve_nested(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, list):
                present, chosen = pick_answer_value(v, 0)
                if present:
                    out[k] = chosen
            else:
                out[k] = v
        return out
    if isinstance(value, list):
        return [_resolve_nested(v) if isinstance(v, dict) else v for v in value]
    return value


def answer_to_calls(
    possible_answer: list[dict[str, dict[str, list[Any]]]],
    choice: int = 0,
    functions: list[dict[str, Any]] | None = None,
    language: str = "python",
) -> list[ToolCall]:
    """BFCL possible answers → one concrete list of calls.

    For each parameter the acceptable value at index ``choice`` is used (``0`` = the first);
    ``""`` means the parameter is omitted. For dict parameters, whose possible answer nests
    ``{key: [acceptable values]}``, each key takes its first acceptable value.

    For Java/JavaScript (``language`` with the entry's ``functions``) the values are rendered as
    the source-literal strings BFCL expects from a model (:func:`render_arguments`).
    """
    calls = []
    for item in possible_answer:
        ((name, params),) = item.items()
        args = {}
        for pname, values in params.items():
            present, value = pick_answer_value(values, choice)
            if present:
                args[pname] = value
        call = ToolCall(name=name, arguments=args)
        if language != "python" and functions is not None:
            call = render_arguments(call, functions, language)
        calls.append(call)
    return calls


# ---------------------------------------------------------------------------------------------
# Java / JavaScript literals (BFCL prompts Java/JS parameters as strings holding source literals)
# ---------------------------------------------------------------------------------------------

_JAVA_ARRAY_ELEMENT = {"integer": "int", "long": "long", "double": "double", "float": "float", "boolean": "boolean",
                       "char": "char", "byte": "byte", "short": "short"}


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value) if not isinstance(value, str) else value


def _java_untyped(value: Any) -> str:
    """A Java literal read back by BFCL's untyped parser (collection elements, map values)."""
    if isinstance(value, str):
        return '"' + value + '"'
    return _scalar_text(value)


def render_java_literal(value: Any, jtype: str | None, item_type: str | None = None) -> str:
    """A Python value → the Java source text BFCL's checker converts back to that value."""
    if isinstance(value, str):
        return value
    if jtype == "long" and type(value) is int:
        return f"{value}L"
    if jtype == "float" and type(value) in (int, float):
        return f"{float(value)!r}f"
    if jtype == "double" and type(value) in (int, float):
        return repr(float(value))
    if jtype == "Array" and isinstance(value, list):
        elements = ", ".join(render_java_literal(v, item_type) if item_type else _java_untyped(v) for v in value)
        element_type = _JAVA_ARRAY_ELEMENT.get(item_type or "", "String" if item_type == "String" else "Object")
        return f"new {element_type}[]{{{elements}}}"
    if jtype == "ArrayList" and isinstance(value, list):
        if not value:
            return "new ArrayList<>()"
        if item_type in ("String", "char"):
            q = '"' if item_type == "String" else "'"
            elements = ", ".join(q + _scalar_text(v) + q for v in value)
        else:
            elements = ", ".join(render_java_literal(v, item_type) for v in value)
        return f"new ArrayList<>(Arrays.asList({elements}))"
    if jtype == "HashMap" and isinstance(value, dict):
        if not value:
            return "new HashMap<>()"
        puts = " ".join(f'put("{k}", {_java_untyped(v)});' for k, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return _scalar_text(value) if not isinstance(value, (list, dict)) else json.dumps(value)


def _js_number(value: float) -> str:
    text = repr(float(value))
    if "e" in text or "inf" in text or "nan" in text:
        text = f"{value:.20f}".rstrip("0").rstrip(".")
    return text


def _js_untyped(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_js_untyped(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_js_untyped(v)}" for k, v in value.items()) + "}"
    if type(value) is float:
        return _js_number(value)
    return _scalar_text(value)


def render_js_literal(value: Any, jstype: str | None, item_type: str | None = None) -> str:
    """A Python value → the JavaScript source text BFCL's checker converts back to that value."""
    if isinstance(value, str):
        return value
    if jstype == "float" and type(value) in (int, float):
        return _js_number(value)
    if jstype == "Bigint" and type(value) is int:
        return f"{value}n"
    if jstype in ("array", "dict") and isinstance(value, (list, dict)):
        return _js_untyped(value)
    return _scalar_text(value) if not isinstance(value, (list, dict)) else _js_untyped(value)


def render_arguments(call: ToolCall, functions: list[dict[str, Any]], language: str) -> ToolCall:
    """Render every argument of ``call`` as a Java/JS source-literal string for its doc type."""
    if language == "python":
        return call
    doc = next((f for f in functions if f.get("name") == call.name), None)
    props = doc.get("parameters", {}).get("properties", {}) if doc else {}
    render = render_java_literal if language == "java" else render_js_literal
    args = {}
    for name, value in call.arguments.items():
        spec = props.get(name, {})
        item_type = (spec.get("items") or {}).get("type") if isinstance(spec, dict) else None
        args[name] = render(value, spec.get("type") if isinstance(spec, dict) else None, item_type)
    return ToolCall(name=call.name, arguments=args)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


@lru_cache(maxsize=None)
def _load_raw(category: str) -> tuple[tuple[str, str], ...]:
    """(question line, answer line) JSON strings, cached; entries are rebuilt fresh per call."""
    questions = _read_jsonl(_question_path(category))
    answers: dict[str, Any] = {}
    if _answer_path(category).exists():
        answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(_answer_path(category))}
    if not (is_irrelevance(category) or is_relevance(category)):
        missing = [q["id"] for q in questions if q["id"] not in answers]
        if missing:
            raise ValueError(f"BFCL {category}: {len(missing)} entries lack a possible answer (first: {missing[0]})")
    return tuple((json.dumps(q), json.dumps(answers.get(q["id"], []))) for q in questions)


def load_entries(category: str, limit: int | None = None) -> list[BfclEntry]:
    """Load one BFCL category (``simple`` is accepted for ``simple_python``)."""
    cat = resolve_category(category)
    out = []
    for q_text, a_text in _load_raw(cat)[:limit]:
        q = json.loads(q_text)
        functions = q["function"]
        out.append(
            BfclEntry(
                id=q["id"],
                category=cat,
                question=q["question"],
                functions=functions,
                tools=[bfcl_function_to_tool(fn, category=cat) for fn in functions],
                possible_answer=json.loads(a_text),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# The official checker
# ---------------------------------------------------------------------------------------------


_BFCL_TOOL_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


def bfcl_clean_response(response: str) -> tuple[str, str]:
    """``(answer, reasoning)``: how bfcl-eval's Qwen FC handler splits a raw completion
    (``_parse_query_response_prompting``). Everything after the *last* ``</think>`` (leading newlines
    dropped) is the answer BFCL stores and scores; the reasoning is the text between the first
    ``</think>``'s preceding ``<think>`` and it. No ``</think>``: the whole text is the answer (an
    unclosed ``<think>`` is not removed). Idempotent on its answer."""
    if "</think>" not in response:
        return response, ""
    parts = response.split("</think>")
    return parts[-1].lstrip("\n"), parts[0].rstrip("\n").split("<think>")[-1].lstrip("\n")


def bfcl_extract_tool_calls(text: str) -> list[Any]:
    """Every ``<tool_call>\n…\n</tool_call>`` body (the newlines are part of the pattern) that is
    JSON, parsed; other blocks are skipped silently (Qwen FC's ``_extract_tool_calls``)."""
    out = []
    for body in _BFCL_TOOL_CALL.findall(text):
        try:
            out.append(json.loads(body))
        except Exception:  # noqa: BLE001 - BFCL skips undecodable blocks
            continue
    return out


def decode_ast_like_bfcl(response: Any) -> list[dict[Any, dict[str, Any]]] | None:
    """A raw response decoded exactly as bfcl-eval's Qwen FC ``decode_ast`` does, after the
    handler's reasoning split: ``[{name: {arg: value}}]``, or ``None`` where BFCL's decoder raises
    (a JSON body that is not an object, a missing ``name``/``arguments``, arguments that are not an
    object, an unhashable name). The name is kept as decoded: BFCL accepts a non-string name
    (``5``, ``null``), which then matches no function but still counts as "a call"."""
    if not isinstance(response, str):
        return None
    bodies = bfcl_extract_tool_calls(bfcl_clean_response(response)[0])
    if any(type(b) is not dict for b in bodies):
        return None
    try:
        return [{b["name"]: {k: v for k, v in b["arguments"].items()}} for b in bodies]
    except Exception:  # noqa: BLE001 - BFCL's decode_ast raises here → "decoder failed"
        return None


def bfcl_call_text(name: Any, arguments: dict[str, Any]) -> str:
    """One call as the Python source text bfcl-eval executes (``convert_to_function_call``):
    ``name(k1=repr(v1),k2=repr(v2))`` — no spaces, keyword arguments in the given order."""
    return f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def decode_execute_like_bfcl(response: Any) -> list[str] | None:
    """A raw response decoded exactly as bfcl-eval's Qwen FC ``decode_execute`` does (multi-turn):
    a list of call source texts (:func:`bfcl_call_text`), or ``None`` where BFCL's decoder raises.
    Unlike ``decode_ast`` it accepts ``arguments`` given as a JSON *string* holding an object."""
    decoded = decode_execute_calls_like_bfcl(response)
    return None if decoded is None else [bfcl_call_text(name, args) for name, args in decoded]


def decode_execute_calls_like_bfcl(response: Any) -> list[tuple[Any, dict[str, Any]]] | None:
    """:func:`decode_execute_like_bfcl` before the calls become source text: ``(name, arguments)``
    pairs (the name as decoded, possibly not a string), or ``None`` where BFCL's decoder raises."""
    if not isinstance(response, str):
        return None
    bodies = bfcl_extract_tool_calls(bfcl_clean_response(response)[0])
    if any(type(b) is not dict for b in bodies):
        return None
    out: list[tuple[Any, dict[str, Any]]] = []
    try:
        for b in bodies:
            name, args = b["name"], b["arguments"]
            hash(name)  # BFCL builds {name: arguments}: an unhashable name raises there
            if type(args) is str:
                args = json.loads(args)
            out.append((name, dict(args.items())))
    except Exception:  # noqa: BLE001 - BFCL's decode_execute raises here → the step has no calls
        return None
    return out


def decode_like_bfcl(response: str) -> list[ToolCall] | None:
    """:func:`decode_ast_like_bfcl` as our :class:`ToolCall` records.

    ``None`` when BFCL's decoder would raise. A non-string name (which BFCL keeps as the dict key
    and which matches no function) becomes its JSON text; the checkers score the exact decoded form
    (:func:`looptool.shared.ast_check.check_response`), so this only matters for display. Our
    reward's own parser (``toolcall_format.parse_tool_calls``) is stricter.
    """
    decoded = decode_ast_like_bfcl(response)
    if decoded is None:
        return None
    out = []
    for item in decoded:
        ((name, args),) = item.items()
        out.append(ToolCall(name=name if isinstance(name, str) else json.dumps(name), arguments=args))
    return out


def decoded_output(calls: list[ToolCall]) -> list[dict[str, dict[str, Any]]]:
    """Our calls in BFCL's decoded form ``[{func_name: {arg: value}}]`` (what Qwen FC's
    ``decode_ast`` returns for ``<tool_call>`` blocks)."""
    return [{c.name: copy.deepcopy(dict(c.arguments))} for c in calls]


def official_check(entry: BfclEntry, calls: list[ToolCall] | None) -> tuple[bool, Any]:
    """Score decoded calls with bfcl-eval's official checker, as its eval runner does.

    ``calls`` is the model's decoded calls (``[]`` for a plain-text answer) or ``None`` when the
    output could not be decoded at all (the runner's "decoder failed" branch).

    Returns ``(valid, error)``; ``error`` is the checker's error list / type (``None`` when valid).
    An exception raised inside bfcl's checker is reported as invalid with the exception text
    (bfcl's runner would crash on it; no shipped entry triggers one with our outputs).
    """
    return official_check_decoded(entry, None if calls is None else decoded_output(calls))


def official_check_decoded(entry: BfclEntry, decoded: Any) -> tuple[bool, Any]:
    """:func:`official_check` on BFCL's decoded form (what ``decode_ast`` returned; ``None`` when
    it raised), e.g. ``[{5: {}}]`` for a call whose name is not a string."""
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output

    if entry.kind in ("irrelevance", "relevance"):
        contains_call = decoded is not None and not is_empty_output(decoded)
        valid = (not contains_call) if entry.kind == "irrelevance" else contains_call
        if valid:
            return True, None
        return False, (
            "irrelevance_error:decoder_success" if entry.kind == "irrelevance" else "relevance_error:decoder_failed"
        )

    if decoded is None:
        return False, "ast_decoder:decoder_failed"
    decoded = copy.deepcopy(decoded)
    if not is_function_calling_format_output(decoded):
        return False, "ast_decoder:decoder_wrong_output_format"
    language = {"python": Language.PYTHON, "java": Language.JAVA, "javascript": Language.JAVASCRIPT}[entry.language]
    try:
        result = ast_checker(
            copy.deepcopy(entry.functions),
            decoded,
            copy.deepcopy(entry.possible_answer),
            language,
            entry.category,
            OFFICIAL_MODEL_NAME,
        )
    except Exception as exc:  # noqa: BLE001 - a checker crash is an invalid output, reported
        return False, f"checker_exception: {type(exc).__name__}: {exc}"
    if result["valid"]:
        return True, None
    return False, {"error": result.get("error"), "error_type": result.get("error_type")}


__all__ = [
    "BFCL_AST_CATEGORIES",
    "BFCL_PYTHON_CATEGORIES",
    "OFFICIAL_MODEL_NAME",
    "BfclEntry",
    "answer_to_calls",
    "bfcl_function_to_tool",
    "bfcl_call_text",
    "bfcl_clean_response",
    "bfcl_extract_tool_calls",
    "data_dir",
    "decode_ast_like_bfcl",
    "decode_execute_calls_like_bfcl",
    "decode_execute_like_bfcl",
    "decode_like_bfcl",
    "decoded_output",
    "is_irrelevance",
    "is_relevance",
    "language_of",
    "load_entries",
    "official_check",
    "official_check_decoded",
    "pick_answer_value",
    "render_arguments",
    "render_java_literal",
    "render_js_literal",
    "resolve_category",
]
