"""BFCL multi-turn categories: the model runs turn by turn against BFCL's executable classes, and
bfcl-eval's own multi-turn checker scores the trajectory.

Categories: ``multi_turn_base``, ``multi_turn_miss_func``, ``multi_turn_miss_param``,
``multi_turn_long_context`` (those the installed bfcl-eval ships).

Inference follows bfcl-eval's loop for the handler of our prompt format (Qwen-style
``<tool_call>`` JSON: ``QwenFCHandler``, an OSS handler, so ``inference_multi_turn_prompting``):

- the functions of the involved classes are the tools (``multi_turn_func_doc``, with BFCL's Python
  hint in the descriptions); a ``missed_function`` is held out of them. At the turn bfcl-eval
  names, whose question is empty, the user message is BFCL's
  ``"{held-out docs}\\nI have updated some more functions you can choose from. What about now?"``
  (the docs in Python ``repr``, as its ``str.format`` writes them; they stay out of the tools, as in
  the prompting handler);
- each step: generate; the text after the last ``</think>`` is the step's response (what BFCL
  stores and scores); it is decoded as Qwen FC's ``decode_execute`` decodes it
  (:func:`looptool.shared.bfcl.decode_execute_calls_like_bfcl`); a failed decode or no call ends the
  turn; otherwise every call is executed by the injected :class:`BfclExecutor` and its result text
  comes back as one ``tool`` message per call, and the model goes again;
- more than ``MAXIMUM_STEP_LIMIT`` (20) steps in a turn force-quits the entry (no later turns; the
  checker then fails it as force-terminated).

Scoring is bfcl-eval's runner for one entry: a turn count other than the ground truth's fails
(``multi_turn:force_terminated``); each step is decoded (failed or empty decodes are skipped) and
``multi_turn_checker`` (bfcl-eval's function, called as is) compares the states and execution
results against the ground truth's, re-executing every call itself. The checker ``eval``s call
source text; a decoded call whose name is not a method of an involved class, or whose argument
names are not identifiers, is replaced by a call to a name no class has (:data:`REFUSED_CALL`)
before it gets there, so model output never runs as arbitrary Python. For a non-method name BFCL
would only get an error result too, so the verdict is the same (``tests/shared/test_bfcl_multiturn.py``
checks our verdicts against bfcl-eval's runner).

``shared`` does not import ``services``: the executor is injected (``services.toolsim.bfcl_env.
ToolSimBfclExecutor`` runs the classes on the tool simulator, embedded or over gRPC).
"""

from __future__ import annotations

import copy
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Generator as PyGenerator, Iterable, Protocol

from looptool.shared import bfcl
from looptool.shared.generation import Generator, GenRequest, GenResult, SamplingParams
from looptool.shared.records import Message, Progress, Tool, ToolCall

if TYPE_CHECKING:
    from looptool.shared.evaluation import BfclResult

_KNOWN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
BATCH = 16
#: What a refused call (see the module doc) is sent to the checker as: a name no class has.
REFUSED_CALL = "looptool_refused_call()"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _shipped(category: str) -> bool:
    try:
        return (bfcl.data_dir() / f"BFCL_v4_{category}.json").exists() and (
            bfcl.data_dir() / "possible_answer" / f"BFCL_v4_{category}.json"
        ).exists()
    except RuntimeError:
        return False


#: The multi-turn categories the installed bfcl-eval ships.
MULTI_TURN_CATEGORIES: tuple[str, ...] = tuple(c for c in _KNOWN if _shipped(c))


def is_multi_turn(category: str) -> bool:
    return category.startswith("multi_turn")


def resolve_category(category: str) -> str:
    if category not in MULTI_TURN_CATEGORIES:
        raise ValueError(
            f"unknown or unshipped BFCL multi-turn category {category!r}; available: {', '.join(MULTI_TURN_CATEGORIES)}"
        )
    return category


def long_context(category: str) -> bool:
    """bfcl-eval loads the classes with ``long_context=True`` for these categories."""
    return "long_context" in category or "composite" in category


# ---------------------------------------------------------------------------------------------
# The executor (injected)
# ---------------------------------------------------------------------------------------------


class BfclEnvironment(Protocol):
    """The live classes of one entry."""

    def execute(self, call: ToolCall) -> str:
        """Run one call; the result as the text bfcl-eval feeds back (``"Error during execution:
        …"`` when the call raised)."""
        ...

    def close(self) -> None: ...


class BfclExecutor(Protocol):
    def open(self, involved_classes: list[str], initial_config: dict[str, Any], long_context: bool) -> BfclEnvironment:
        """Instantiate the classes with their part of ``initial_config`` (BFCL's scenario)."""
        ...


