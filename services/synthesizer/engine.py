"""One dialogue (Planner → User → Assistant ⇄ Tool), the quality filters, and the synthesis run.

Determinism: dialogue ``i`` is a pure function of ``(seed, i)``, the toolset and the config (its
rng is seeded by ``sha256(seed:i)``, its tool-simulator session by the same number), so the output
does not depend on concurrency: dialogues are produced concurrently but filtered, written and
streamed in index order.

Execution: programmatic agents are CPU-bound Python, so with ``processes`` >= 1 they run in that many
worker processes (``shared.workers``; each builds its own agents and tool backend: an embedded
simulator of its own, or its own channel to the remote one); llm agents wait on the inference
server, so they run on ``concurrency`` threads. Both give the same bytes.

Resume: the dataset is written with ``resume=True`` in parts of ``part_size`` dialogues; a
restarted run reads the parts already flushed, rebuilds the dedup state from them and continues
after the highest finished index, producing the identical dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from looptool.shared import metrics
from looptool.shared.records import DatasetRef, Dialog, ErrorInfo, Message, Progress, StageResult, Tool, ToolCall, content_key
from looptool.shared.workers import WorkerCrashed, WorkerPool, worker_state

from .agents import Agents, NeedState, ProgrammaticAgents, ToolOutcome, _error_type
from .config import SynthesisConfig
from .filters import FILTERS, Deduper, check_calls, check_turns, first_query

DIALOGS = metrics.counter("synthesizer", "dialogs", "dialogues synthesized, by outcome", ["outcome"])
REJECTIONS = metrics.counter("synthesizer", "rejections", "dialogues rejected, by filter", ["filter"])
DIALOG_SECONDS = metrics.histogram("synthesizer", "dialog_seconds", "time to synthesize one dialogue")
TURNS = metrics.counter("synthesizer", "assistant_turns", "assistant turns, by kind", ["kind"])


class ToolBackend(Protocol):
    def open_session(self, tools: list[Tool], mode: str = ..., environment: str = ..., initial_state: Any = ..., seed: int = ...) -> tuple[str, str]: ...

    def execute(self, session_id: str, call: ToolCall) -> Any: ...

    def close_session(self, session_id: str) -> None: ...


class LocalToolBackend:
    """An in-process :class:`ToolSimulator` with the client's interface (``toolsim_address: embedded``)."""

    def __init__(self, sim: Any = None):
        from looptool.services.toolsim.simulator import ToolSimulator

        self.sim = sim or ToolSimulator()

    def open_session(self, tools, mode="auto", environment="", initial_state=None, seed=0):
        s = self.sim.open_session(tools, mode, environment, initial_state, seed)
        return s.id, s.mode

    def execute(self, session_id, call):
        return self.sim.execute(session_id, call)

    def close_session(self, session_id):
        self.sim.close_session(session_id)


BackendFactory = Callable[[], ToolBackend]


def worker_backend_factory(backend: ToolBackend) -> BackendFactory | None:
    """A picklable callable that builds, in a worker process, a backend answering like ``backend``;
    None when there is none (the run then stays on threads). A backend may offer its own as
    ``backend.worker_factory()``; a remote simulator's client is passed by the caller, who knows its
    address and credentials (``iter_synthesis(backend_factory=...)``)."""
    custom = getattr(backend, "worker_factory", None)
    if callable(custom):
        return custom()
    if type(backend) is LocalToolBackend and getattr(backend.sim, "generator", None) is None:
        return LocalToolBackend  # sessions are seeded per dialogue: a simulator per worker answers the same
    return None


@dataclass
class _WorkerRun:
    """A synthesis worker's state for one run (built by each worker on its first task of the run)."""

    toolset: list[Tool]
    cfg: SynthesisConfig
    seed: int
    round: int
    agents: Agents
    backend: ToolBackend


def _worker_init(toolset: list[Tool], cfg: SynthesisConfig, seed: int, round: int, agents: Agents,
                 backend_factory: BackendFactory) -> _WorkerRun:
    return _WorkerRun(toolset, cfg, seed, round, agents, backend_factory())


