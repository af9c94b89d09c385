"""EDDE structural variety: which call structures an expansion may have, and the context it keeps.

Three switches (``spec.expand`` in the manifest, read through :meth:`StructureOptions.from_spec`):

``changeCalls``  the call count and order may change within the seed's toolset: a draft may drop one
                 call (seeds with 2+ calls), add a call to a tool of the toolset, or reorder its calls.
                 All calls of one assistant turn are parallel (independent: none can use another's
                 result), so any order is valid; the reward compares them order-free, the request
                 text is what changes. One of those operations (or none) is drawn per draft.
``siblingTools`` a call may be swapped for a call to a *sibling* tool (:func:`are_siblings`): one
                 call, in half the drafts (``SIBLING_RATE``) of a seed whose tools have siblings.
``keepContext``  a seed with earlier turns keeps them: the new sample is the seed's context up to
                 its last user turn, verbatim, then the new request (``rewriteContext`` also
                 rewrites the seed's old argument values in those turns into the new ones).
                 Off: single-turn (system messages + the new request), the former behaviour.

"Toolset" is the seed sample's own tools (``Sample.tools``): a new sample offers all of them, so a
call to any of them is answerable, and no call can name a tool the sample does not offer.

The failed turn is always the *last* assistant turn (the seed's reference); the seed's context
after its last user message (assistant calls and tool results of earlier steps of the same
request) belongs to the old request, so it is replaced by the new request, not kept.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from looptool.shared.records import Message, Tool, ToolCall
from looptool.shared.scenarios.calls import make_call, tool_params, vary_call
from looptool.shared.scenarios.vocab import tokens

from .seeds import Seed, call_shape

# Added calls stop here: a request with more parallel calls reads like a list, not a user need.
MAX_CALLS = 5
# Share of drafts (of seeds with a sibling) that swap one call for a sibling.
SIBLING_RATE = 0.5
# Name similarity threshold for siblings (Jaccard over name words, generic verbs removed).
NAME_SIMILARITY = 0.5
_GENERIC = {"get", "set", "list", "find", "search", "fetch", "retrieve", "query", "create", "update", "delete",
            "add", "remove", "check", "calculate", "compute", "info", "data", "by", "for", "of", "the", "a", "to", "api", "v1", "v2"}


@dataclass(frozen=True)
class StructureOptions:
    change_calls: bool = False
    sibling_tools: bool = False
    keep_context: bool = True
    rewrite_context: bool = False

    @classmethod
    def from_spec(cls, spec: Any) -> "StructureOptions":
        """From an ``ExpandSpec`` (or ``ExpandConfig``); missing fields take the defaults above."""
        d = cls()
        return cls(
            change_calls=bool(getattr(spec, "changeCalls", d.change_calls)),
            sibling_tools=bool(getattr(spec, "siblingTools", d.sibling_tools)),
            keep_context=bool(getattr(spec, "keepContext", d.keep_context)),
            rewrite_context=bool(getattr(spec, "rewriteContext", d.rewrite_context)),
        )


# ----------------------------------------------------------------------------- siblings


def _json_type(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    t = schema.get("type")
    if isinstance(t, list):
        t = "|".join(sorted(str(x) for x in t))
    if not t:
        t = "enum" if "enum" in schema else "any"
    return str(t)


def required_types(tool: Tool) -> tuple[str, ...]:
    """The sorted JSON types of the tool's required parameters: its signature for siblinghood."""
    props, required = tool_params(tool)
    return tuple(sorted(_json_type(props.get(r)) for r in required))


def name_words(tool: Tool) -> set[str]:
    """The tool name's content words (``get_stock_price`` → ``{stock, price}``)."""
    return {w for w in tokens(tool.name) if w not in _GENERIC}


def are_siblings(a: Tool, b: Tool) -> bool:
    """Two different tools are siblings when a user could plausibly want one instead of the other:

    - the same *signature*: equal, non-empty multisets of required-parameter JSON types
      (``get_weather(city: string)`` ~ ``get_stock_price(ticker: string)``), or
    - similar *names*: Jaccard similarity of their content words (:func:`name_words`) >= 0.5
      (``search_hotels`` ~ ``book_hotels``, ``get_user_profile`` ~ ``update_user_profile``).

    Symmetric; a tool is never its own sibling."""
    if a.name == b.name:
        return False
    sig = required_types(a)
    if sig and sig == required_types(b):
        return True
    wa, wb = name_words(a), name_words(b)
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) >= NAME_SIMILARITY


def siblings_of(name: str, toolset: list[Tool]) -> list[Tool]:
    """The siblings of tool ``name`` within ``toolset``, in toolset order."""
    own = next((t for t in toolset if t.name == name), None)
    return [] if own is None else [t for t in toolset if are_siblings(own, t)]


# ----------------------------------------------------------------------------- drafting