# ---------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _class_docs(class_name: str) -> tuple[str, ...]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    path = bfcl.data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@dataclass
class MultiTurnEntry:
    """One multi-turn entry, with its function docs populated as bfcl-eval populates them.

    ``functions``: the docs offered from the start (held-out ones removed); ``missed_function``:
    turn index → the held-out docs revealed at that turn; ``ground_truth``: per turn, the call
    source texts bfcl-eval executes. ``raw`` is the entry as bfcl-eval's checker receives it.
    """

    id: str
    category: str
    question: list[list[dict[str, Any]]]
    initial_config: dict[str, Any]
    involved_classes: list[str]
    functions: list[dict[str, Any]]
    missed_function: dict[int, list[dict[str, Any]]]
    ground_truth: list[list[str]]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def tools(self) -> list[Tool]:
        return [bfcl.bfcl_function_to_tool(fn, category=self.category) for fn in self.functions]

    def all_functions(self) -> list[dict[str, Any]]:
        return self.functions + [fn for docs in self.missed_function.values() for fn in docs]

    def turn_messages(self, turn: int) -> list[Message]:
        """The user message(s) opening ``turn`` (BFCL's held-out-function prompt at that turn)."""
        if turn in self.missed_function:
            from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING

            text = DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING.format(functions=self.missed_function[turn])
            return [Message(role="user", content=text)]
        return [Message(role=m["role"], content=m.get("content") or "") for m in self.question[turn]]


def load_entries(category: str, limit: int | None = None) -> list[MultiTurnEntry]:
    cat = resolve_category(category)
    out = []
    for q_text, a_text in bfcl._load_raw(cat)[:limit]:
        q = json.loads(q_text)
        functions = [json.loads(d) for cls in q["involved_classes"] for d in _class_docs(cls)]
        missed: dict[int, list[dict[str, Any]]] = {}
        for turn, names in q.get("missed_function", {}).items():
            missed[int(turn)] = []
            for name in names:  # as bfcl-eval: the first doc of that name moves to the turn
                i = next((i for i, fn in enumerate(functions) if fn["name"] == name), None)
                if i is not None:
                    missed[int(turn)].append(functions.pop(i))
        out.append(
            MultiTurnEntry(
                id=q["id"],
                category=cat,
                question=q["question"],
                initial_config=q.get("initial_config", {}),
                involved_classes=list(q["involved_classes"]),
                functions=functions,
                missed_function=missed,
                ground_truth=json.loads(a_text),
                raw=q,
            )
        )
    return out


def _signatures(involved_classes: list[str]) -> dict[str, list[str]]:
    """method name → its parameter names (positional order), later classes winning."""
    return _signatures_of(tuple(involved_classes))


@lru_cache(maxsize=None)
def _signatures_of(involved_classes: tuple[str, ...]) -> dict[str, list[str]]:
    import importlib
    import inspect

    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    out: dict[str, list[str]] = {}
    for cls in involved_classes:
        klass = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[cls]), cls)
        for name, fn in inspect.getmembers(klass, inspect.isfunction):
            if not name.startswith("_"):
                out[name] = [p for p in inspect.signature(fn).parameters if p != "self"]
    return out


def parse_call_text(text: str, involved_classes: list[str]) -> ToolCall:
    """A ground-truth call text (``sort('final_report.pdf')``, ``cd(folder='..')``) as our call:
    literal arguments only, positional ones named from the class method's signature."""
    import ast

    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain call: {text!r}")
    params = _signatures(involved_classes).get(node.func.id)
    if params is None:
        raise ValueError(f"{node.func.id!r} is no method of {involved_classes}")
    args: dict[str, Any] = {}
    for i, a in enumerate(node.args):
        args[params[i]] = ast.literal_eval(a)
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"**kwargs in {text!r}")
        args[kw.arg] = ast.literal_eval(kw.value)
    return ToolCall(name=node.func.id, arguments=args)


def ground_truth_calls(entry: MultiTurnEntry) -> list[list[ToolCall]]:
    """The ground truth of every turn as our calls (:func:`parse_call_text`)."""
    return [[parse_call_text(t, entry.involved_classes) for t in turn] for turn in entry.ground_truth]


# ---------------------------------------------------------------------------------------------
# Inference (bfcl-eval's prompting loop)
# ---------------------------------------------------------------------------------------------


def max_steps() -> int:
    from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT

    return int(MAXIMUM_STEP_LIMIT)


@dataclass
class Trajectory:
    """What bfcl-eval records for one entry: per turn, per step, the model's response (the text
    after the last ``</think>``)."""

    entry_id: str
    responses: list[list[str]] = field(default_factory=list)
    force_quit: bool = False
    error: str = ""  # a generation error: the entry stops there and fails
    messages: list[Message] = field(default_factory=list)  # the final chat, for debugging


