"""Executable environments: BFCL's multi-turn tool classes shipped in ``bfcl-eval``.

Only the classes on :data:`ALLOWED` can be instantiated, from their fixed modules; a session
names one by class name (``TravelAPI``) or by its function-doc name (``travel_booking``). A call
runs the public method of the same name with the call's arguments. No user-supplied code is ever
imported or executed.

The initial state is the class's scenario (BFCL's ``initial_config[class]``). The reserved key
:data:`LONG_CONTEXT_KEY` (``true``) loads it the way BFCL's ``multi_turn_long_context`` category
does (``_load_scenario(..., long_context=True)``: the class adds its long filler data).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any

_PREFIX = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"

#: class name → (module, doc name). The BFCL multi-turn suite's environments (no network, no disk).
ALLOWED: dict[str, tuple[str, str]] = {
    "GorillaFileSystem": (f"{_PREFIX}.gorilla_file_system", "gorilla_file_system"),
    "MathAPI": (f"{_PREFIX}.math_api", "math_api"),
    "MessageAPI": (f"{_PREFIX}.message_api", "message_api"),
    "TwitterAPI": (f"{_PREFIX}.posting_api", "posting_api"),
    "TicketAPI": (f"{_PREFIX}.ticket_api", "ticket_api"),
    "TradingBot": (f"{_PREFIX}.trading_bot", "trading_bot"),
    "TravelAPI": (f"{_PREFIX}.travel_booking", "travel_booking"),
    "VehicleControlAPI": (f"{_PREFIX}.vehicle_control", "vehicle_control"),
}
_BY_DOC = {doc: cls for cls, (_, doc) in ALLOWED.items()}
#: In an executable session's initial state: load the scenario as BFCL's long-context category does.
LONG_CONTEXT_KEY = "__long_context__"


class EnvironmentError_(ValueError):
    pass


def resolve(name: str) -> str | None:
    """Class name for an environment name (class or doc name), or None if not allowed."""
    if name in ALLOWED:
        return name
    return _BY_DOC.get(name)


def method_names(class_name: str) -> set[str]:
    cls = _load_class(class_name)
    return {n for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def _load_class(class_name: str) -> type:
    module, _ = ALLOWED[class_name]
    return getattr(importlib.import_module(module), class_name)


def environment_for_tools(tool_names: set[str]) -> str | None:
    """The allowed class whose public methods cover every tool name (``auto`` mode)."""
    if not tool_names:
        return None
    for cls in ALLOWED:
        try:
            if tool_names <= method_names(cls):
                return cls
        except Exception:  # noqa: BLE001 - bfcl-eval missing or broken: no executable mode
            return None
    return None


class Environment:
    """One live instance of an allowed class, holding the session's state."""

    def __init__(self, name: str, initial_state: dict[str, Any] | None = None):
        cls_name = resolve(name)
        if cls_name is None:
            raise EnvironmentError_(
                f"environment {name!r} is not executable; allowed: {', '.join(sorted(ALLOWED))} "
                f"(or {', '.join(sorted(_BY_DOC))})"
            )
        self.name = cls_name
        self.instance = _load_class(cls_name)()
        self.methods = method_names(cls_name)
        state = copy.deepcopy(initial_state or {})
        long_context = bool(state.pop(LONG_CONTEXT_KEY, False))
        loader = getattr(self.instance, "_load_scenario", None)
        if callable(loader):
            # only the long-context category passes the flag (every BFCL class accepts it)
            loader(state, long_context=True) if long_context else loader(state)

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        if name not in self.methods:
            raise KeyError(name)
        return getattr(self.instance, name)(**copy.deepcopy(arguments))
