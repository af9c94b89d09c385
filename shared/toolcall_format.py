"""Parser and renderer for Hermes/Qwen-style tool calls.

Model output carries calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks,
one block per call. The parser is *strict* (a malformed block is an error, not a guess) and
*total* (it never raises on any input string; errors come back as a typed value).

Rules:
- ``<think>...</think>`` reasoning is removed first; calls inside it never count.
- Every ``<tool_call>`` must be closed; the body must be one JSON object with a string
  ``name`` and an object ``arguments`` (a JSON string holding an object is accepted, as
  several chat templates emit it). No other keys are allowed.
- Text outside the blocks is returned as ``text`` (whitespace-trimmed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum

from looptool.shared.records import ToolCall

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_BLOCK_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


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
    """Return (text without <think> blocks, the reasoning text)."""
    reasoning = " ".join(m.group(0)[7:].removesuffix("</think>").strip() for m in _THINK_RE.finditer(text))
    return _THINK_RE.sub("", text), reasoning


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
    """Parse model output into calls + remaining text. Never raises."""
    if not isinstance(text, str):
        return ParsedOutput(error=ParseError(ParseErrorKind.NOT_A_STRING, f"got {type(text).__name__}"))
    try:
        visible, reasoning = strip_reasoning(text)
        calls: list[ToolCall] = []
        for i, m in enumerate(_BLOCK_RE.finditer(visible)):
            parsed = _parse_block(m.group(1).strip(), i)
            if isinstance(parsed, ParseError):
                return ParsedOutput(text=visible.strip(), reasoning=reasoning, error=parsed)
            calls.append(parsed)
        rest = _BLOCK_RE.sub("", visible)
        if TOOL_CALL_OPEN in rest:
            return ParsedOutput(
                calls=calls,
                text=rest.strip(),
                reasoning=reasoning,
                error=ParseError(ParseErrorKind.UNCLOSED_BLOCK, "a <tool_call> block is not closed", len(calls)),
            )
        if TOOL_CALL_CLOSE in rest:
            return ParsedOutput(
                calls=calls,
                text=rest.strip(),
                reasoning=reasoning,
                error=ParseError(ParseErrorKind.STRAY_CLOSE, "</tool_call> without an opening tag"),
            )
        return ParsedOutput(calls=calls, text=rest.strip(), reasoning=reasoning)
    except Exception as exc:  # totality: any unforeseen failure is still a typed error
        return ParsedOutput(error=ParseError(ParseErrorKind.INVALID_JSON, f"unparseable output: {exc!r}"))


def render_tool_call(call: ToolCall) -> str:
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def render_tool_calls(calls: list[ToolCall], text: str = "") -> str:
    """Render calls as the model should emit them: one block per call, newline-joined."""
    parts = [text.strip()] if text.strip() else []
    parts.extend(render_tool_call(c) for c in calls)
    return "\n".join(parts)
