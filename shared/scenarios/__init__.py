"""Schema-driven scenario generation: realistic argument values, calls, and user requests that ground them.

Everything here is a pure function of its inputs and a ``random.Random``: the same rng state gives
the same values and the same text, so synthesis and expansion are reproducible. One module per job:

- :mod:`.vocab` — the word lists values are drawn from; parameter names as words (:func:`humanize`).
- :mod:`.values` — :func:`sample_value`: one value for a parameter schema: JSON Schema types (and
  BFCL's Python-ish names), ``enum``/``const``, ``format`` (date, date-time, time, email, uri, uuid,
  ipv4), ``minimum``/``maximum`` (also exclusive), string length, ``pattern``, arrays
  (``minItems``/``maxItems``/``uniqueItems``), nested objects, ``anyOf``/``oneOf``. Values are
  realistic per parameter name (cities, people, dates, emails, units, currencies, ...) and follow
  format hints in the parameter description ("YYYY-MM-DD", "City, State", "HH:MM"...).
- :mod:`.regex_sampler` — :func:`sample_regex`, a string matching a ``pattern``.
- :mod:`.calls` — :func:`make_call` (a schema-valid call: every required argument, each optional
  one with a probability) and :func:`vary_call` (a structurally identical call — same function, same
  argument keys and array lengths — with different values; used by expansion, EDDE).
- :mod:`.render` — :func:`render_request`: a natural user request for one or more calls (parallel
  requests joined naturally), in a style (``terse``, ``polite``, ``verbose``, ``casual``), every
  argument value mentioned verbatim (numbers as JSON writes them, strings as-is, booleans as
  ``true``/``false``); :func:`render_clarification_question` / :func:`render_clarification_answer`
  (the assistant asking for missing required parameters, the user supplying them);
  :func:`render_no_tool_request` (a request no tool in the set can serve).
- :mod:`.grounding` — :func:`mentions` lists the strings that must occur in a request and
  :func:`ungrounded_values` returns the ones that do not.

The names below are the package's public API.
"""

from __future__ import annotations

from .calls import make_call, vary_call
from .grounding import mentions, ungrounded_values
from .regex_sampler import sample_regex
from .render import (
    render_clarification_answer,
    render_clarification_question,
    render_followup,
    render_no_tool_answer,
    render_no_tool_request,
    render_partial_request,
    render_request,
    render_result_summary,
    render_value,
    task_phrase,
)
from .values import sample_value
from .vocab import NO_TOOL_REQUESTS, STYLES, humanize

__all__ = [
    "NO_TOOL_REQUESTS",
    "STYLES",
    "humanize",
    "make_call",
    "mentions",
    "render_clarification_answer",
    "render_clarification_question",
    "render_followup",
    "render_no_tool_answer",
    "render_no_tool_request",
    "render_partial_request",
    "render_request",
    "render_result_summary",
    "render_value",
    "sample_regex",
    "sample_value",
    "task_phrase",
    "ungrounded_values",
    "vary_call",
]
