"""Is every argument value of a call stated in a text? The verbatim check that synthesis uses on
the requests it renders and expansion uses on the drafts it keeps."""

from __future__ import annotations

import json
from typing import Any, Iterable

from looptool.shared.records import ToolCall


def mentions(call: ToolCall, booleans: bool = True) -> list[str]:
    """The strings a request grounding ``call`` must contain (one per leaf value, in argument
    order). Booleans count as ``true``/``false`` unless ``booleans`` is False ("include reviews"
    grounds ``true`` without the word); nulls never count."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, bool):
            if booleans:
                out.append("true" if v else "false")
        elif v is None:
            return
        elif isinstance(v, (int, float)):
            out.append(json.dumps(v))
        else:
            out.append(str(v))

    walk(call.arguments)
    return out


def ungrounded_values(text: str, calls: Iterable[ToolCall], booleans: bool = True) -> list[str]:
    """Values of ``calls`` (see :func:`mentions`) that do not occur verbatim, case-insensitively,
    in ``text``."""
    low = text.lower()
    return [m for c in calls for m in mentions(c, booleans) if m.lower() not in low]
