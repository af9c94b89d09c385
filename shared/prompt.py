"""The one prompt format: a Sample (context + tools) → chat messages; reference calls → target text.

Follows the reference implementation: a fixed "expert in composing functions" instruction,
optionally the current date, the Qwen ``# Tools`` block with one JSON tool per line inside
``<tools>…</tools>``, and the ``<tool_call>`` call spec. The context keeps the last 8 user turns;
assistant calls are rendered as ``<tool_call>`` text and tool results come back as
``<tool_response>`` blocks in a user turn, so any ChatML-style template renders them.
"""

from __future__ import annotations

import json

from looptool.shared.records import Message, Sample, Tool
from looptool.shared.toolcall_format import render_tool_calls

INSTRUCTION = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. "
    "If none of the functions can be used, point it out and do not call any function. "
    "If the given question lacks the parameters required by the function, ask for them."
)

CALL_SPEC = (
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

MAX_USER_TURNS = 8

ChatMessage = dict[str, str]


def tools_block(tools: list[Tool]) -> str:
    lines = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n{CALL_SPEC}"
    )


def system_prompt(tools: list[Tool], date: str = "", extra: str = "") -> str:
    parts = [INSTRUCTION]
    if date:
        parts.append(f"Current date: {date}")
    if extra.strip():
        parts.append(extra.strip())
    if tools:
        parts.append(tools_block(tools))
    return "\n\n".join(parts)


def _trim_to_user_turns(context: list[Message], max_user_turns: int) -> list[Message]:
    seen = 0
    for i in range(len(context) - 1, -1, -1):
        if context[i].role == "user":
            seen += 1
            if seen == max_user_turns:
                return context[i:]
    return context


def build_chat(
    context: list[Message], tools: list[Tool], date: str = "", max_user_turns: int = MAX_USER_TURNS
) -> list[ChatMessage]:
    """Context messages + tools → chat messages (system first) for any chat template.

    Without tools, a context that brings its own system message (an agent or judge prompt) is
    used as is: the tool-calling instruction is only added when tools are offered or no system
    message is given."""
    extra = "\n\n".join(m.content for m in context if m.role == "system" and m.content.strip())
    body = [m for m in context if m.role != "system"]
    system = extra if (not tools and extra) else system_prompt(tools, date, extra)
    out: list[ChatMessage] = [{"role": "system", "content": system}]
    for m in _trim_to_user_turns(body, max_user_turns):
        if m.role == "assistant":
            out.append({"role": "assistant", "content": render_tool_calls(m.tool_calls, m.content)})
        elif m.role == "tool":
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        else:
            out.append({"role": "user", "content": m.content})
    return out


def sample_chat(sample: Sample) -> list[ChatMessage]:
    return build_chat(sample.context, sample.tools, sample.meta.get("date", ""))


def target_text(sample: Sample) -> str:
    """What a perfect model answers for this sample."""
    if sample.reference:
        return render_tool_calls(sample.reference)
    return sample.reference_text
