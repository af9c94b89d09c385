"""Parser and renderer for Hermes/Qwen-style tool calls.

Model output carries calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks,
one block per call. The parser is *strict* (a malformed block is an error, not a guess) and
*total* (it never raises on any input string; errors come back as a typed value).

Rules:
- ``<think>...</think>`` reasoning is removed first; calls inside it never count. An unclosed
  ``<think>`` runs to the end; a ``</think>`` without an opening tag (templates that open the
  block in the prompt) makes everything before it reasoning.
- Every ``<tool_call>`` must be closed; the body must be one JSON object with a string
  ``name`` and an object ``arguments`` (a JSON string holding an object is accepted, as
  several chat templates emit it). No other keys are allowed.
- Text outside the blocks is returned as ``text`` (whitespace-trimmed).
- Any error (unclosed block, stray ``</tool_call>``, bad body) makes the whole turn invalid:
  ``calls`` is empty and ``error`` names the problem and the block index.
- The renderer writes tags that occur inside argument strings as JSON escapes (``<\\/tool_call>``,
  ``\\u003cthink>``), so ``parse(render(calls))`` gives back exactly ``calls``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum

from looptool.shared.records import ToolCall

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_SPLIT_RE = re.compile(r"(<think>|</think>)")
# Inside rendered JSON these tags are written with JSON escapes, so an argument that contains a
# tag (e.g. a string "</tool_call>") still round-trips through parse(render(call)).
_RENDER_ESCAPES = (
    (TOOL_CALL_CLOSE, "<\\/tool_call>"),
    (TOOL_CALL_OPEN, "\\u003ctool_call>"),
    (THINK_CLOSE, "<\\/think>"),
    (THINK_OPEN, "\\u003cthink>"),
)


class ParseErrorKind(str, Enum):
    UNCLOSED_BLOCK = "unclosed_block"
    STRAY_CLOSE = "stray_close"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_NAME = "missing_name"
    BAD_ARGUMENTS = "bad_arguments"
    EXTRA_KEYS = "extra_keys"
    NOT_A_STRING = "not_a_string"


@dataclass(frozen=True)
class ParseError:
    kind: ParseErrorKind
    message: str
    block_index: int = -1

    def __str__(self) -> str:
        where = f" (block {self.block_index})" if self.block_index >= 0 else ""
        return f"{self.kind.value}{where}: {self.message}"


@dataclass
class ParsedOutput:
    calls: list[ToolCall] = field(default_factory=list)
    text: str = ""
    reasoning: str = ""
    error: ParseError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def strip_reasoning(text: str) -> tuple[str, str]:
    """Return (text without reasoning, the reasoning text).

    ``<think>…</think>`` blocks are reasoning; an unclosed ``<think>`` runs to the end of the text.
    A ``</think>`` with no opening tag (chat templates that put ``<think>`` in the prompt) makes
    everything before it reasoning. Linear time.
    """
    if THINK_OPEN not in text and THINK_CLOSE not in text:
        return text, ""
    visible: list[str] = []
    reasoning: list[str] = []
    current: list[str] = []  # reasoning text of the block being read
    depth = 0
    for piece in _THINK_SPLIT_RE.split(text):
        if piece == THINK_OPEN:
            if depth:
                current.append(piece)  # nested opening tag: part of the reasoning text
            depth += 1
        elif piece == THINK_CLOSE:
            if depth == 0:  # orphan close: what came before was reasoning
                reasoning.append("".join(visible).strip())
                visible = []
            else:
                depth -= 1
                if depth:
                    current.append(piece)
                else:
                    reasoning.append("".join(current).strip())
                    current = []
        elif depth:
            current.append(piece)
        else:
            visible.append(piece)
    if depth:
        reasoning.append("".join(current).strip())
    return "".join(visible), " ".join(r for r in reasoning if r)


def _parse_block(body: str, index: int) -> ToolCall | ParseError:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        return ParseError(ParseErrorKind.INVALID_JSON, f"body is not JSON: {exc}", index)
    if not isinstance(obj, dict):
        return ParseError(ParseErrorKind.NOT_AN_OBJECT, "body must be a JSON object", index)
    extra = set(obj) - {"name", "arguments"}
    if extra:
        return ParseError(ParseErrorKind.EXTRA_KEYS, f"unexpected keys {sorted(extra)}", index)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return ParseError(ParseErrorKind.MISSING_NAME, "'name' must be a non-empty string", index)
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            return ParseError(ParseErrorKind.BAD_ARGUMENTS, "'arguments' string is not JSON", index)
    if not isinstance(args, dict):
        return ParseError(ParseErrorKind.BAD_ARGUMENTS, "'arguments' must be a JSON object", index)
    return ToolCall(name=name.strip(), arguments=args)


def parse_tool_calls(text: object) -> ParsedOutput:
    """Parse model output into calls + remaining text. Never raises; linear in the input size.

    On an error ``calls`` is empty (strict: a turn with one malformed block has no valid calls)
    and ``error`` says what and which block.
    """
    if not isinstance(text, str):
        return ParsedOutput(error=ParseError(ParseErrorKind.NOT_A_STRING, f"got {type(text).__name__}"))
    try:
        visible, reasoning = strip_reasoning(text)

        def fail(err: ParseError) -> ParsedOutput:
            return ParsedOutput(text=visible.strip(), reasoning=reasoning, error=err)

        calls: list[ToolCall] = []
        rest: list[str] = []
        pos = 0
        while True:
            start = visible.find(TOOL_CALL_OPEN, pos)
            close = visible.find(TOOL_CALL_CLOSE, pos)
            if close != -1 and (start == -1 or close < start):
                return fail(ParseError(ParseErrorKind.STRAY_CLOSE, "</tool_call> without an opening tag", len(calls)))
            if start == -1:
                rest.append(visible[pos:])
                break
            rest.append(visible[pos:start])
            body_start = start + len(TOOL_CALL_OPEN)
            end = visible.find(TOOL_CALL_CLOSE, body_start)
            if end == -1:
                return fail(ParseError(ParseErrorKind.UNCLOSED_BLOCK, "a <tool_call> block is not closed", len(calls)))
            parsed = _parse_block(visible[body_start:end].strip(), len(calls))
            if isinstance(parsed, ParseError):
                return fail(parsed)
            calls.append(parsed)
            pos = end + len(TOOL_CALL_CLOSE)
        return ParsedOutput(calls=calls, text="".join(rest).strip(), reasoning=reasoning)
    except Exception as exc:  # totality: any unforeseen failure is still a typed error
        return ParsedOutput(error=ParseError(ParseErrorKind.INVALID_JSON, f"unparseable output: {exc!r}"))


def render_tool_call(call: ToolCall) -> str:
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    for tag, escaped in _RENDER_ESCAPES:
        body = body.replace(tag, escaped)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"

def render_tool_calls(calls: list[ToolCall], text: str = "") -> str:
    """Render calls as the model should emit them: one block per call, newline-joined."""
    parts = [text.strip()] if text.strip() else []
    parts.extend(render_tool_call(c) for c in calls)
    return "\n".join(parts)
