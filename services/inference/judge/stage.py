"""The judge stage: one ``JudgedSample`` per failed probe result (kind ``verdicts``), resumable,
written chunk by chunk; relabel and unclear lineage.

A judge whose verdicts are CPU-bound pure functions of one result (the grounding judge: ``judge_one``)
runs in ``processes`` worker processes (``shared.workers``); a model judge waits on its backend and
stays in this process. Verdicts come back in input order, so the output does not depend on it.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

from looptool.shared import metrics
from looptool.shared.errors import InputError
from looptool.shared.loop.manifest import JudgeSpec
from looptool.shared.records import (
    DatasetRef,
    Decision,
    ErrorInfo,
    JudgedSample,
    ProbeOutcome,
    ProbeResult,
    Progress,
    StageResult,
    ToolCall,
    Verdict,
    canonical_json,
)
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri
from looptool.shared.workers import WorkerCrashed, WorkerPool, worker_state

from ..backends.base import Aborted, CancelToken
from .candidates import CandidateSampler, settle_with_candidates
from .grounding import GroundingJudge
from .verdicts import CANDIDATE_REASON, JUDGE_ERROR, Judge

KIND = "verdicts"
_VERDICTS = metrics.counter("inference", "judge_verdicts", "Judge verdicts by decision", ["decision"])

EventValue = Progress | ErrorInfo | StageResult

def _worker_init(judge: GroundingJudge) -> GroundingJudge:
    return judge


def _worker_verdict(result: ProbeResult) -> Verdict:
    judge: GroundingJudge = worker_state()
    return judge.judge_one(result)


class PooledJudge:
    """``judge``'s per-result verdicts computed in worker processes (each with its own copy of it)."""

    def __init__(self, judge: GroundingJudge, pool: WorkerPool):
        self.inner, self.pool, self.name = judge, pool, judge.name

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        if len(results) < 2:
            return self.inner.judge(results)
        return self.pool.map(_worker_verdict, [(r,) for r in results])


def _lineage_for(js: JudgedSample, round: int, unclear_policy: str) -> None:
    v, sample = js.verdict, js.probe.sample
    if v.decision == Decision.LABEL_WRONG and v.corrected:
        old = [c.model_dump(exclude={"id"}) for c in sample.reference]
        sample.meta["label_before_judge"] = canonical_json(old)
        sample.reference = [ToolCall(name=c.name, arguments=c.arguments) for c in v.corrected]
        sample.reference_text = ""
        sample.add_lineage(round, "judge", "relabelled", reason=f"label_wrong: {v.reason}"[:500])
    elif v.decision == Decision.UNCLEAR:
        action = "dropped" if unclear_policy == "drop" else "kept"
        sample.add_lineage(round, "judge", action, reason=f"unclear: {v.reason}"[:500])