def _assistant_message(raw: str, answer: str, reasoning: str) -> Message:
    """The assistant turn in the chat history, as Qwen FC's handler keeps it: the decodable
    ``<tool_call>`` blocks as calls with empty content, else the answer text."""
    bodies = bfcl.bfcl_extract_tool_calls(raw)
    if bodies:
        try:
            calls = [ToolCall(name=b["name"], arguments=b["arguments"]) for b in bodies]
            return Message(role="assistant", content="", tool_calls=calls, reasoning=reasoning)
        except Exception:  # noqa: BLE001 - not representable as our calls: keep the text
            pass
    return Message(role="assistant", content=answer, reasoning=reasoning)


def run_entry(
    entry: MultiTurnEntry, env: BfclEnvironment, max_tokens: int
) -> PyGenerator[GenRequest, GenResult, Trajectory]:
    """One entry's inference as a coroutine: yields each request, receives its result, returns
    the trajectory (so many entries can share one batched generator)."""
    traj = Trajectory(entry_id=entry.id)
    tools = entry.tools
    messages: list[Message] = []
    limit = max_steps()
    for turn in range(len(entry.question)):
        messages.extend(entry.turn_messages(turn))
        turn_responses: list[str] = []
        count = 0
        while True:
            req = GenRequest(
                messages=list(messages), tools=tools, params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
                request_id=f"{entry.id}-t{turn}-s{count}",
            )
            result = yield req
            if result.error or not result.completions:
                traj.responses.append(turn_responses)
                traj.error = result.error or "no completion"
                traj.messages = messages
                return traj
            raw = result.completions[0].text
            answer, reasoning = bfcl.bfcl_clean_response(raw)
            messages.append(_assistant_message(raw, answer, reasoning))
            turn_responses.append(answer)
            decoded = bfcl.decode_execute_calls_like_bfcl(answer)
            if not decoded:  # decode failed or no call: the turn ends
                break
            for name, args in decoded:
                call = ToolCall(name=name if isinstance(name, str) else str(name), arguments=args)
                messages.append(Message(role="tool", name=call.name, content=env.execute(call)))
            count += 1
            if count > limit:
                traj.force_quit = True
                break
        traj.responses.append(turn_responses)
        if traj.force_quit:
            break
    traj.messages = messages
    return traj


def run_entries(
    gen: Generator,
    entries: list[MultiTurnEntry],
    executor: BfclExecutor,
    max_tokens: int,
    on_done: Callable[[int], None] | None = None,
    batch: int = BATCH,
    where: str = "BFCL multi-turn",
) -> list[Trajectory]:
    """Run every entry; each ``generate`` call carries the next step of up to ``batch`` entries
    (an entry that finishes makes room for the next one). Trajectories come back in entry order.
    Raises ``EndpointDown`` when a whole batch fails to reach the model."""
    from looptool.shared.evaluation import _check_batch

    out: list[Trajectory | None] = [None] * len(entries)
    waiting = iter(enumerate(entries))
    live: dict[int, tuple[PyGenerator[GenRequest, GenResult, Trajectory], GenRequest, BfclEnvironment]] = {}
    done = 0

    def start_more() -> None:
        while len(live) < batch:
            nxt = next(waiting, None)
            if nxt is None:
                return
            i, e = nxt
            env = executor.open(e.involved_classes, e.initial_config, long_context(e.category))
            co = run_entry(e, env, max_tokens)
            live[i] = (co, next(co), env)

    try:
        start_more()
        while live:
            order = list(live)
            results = gen.generate([live[i][1] for i in order])
            _check_batch(results, where)
            for i, res in zip(order, results):
                co, _, env = live[i]
                try:
                    live[i] = (co, co.send(res), env)
                except StopIteration as stop:
                    out[i] = stop.value
                    del live[i]
                    env.close()
                    done += 1
                    if on_done:
                        on_done(done)
            start_more()
    finally:
        for _, _, env in live.values():
            env.close()
    return [t for t in out if t is not None]


# ---------------------------------------------------------------------------------------------
# Scoring (bfcl-eval's runner + checker)
# ---------------------------------------------------------------------------------------------


def _method_names(involved_classes: list[str]) -> set[str]:
    return set(_signatures(involved_classes))


def decode_step(response: str, methods: set[str]) -> list[str] | None:
    """One step's response as the call texts handed to bfcl-eval's checker (``None``: decoding
    failed). Calls that could not be executed safely become :data:`REFUSED_CALL`."""
    decoded = bfcl.decode_execute_calls_like_bfcl(response)
    if decoded is None:
        return None
    out = []
    for name, args in decoded:
        safe = isinstance(name, str) and name in methods and all(_IDENTIFIER.match(k) for k in args)
        out.append(bfcl.bfcl_call_text(name, args) if safe else REFUSED_CALL)
    return out