def vary_structure(seed: Seed, opts: StructureOptions, rng: random.Random, variation_tries: int = 4) -> tuple[list[ToolCall], str]:
    """New reference calls for ``seed``: new values for its calls (``vary_call``), then, when enabled,
    one sibling swap and one count/order operation. Returns (calls, a label of what changed: "" or
    ``"sibling:a->b"``, ``"drop"``, ``"add:tool"``, ``"reorder"``, joined by ``+``).

    Raises KeyError when a seed call names a tool the seed does not offer."""
    by_name = {t.name: t for t in seed.tools}
    calls = [vary_call(c, by_name[c.name], rng) for c in seed.correct]
    ops: list[str] = []
    if opts.sibling_tools:
        swappable = [(i, sibs) for i, c in enumerate(calls) if (sibs := siblings_of(c.name, seed.tools))]
        # half the drafts only: the seed's own tool is what failed, so most expansions should keep it
        if swappable and rng.random() < SIBLING_RATE:
            i, sibs = rng.choice(swappable)
            new_tool = rng.choice(sibs)
            ops.append(f"sibling:{calls[i].name}->{new_tool.name}")
            calls[i] = make_call(new_tool, rng)
    if opts.change_calls:
        choices = ["keep", "add"] if len(calls) < MAX_CALLS else ["keep"]
        if len(calls) >= 2:
            choices += ["drop", "reorder"]
        op = rng.choice(choices)
        if op == "add":
            tool = rng.choice(seed.tools)
            calls.insert(rng.randint(0, len(calls)), make_call(tool, rng))
            ops.append(f"add:{tool.name}")
        elif op == "drop":
            calls.pop(rng.randrange(len(calls)))
            ops.append("drop")
        elif op == "reorder":
            before = [c.key() for c in calls]
            for _ in range(variation_tries):
                rng.shuffle(calls)
                if [c.key() for c in calls] != before:
                    break
            ops.append("reorder")
    return calls, "+".join(ops)


def check_structure(seed: Seed, calls: list[ToolCall], opts: StructureOptions) -> str:
    """"" when ``calls`` have a structure the options allow for ``seed``, else why not.

    All off: the seed's functions, call count and order, argument names (``call_shape``).
    ``siblingTools``: as that, except a call may name a sibling of the seed's tool at its position
    (its arguments are then the sibling's: the schema check covers them). ``changeCalls``: 1 to
    ``max(MAX_CALLS, seed calls)`` calls, each to a tool of the seed's toolset."""
    names = {t.name for t in seed.tools}
    if opts.change_calls:
        limit = max(MAX_CALLS, len(seed.correct))
        if not 1 <= len(calls) <= limit:
            return f"expected 1 to {limit} calls, got {len(calls)}"
        outside = sorted({c.name for c in calls if c.name not in names})
        return f"not in the toolset: {', '.join(outside)}" if outside else ""
    want, got = call_shape(seed.correct), call_shape(calls)
    if not opts.sibling_tools or len(want) != len(got):
        return "" if want == got else f"expected {want}, got {got}"
    for (wname, wargs), (gname, gargs) in zip(want, got):
        if gname == wname:
            if gargs != wargs:
                return f"expected {want}, got {got}"
        elif gname not in {t.name for t in siblings_of(wname, seed.tools)}:
            return f"{gname} is neither {wname} nor a sibling of it in the toolset"
    return ""


# ----------------------------------------------------------------------------- context


def _value_map(old: list[ToolCall], new: list[ToolCall]) -> list[tuple[str, str]]:
    """Old → new string argument values, aligning each old call with the first unused new call to
    the same function (same argument name). Longest first, so a value inside another is not hit first."""
    used: set[int] = set()
    pairs: dict[str, str] = {}
    for o in old:
        j = next((k for k, n in enumerate(new) if k not in used and n.name == o.name), None)
        if j is None:
            continue
        used.add(j)
        for key, ov in o.arguments.items():
            nv = new[j].arguments.get(key)
            # short strings ("a", "on") would also rewrite unrelated words; numbers are too ambiguous
            if isinstance(ov, str) and isinstance(nv, str) and len(ov) >= 3 and ov != nv and ov not in pairs:
                pairs[ov] = nv
    return sorted(pairs.items(), key=lambda kv: (-len(kv[0]), kv[0]))


def _rewrite_text(text: str, pairs: list[tuple[str, str]]) -> str:
    if not pairs or not text:
        return text
    pattern = re.compile("|".join(r"(?<!\w)" + re.escape(o) + r"(?!\w)" for o, _ in pairs))
    table = dict(pairs)
    return pattern.sub(lambda m: table[m.group(0)], text)


def _rewrite_value(v: Any, table: dict[str, str]) -> Any:
    if isinstance(v, dict):
        return {k: _rewrite_value(x, table) for k, x in v.items()}
    if isinstance(v, list):
        return [_rewrite_value(x, table) for x in v]
    return table.get(v, v) if isinstance(v, str) else v


def expansion_history(seed: Seed, new_calls: list[ToolCall], opts: StructureOptions) -> list[Message]:
    """The messages a new sample keeps before its new user request.

    ``keepContext`` off, or a seed without an earlier user turn: its system messages only. On: the
    seed's context before its last user message, verbatim (deep copies); with ``rewriteContext``,
    the seed's old string argument values in the non-system turns (contents and earlier calls'
    arguments) become the new calls' values, so the history talks about the same entities."""
    ctx = seed.sample.context
    last_user = max((i for i, m in enumerate(ctx) if m.role == "user"), default=-1)
    if not opts.keep_context or last_user <= 0:
        return [m.model_copy(deep=True) for m in ctx if m.role == "system"]
    history = [m.model_copy(deep=True) for m in ctx[:last_user]]
    if not opts.rewrite_context:
        return history
    pairs = _value_map(seed.correct, new_calls)
    if not pairs:
        return history
    table = dict(pairs)
    for m in history:
        if m.role == "system":
            continue
        m.content = _rewrite_text(m.content, pairs)
        m.tool_calls = [ToolCall(name=c.name, arguments=_rewrite_value(c.arguments, table), id=c.id) for c in m.tool_calls]
    return history