def run_judge(
    judge: Judge,
    probe_results: DatasetRef,
    out_uri: str,
    spec: JudgeSpec,
    round: int,
    *,
    batch_size: int = 8,
    s3=None,
    cancel: CancelToken | None = None,
    candidates: CandidateSampler | None = None,
    processes: int = 0,
) -> Iterator[EventValue]:
    """Judge every failed probe result; ``candidates`` re-judges ``unclear`` ones with sampled answers.
    ``processes`` >= 1: a grounding judge runs in that many worker processes. A worker that dies is
    retried once on a fresh pool, then the stage ends with a ``WORKER_CRASHED`` error (finished chunks kept)."""
    t0 = time.monotonic()
    decisions = [d.value for d in Decision]
    store, key = split_uri(out_uri, s3)

    def recount(records: Iterable[dict[str, Any]]) -> tuple[set[str], dict[str, int]]:
        """(sample ids, counts per decision and settled_by_candidate) of already written verdicts."""
        ids: set[str] = set()
        tally = {**dict.fromkeys(decisions, 0), "settled_by_candidate": 0}
        for r in records:
            ids.add(r["probe"]["sample"]["id"])
            tally[r["verdict"]["decision"]] += 1
            tally["settled_by_candidate"] += str(r["verdict"].get("reason", "")).startswith(CANDIDATE_REASON)
        return ids, tally

    if dataset_exists(store, key):
        ds = open_dataset(out_uri, s3)
        _, counts = recount(ds.iter_dicts())
        yield Progress(stage="judge", done=len(ds), total=len(ds), message="already judged")
        yield StageResult(outputs=[ds.ref], counts={**counts, "judged": len(ds), "errors": 0, "resumed": len(ds)})
        return
    src = open_dataset(probe_results, s3)
    if src.manifest.get("kind") not in ("probe_results", None):
        raise InputError("probe_results", f"{probe_results.uri} holds {src.manifest.get('kind')!r} records, not probe_results",
                         "pass the Probe stage's output")
    writer = writer_for_uri(out_uri, s3, kind=KIND, resume=True, part_size=1 << 30,
                            meta={"stage": "judge", "round": round, "judge": judge.name, "source": probe_results.uri})
    seen, counts = recount(writer.existing_records())
    counts.update(errors=0, resumed=len(seen), not_failed=0)
    total_failed = 0
    for row in src.iter_dicts():  # a cheap first pass for the progress total
        total_failed += row.get("outcome") == ProbeOutcome.FAILED.value
    done = len(seen)
    if not total_failed:
        yield Progress(stage="judge", done=0, total=0, message="no failed probe results; nothing to judge")
    chunk: list[ProbeResult] = []
    pool: WorkerPool | None = None
    if processes >= 1 and isinstance(judge, GroundingJudge):
        pool = WorkerPool(processes, _worker_init, (judge,), preload=[__name__])
        judge = PooledJudge(judge, pool)

    def judge_chunk() -> Iterator[EventValue]:
        """Judge, write and flush the whole chunk, then report: a chunk is written whole or not at all."""
        nonlocal done
        if cancel is not None and cancel.cancelled:
            raise Aborted("CANCELLED", "judge stage cancelled")
        verdicts, settled = settle_with_candidates(judge, chunk, judge.judge(chunk), candidates)
        counts["settled_by_candidate"] += settled
        if cancel is not None and cancel.cancelled:
            raise Aborted("CANCELLED", "judge stage cancelled")
        errors: list[ErrorInfo] = []
        for pr, v in zip(chunk, verdicts):
            js = JudgedSample(probe=pr.model_copy(deep=True), verdict=v)
            _lineage_for(js, round, spec.unclearPolicy)
            writer.write(js)
            counts[v.decision.value] += 1
            _VERDICTS.labels(v.decision.value).inc()
            if v.reason.startswith(JUDGE_ERROR):
                counts["errors"] += 1
                errors.append(ErrorInfo(code="JUDGE_ERROR", message=v.reason[:500], item_id=v.sample_id))
        writer.flush()
        done += len(chunk)
        chunk.clear()
        yield from errors
        yield Progress(
            stage="judge", done=done, total=total_failed,
            message=", ".join(f"{d} {counts[d]}" for d in decisions),
            metrics={d: float(counts[d]) for d in decisions},
        )

    try:
        for r in src.iter(ProbeResult):
            if r.outcome != ProbeOutcome.FAILED:
                counts["not_failed"] += 1
                continue
            sid = r.sample.id or r.sample.content_id()
            r.sample.id = sid
            if sid in seen:
                continue
            seen.add(sid)
            chunk.append(r)
            if len(chunk) >= max(1, batch_size):
                yield from judge_chunk()
        if chunk:
            yield from judge_chunk()
        if cancel is not None and cancel.cancelled:
            return
        ref = writer.commit()
    except Aborted:
        return  # earlier chunks are flushed; a resumed run redoes this one
    except WorkerCrashed as exc:
        yield ErrorInfo(code="WORKER_CRASHED", message=str(exc), item_id="")
        return
    finally:
        if pool is not None:
            pool.close()
        if writer._committed is None:  # noqa: SLF001 - keep finished work for a resumed run
            try:
                writer.flush()
            except Exception:  # pragma: no cover
                pass
    judged = sum(counts[d] for d in decisions)
    yield StageResult(
        outputs=[ref],
        counts={**counts, "judged": judged},
        metrics={
            "label_wrong_rate": counts["label_wrong"] / judged if judged else 0.0,
            "seconds": time.monotonic() - t0,
        },
    )