def _drop_instances(prefix: str) -> None:
    """bfcl-eval keeps class instances as module globals named after the model and entry; ours
    carry a unique prefix and are removed after the check."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    for name in [n for n in vars(multi_turn_utils) if n.startswith(prefix)]:
        del vars(multi_turn_utils)[name]


def score(entry: MultiTurnEntry, responses: Any) -> tuple[bool, dict[str, Any]]:
    """bfcl-eval's verdict for one entry's recorded responses (``Trajectory.responses``):
    ``(valid, error)``, ``error`` being the checker's result (``{}`` when valid)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import is_empty_execute_response

    if type(responses) is not list:
        return False, {"error_type": "multi_turn:inference_error", "error_message": ["no list of model responses"]}
    if len(responses) != len(entry.ground_truth):
        return False, {
            "error_type": "multi_turn:force_terminated",
            "error_message": [f"{len(responses)} turns answered, {len(entry.ground_truth)} in the ground truth"],
        }
    methods = _method_names(entry.involved_classes)
    decoded: list[list[list[str]]] = []
    for turn in responses:
        steps = []
        for response in turn:
            calls = decode_step(response, methods)
            if calls is None or is_empty_execute_response(calls):
                continue
            steps.append(calls)
        decoded.append(steps)
    model_name = f"looptool_{uuid.uuid4().hex}"  # unique: the checker's instances are global state
    try:
        result = multi_turn_checker(decoded, copy.deepcopy(entry.ground_truth), copy.deepcopy(entry.raw), entry.category, model_name)
    except Exception as exc:  # noqa: BLE001 - bfcl-eval's runner would crash; an invalid entry here
        return False, {"error_type": "multi_turn:checker_exception", "error_message": [f"{type(exc).__name__}: {exc}"]}
    finally:
        _drop_instances(model_name)
    valid = bool(result.pop("valid", False))
    return valid, ({} if valid else result)


def select_entries(category: str, limit: int = 0, exclude_functions: Iterable[str] | None = None, seed: int = 0) -> list[MultiTurnEntry]:
    """As :func:`looptool.shared.evaluation.select_entries`: entries using none of
    ``exclude_functions`` (held-out functions included), then the same seeded sample of ``limit``."""
    entries = load_entries(category)
    if exclude_functions is not None:
        banned = set(exclude_functions)
        entries = [e for e in entries if not any(f["name"] in banned for f in e.all_functions())]
    if limit and limit < len(entries):
        keep = sorted(random.Random(f"{seed}:{category}").sample(range(len(entries)), limit))
        entries = [entries[i] for i in keep]
    return entries


def undecodable_step(response: str) -> bool:
    """Tool-call markup that BFCL's ``decode_execute`` does not turn into as many calls."""
    decoded = bfcl.decode_execute_calls_like_bfcl(response)
    return decoded is None or response.count("<tool_call>") > len(decoded)


def evaluate_multi_turn(
    gen: Generator,
    category: str,
    executor: BfclExecutor,
    limit: int,
    max_tokens: int,
    exclude_functions: Iterable[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    seed: int = 0,
) -> "BfclResult":
    """One multi-turn category: correct entries, entries, entries with an undecodable step, and a
    few failures. Raises ``EndpointDown`` when a whole batch fails to reach the model."""
    from looptool.shared.bfcl_scores import CategoryResult
    from looptool.shared.evaluation import BfclResult

    entries = select_entries(category, limit, exclude_functions, seed)
    report = (
        (lambda n: on_progress(Progress(stage="evaluate", done=n, total=len(entries), message=category)))
        if on_progress
        else None
    )
    trajectories = run_entries(gen, entries, executor, max_tokens, report, where=f"BFCL {category}")
    correct = bad = 0
    failures: list[dict] = []
    for e, t in zip(entries, trajectories):
        if t.error:
            ok, err = False, {"error_type": "multi_turn:inference_error", "error_message": [t.error]}
        else:
            ok, err = score(e, t.responses)
        correct += int(ok)
        bad += int(any(undecodable_step(r) for turn in t.responses for r in turn))
        if not ok and len(failures) < 5:
            failures.append({"id": e.id, "prediction": json.dumps(t.responses)[:500], "reason": json.dumps(err, default=str)[:500]})
    return BfclResult(CategoryResult(correct, len(entries), bad), failures)


__all__ = [
    "BfclEnvironment",
    "BfclExecutor",
    "MULTI_TURN_CATEGORIES",
    "MultiTurnEntry",
    "REFUSED_CALL",
    "Trajectory",
    "decode_step",
    "evaluate_multi_turn",
    "ground_truth_calls",
    "is_multi_turn",
    "load_entries",
    "long_context",
    "parse_call_text",
    "resolve_category",
    "run_entries",
    "run_entry",
    "score",
    "select_entries",
    "undecodable_step",
]