def _worker_dialogs(indices: list[int]) -> list["Outcome"]:
    st: _WorkerRun = worker_state()
    return [synthesize_dialog(i, st.seed, st.toolset, st.cfg, st.agents, st.backend, st.round) for i in indices]


_TASK_DIALOGS = 4  # dialogues per worker task: a task's hand-off costs about a tenth of a dialogue


def _chunks(items: Iterable[int], n: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for i in items:
        chunk.append(i)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _threaded(fn: Callable[[int], "Outcome"], items: Iterable[int], threads: int) -> Iterator["Outcome"]:
    """``fn(i)`` on ``threads`` threads, results in input order, 2 per thread in flight."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="synth") as pool:
        pending: deque[Future] = deque()
        feed = iter(items)
        try:
            while True:
                while len(pending) < 2 * threads:
                    i = next(feed, None)
                    if i is None:
                        break
                    pending.append(pool.submit(fn, i))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def dialog_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


@dataclass
class Outcome:
    index: int
    dialog: Dialog | None = None
    reject: str = ""  # filter name
    reason: str = ""
    error: ErrorInfo | None = None
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _dialog_id(messages: list[Message], tools: list[Tool]) -> str:
    return content_key({"m": [m.model_dump() for m in messages], "t": [t.name for t in tools]}, 20, prefix="d-")


def synthesize_dialog(index: int, seed: int, toolset: list[Tool], cfg: SynthesisConfig, agents: Agents,
                      backend: ToolBackend, round: int = 0) -> Outcome:
    """Run the multi-agent simulation for dialogue ``index``; never raises for per-item problems."""
    start = time.perf_counter()
    dseed = dialog_seed(seed, index)
    rng = random.Random(dseed)
    tools = rng.sample(toolset, min(cfg.tools_per_dialog, len(toolset))) if len(toolset) > cfg.tools_per_dialog else list(toolset)
    date = cfg.date or f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    stats: dict[str, int] = {}
    try:
        plan = agents.plan(tools, rng)
    except Exception as exc:  # noqa: BLE001
        return Outcome(index, error=ErrorInfo(code="PLANNER_FAILED", message=str(exc), item_id=str(index)), reject="broken_turn",
                       reason=f"planner failed: {exc}")
    if plan.source.endswith("fallback"):
        stats["planner_fallback"] = 1
    state_init = dict(cfg.initial_state)
    if cfg.tool_error_rate > 0:
        state_init["error_rate"] = cfg.tool_error_rate
    try:
        session, tool_mode = backend.open_session(tools, mode=cfg.tool_mode, environment=cfg.environment,
                                                  initial_state=state_init, seed=dseed & 0x7FFFFFFFFFFFFFFF)
    except Exception as exc:  # noqa: BLE001 - simulator unreachable / rejected the tools
        return Outcome(index, error=ErrorInfo(code="TOOLSIM_FAILED", message=f"open session: {_rpc_message(exc)}", item_id=str(index)))
    messages: list[Message] = []
    turn_kinds: dict[str, str] = {}
    meta: dict[str, str] = {"index": str(index), "seed": str(seed), "agents": agents.name, "date": date,
                            "tool_mode": tool_mode, "round": str(round)}
    call_counter = 0
    try:
        for ni, need in enumerate(plan.needs):
            messages.append(Message(role="user", content=agents.user_request(need, tools, rng, first=ni == 0)))
            state = NeedState(need)
            for step in range(cfg.max_steps):
                turn = agents.assistant(messages, tools, state, rng, date)
                if turn.error:
                    return Outcome(index, reject="broken_turn", reason=turn.error, stats=stats,
                                   error=ErrorInfo(code="UNPARSEABLE_TURN", message=turn.error, item_id=str(index),
                                                   field=f"messages.{len(messages)}"))
                if not turn.calls and not turn.text.strip():
                    return Outcome(index, reject="broken_turn", reason="empty assistant turn", stats=stats)
                pos = len(messages)
                calls = []
                for c in turn.calls:
                    calls.append(ToolCall(name=c.name, arguments=c.arguments, id=f"call_{call_counter}"))
                    call_counter += 1
                messages.append(Message(role="assistant", content="" if calls else turn.text.strip(), tool_calls=calls))
                if turn.disagreement:
                    meta[f"disagreement.{pos}"] = turn.votes or "1"
                    stats["disagreement"] = stats.get("disagreement", 0) + 1
                if calls:
                    kind = "parallel" if len(calls) > 1 else "call"
                    turn_kinds[str(pos)] = kind
                    TURNS.labels(kind).inc()
                    outcomes = []
                    for c in calls:
                        res = backend.execute(session, c)
                        out = ToolOutcome(c, res.content, res.is_error, _error_type(res.content) if res.is_error else "")
                        outcomes.append(out)
                        messages.append(Message(role="tool", name=c.name, tool_call_id=c.id, content=res.content))
                        if res.is_error:
                            stats["tool_errors"] = stats.get("tool_errors", 0) + 1
                    state.last = outcomes
                    state.outcomes.extend(outcomes)
                    continue
                prev = messages[pos - 1].role if pos else "user"
                if need.kind == "clarification" and not state.clarified and need.missing and not state.outcomes:
                    turn_kinds[str(pos)] = "clarification"
                    TURNS.labels("clarification").inc()
                    messages.append(Message(role="user", content=agents.user_answer(need, messages[-1].content, rng)))
                    state.clarified = True
                    continue
                kind = "summary" if prev == "tool" else ("no_tool" if need.kind == "no_tool" else "text")
                turn_kinds[str(pos)] = kind
                TURNS.labels(kind).inc()
                break
            else:
                return Outcome(index, reject="broken_turn", reason=f"no final answer within {cfg.max_steps} assistant turns", stats=stats)
            if "user_fallback" in need.notes:
                stats["user_fallback"] = stats.get("user_fallback", 0) + 1
    except Exception as exc:  # noqa: BLE001 - tool simulator failure mid-dialogue: a per-item error
        return Outcome(index, error=ErrorInfo(code="TOOLSIM_FAILED", message=_rpc_message(exc), item_id=str(index)), stats=stats)
    finally:
        try:
            backend.close_session(session)
        except Exception:  # noqa: BLE001
            pass
    plan_dict = plan.to_dict() | {"turn_kinds": turn_kinds}
    dialog = Dialog(id=_dialog_id(messages, tools), messages=messages, tools=tools, plan=plan_dict, meta=meta)
    return Outcome(index, dialog=dialog, stats=stats, seconds=time.perf_counter() - start)


def _rpc_message(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            return f"{exc.code().name}: {details()}"  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            pass
    return f"{exc.__class__.__name__}: {exc}"


def filter_outcome(out: Outcome, deduper: Deduper) -> Outcome:
    """Apply the quality filters (in index order, for the dedup state)."""
    if out.dialog is None:
        return out
    reason = check_calls(out.dialog)
    if reason:
        out.reject, out.reason = "invalid_call", reason
        return out
    reason = check_turns(out.dialog)
    if reason:
        out.reject, out.reason = "broken_turn", reason
        return out
    q = first_query(out.dialog)
    if deduper.seen(q):
        out.reject, out.reason = "duplicate", f"near-identical user query: {q[:80]!r}"
        return out
    deduper.add(q)
    return out


Event = Progress | Dialog | ErrorInfo | StageResult


def iter_synthesis(
    toolset: list[Tool],
    num_dialogues: int,
    seed: int,
    out_uri: str,
    cfg: SynthesisConfig,
    agents: Agents,
    backend: ToolBackend,
    concurrency: int = 1,
    round: int = 0,
    s3: Any = None,
    cancel: threading.Event | None = None,
    meta: dict[str, Any] | None = None,
    stop_after: int | None = None,
    first_index: int = 0,
    processes: int = 0,
    backend_factory: BackendFactory | None = None,
) -> Iterator[Event]:
    """Synthesize ``num_dialogues`` dialogues into the dataset at ``out_uri``; yields progress,
    each kept dialogue (in index order), per-item errors, and finally the StageResult.

    ``stop_after`` (tests: simulate a crash) stops after that many indices without flushing or
    committing. ``first_index``: a shard of a larger run, dialogues ``first_index ..
    first_index + num_dialogues - 1`` (dedup within the shard; the stage merges shards).
    A committed dataset at ``out_uri`` is returned as is (the stage is idempotent).

    ``processes`` >= 1 runs programmatic agents in that many worker processes, each with the backend
    ``backend_factory`` (default :func:`worker_backend_factory`) builds; without one, or with llm
    agents, ``concurrency`` threads run the dialogues. A worker process that dies is replaced and its
    work redone once; a second death ends the run with ``WORKER_CRASHED`` (finished parts are kept).
    """
    from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri

    if not toolset:
        raise ValueError("toolset: no tools; import a toolset first (looptool tools import)")
    store, key = split_uri(out_uri, s3)
    if dataset_exists(store, key):
        ds = open_dataset(out_uri, s3)
        counts: dict[str, int] = dict(ds.manifest.get("meta", {}).get("counts", {}))
        counts["kept"] = len(ds)
        yield StageResult(outputs=[ds.ref], counts=counts, metrics={"reused": 1.0})
        return
    run_meta = {"seed": seed, "num_dialogues": num_dialogues, "config": cfg.model_dump(mode="json"), "round": round, **(meta or {})}
    if first_index:
        run_meta["first_index"] = first_index
    writer = writer_for_uri(out_uri, s3, kind="dialogs", fmt="jsonl", part_size=cfg.part_size, resume=True, meta=run_meta)
    deduper = Deduper(cfg.dedup_jaccard)
    resumed, start_index = 0, first_index
    for rec in writer.existing_records():
        d = Dialog.model_validate(rec)
        deduper.add(first_query(d))
        resumed += 1
        start_index = max(start_index, int(d.meta.get("index", "-1")) + 1)
    counts = {"requested": num_dialogues, "resumed": resumed, "kept": resumed, "errors": 0, "processed": 0}
    counts.update({f"rejected.{f}": 0 for f in FILTERS})
    todo = list(range(start_index, first_index + num_dialogues))
    if stop_after is not None:
        todo = todo[:stop_after]
    t0 = time.perf_counter()
    yield Progress(stage="synthesize", done=start_index - first_index, total=num_dialogues, message=f"resuming at {start_index}" if resumed else "started")
    consecutive_errors = 0
    abort_after = max(10, 2 * concurrency)
    turns_total = 0

    def feed() -> Iterator[int]:
        for i in todo:
            if cancel is not None and cancel.is_set():
                return  # the dialogues already started are still written
            yield i

    factory = None
    if processes >= 1 and isinstance(agents, ProgrammaticAgents):  # llm agents wait on the network: threads
        factory = backend_factory or worker_backend_factory(backend)
    with contextlib.ExitStack() as stack:
        results: Iterator[Outcome]
        if factory is not None:
            pool = stack.enter_context(WorkerPool(processes, _worker_init, (toolset, cfg, seed, round, agents, factory),
                                                  preload=[__name__, "looptool.services.toolsim.simulator"]))
            chunks = pool.imap(_worker_dialogs, ((c,) for c in _chunks(feed(), _TASK_DIALOGS)), window=4 * processes,
                               label=lambda a: f"dialogues {a[0][0]}-{a[0][-1]}")
            stack.enter_context(contextlib.closing(chunks))  # type: ignore[type-var]
            results = (out for chunk in chunks for out in chunk)
        else:
            results = _threaded(lambda i: synthesize_dialog(i, seed, toolset, cfg, agents, backend, round), feed(),
                                max(1, concurrency))
        stack.enter_context(contextlib.closing(results))  # type: ignore[type-var]
        crashed: list[WorkerCrashed] = []

        def guarded(it: Iterator[Outcome]) -> Iterator[Outcome]:
            try:
                yield from it
            except WorkerCrashed as exc:  # the results before it are written; a rerun resumes after them
                crashed.append(exc)

        for out in guarded(results):
            i = out.index
            counts["processed"] += 1
            DIALOG_SECONDS.observe(out.seconds)
            for k, v in out.stats.items():
                counts[k] = counts.get(k, 0) + v
            if out.error is not None:
                yield out.error
            if out.dialog is None and not out.reject:
                counts["errors"] += 1
                consecutive_errors += 1
                DIALOGS.labels("error").inc()
                if consecutive_errors >= abort_after:
                    writer.flush()
                    _settle(writer)
                    yield ErrorInfo(code="ABORTED", message=f"{consecutive_errors} dialogues in a row failed; last: {out.error.message if out.error else ''}")
                    return
                continue
            consecutive_errors = 0
            out = filter_outcome(out, deduper)
            if out.reject:
                counts[f"rejected.{out.reject}"] = counts.get(f"rejected.{out.reject}", 0) + 1
                REJECTIONS.labels(out.reject).inc()
                DIALOGS.labels("rejected").inc()
            else:
                assert out.dialog is not None
                writer.write(out.dialog)
                counts["kept"] += 1
                turns_total += sum(1 for m in out.dialog.messages if m.role == "assistant")
                DIALOGS.labels("kept").inc()
                yield out.dialog
            elapsed = time.perf_counter() - t0
            yield Progress(stage="synthesize", done=i + 1 - first_index, total=num_dialogues,
                           metrics={"kept": counts["kept"], "dialogs_per_minute": 60 * counts["processed"] / elapsed if elapsed else 0.0})
        if crashed:
            writer.flush()
            _settle(writer)
            yield ErrorInfo(code="WORKER_CRASHED", message=str(crashed[0]))
            return
        if cancel is not None and cancel.is_set():
            writer.flush()
            _settle(writer)
            yield ErrorInfo(code="CANCELLED", message="synthesis cancelled; finished dialogues are kept for a resumed run")
            return
    if stop_after is not None and start_index + len(todo) < first_index + num_dialogues:
        # a simulated crash: the parts already handed to storage land, the buffer is lost
        _settle(writer)
        return
    elapsed = time.perf_counter() - t0
    writer.meta["counts"] = counts
    ref: DatasetRef = writer.commit()
    yield StageResult(
        outputs=[ref],
        counts=counts,
        metrics={
            "seconds": elapsed,
            "dialogs_per_minute": 60 * counts["processed"] / elapsed if elapsed > 0 else 0.0,
            "keep_rate": (counts["kept"] - resumed) / counts["processed"] if counts["processed"] else 0.0,
            "assistant_turns_per_dialog": turns_total / max(1, counts["kept"] - resumed),
        },
    )


def _settle(writer: Any) -> None:
    """Wait for a part upload still in flight and stop the writer's upload thread (the writer is
    abandoned uncommitted; a resumed run adopts its parts)."""
    for name in ("_wait_pending", "_shutdown"):
        fn = getattr(writer, name, None)
        if callable(fn):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a failed upload is simply not resumed
                pass


def run_synthesis(*args: Any, **kw: Any) -> tuple[StageResult | None, list[Dialog], list[ErrorInfo]]:
    """Consume :func:`iter_synthesis`: (result or None when stopped early, streamed dialogues, errors)."""
    result, dialogs, errors = None, [], []
    for ev in iter_synthesis(*args, **kw):
        if isinstance(ev, StageResult):
            result = ev
        elif isinstance(ev, Dialog):
            dialogs.append(ev)
        elif isinstance(ev, ErrorInfo):
            errors.append(ev)
    return result, dialogs, errors
