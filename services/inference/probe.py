"""Greedy Capability Probing (GCP): decode every training sample greedily with the freshly trained
model, score it with the shared reward, and classify it.

Classification (``classify``):

- **failed** — the greedy answer is wrong (reward check says not correct). Goes to the judge (JGLV).
- **borderline** — the greedy answer is right, but the model is not reliably right: some of the
  ``k`` sampled attempts (temperature ``spec.temperature``) are wrong, or the greedy answer's
  perplexity ``exp(-mean token logprob)`` is above ``spec.highPerplexity.absolute``. Kept for the next round
  (the paper's "high-perplexity samples"). With ``highPerplexity: {percentile: p}`` the probe marks no
  sample borderline for perplexity (the threshold needs the whole round): composition
  (``shared.compose``) applies the round's percentile to the correct greedy answers.
- **mastered** — right greedily, every sampled attempt right, perplexity at or below the threshold.

Output: one ``ProbeResult`` per sample (kind ``probe_results``), each sample carrying a lineage event
(stage ``probe``, action ``probed``, reason = the outcome; no timestamp, so re-runs are
byte-identical). Samples are probed in chunks of ``batch_size``; each finished chunk is flushed as one
part, so a crash loses at most the chunk in flight, and a cancelled chunk is dropped whole. Chunks
are handed to the backend atomically (``submit_many``), so a resumed run cuts the same batches as an
uninterrupted one and writes the same bytes (CPU). Re-running with the same ``out_uri`` skips sample ids already
written (``writer_for_uri(..., resume=True).existing_records()``) and never writes an id twice.
An already committed output is returned as is (the stage is idempotent).

Per-item problems (a prompt over the context limit, a tool whose parameters are not valid JSON
Schema, a generation error) are reported as ``ErrorInfo`` events and counted under ``errors``;
the run goes on. Those samples are not written, so a later run retries them.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Iterator

from looptool.shared import metrics
from looptool.shared.errors import InputError
from looptool.shared.generation import GenRequest, GenResult, Generator, SamplingParams
from looptool.shared.loop.manifest import ProbeSpec
from looptool.shared.records import (
    DatasetRef,
    ErrorInfo,
    Message,
    ProbeOutcome,
    ProbeResult,
    Progress,
    Sample,
    StageResult,
)
from looptool.shared.schema import ToolSchemaError, check_tool
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri

from .backends.base import Aborted, CancelToken, raise_if_aborted, split_error

KIND = "probe_results"
# Sampled attempts at temperature 0 would all be the greedy answer: 0 means the spec's default.
_SAMPLED_TEMPERATURE = ProbeSpec.model_fields["temperature"].default
_OUTCOMES = metrics.counter("inference", "probe_outcomes", "Probed samples by outcome", ["outcome"])
_PROBED = metrics.counter("inference", "probe_samples", "Samples probed (including errors)", ["status"])

EventValue = Progress | ErrorInfo | StageResult


def perplexity(mean_logprob: float) -> float:
    """exp(-mean token logprob); 1.0 when the backend reported no logprobs."""
    if not mean_logprob or not math.isfinite(mean_logprob):
        return 1.0
    return float(min(math.exp(-mean_logprob), 1e12))


def classify(
    greedy_correct: bool, sampled_correct: int, sampled_total: int, ppl: float, high_perplexity: float
) -> tuple[ProbeOutcome, str]:
    """The GCP rule; returns the outcome and a short explanation."""
    if not greedy_correct:
        return ProbeOutcome.FAILED, "greedy answer wrong"
    if sampled_total and sampled_correct < sampled_total:
        return ProbeOutcome.BORDERLINE, f"greedy right, {sampled_correct}/{sampled_total} sampled attempts right"
    if ppl > high_perplexity:
        return ProbeOutcome.BORDERLINE, f"greedy right but unsure: perplexity {ppl:.3f} > {high_perplexity}"
    return ProbeOutcome.MASTERED, "greedy right" + (f", {sampled_total}/{sampled_total} sampled right" if sampled_total else "")


def sample_seed(sample_id: str, round: int) -> int:
    return int(hashlib.sha256(f"{sample_id}:{round}".encode()).hexdigest()[:8], 16)


def probe_messages(sample: Sample) -> list[Message]:
    # ``shared.prompt.sample_chat`` = build_chat(context, tools, date); backends call build_chat on
    # (messages, tools), so the date (when the sample has one) travels as a system message.
    date = sample.meta.get("date", "")
    msgs = list(sample.context)
    if date:
        msgs = [Message(role="system", content=f"Current date: {date}")] + msgs
    return msgs


def _tool_problem(sample: Sample, cache: dict[str, str]) -> str:
    """'' when every tool is usable; else the first problem. An empty description is tolerated."""
    for tool in sample.tools:
        key = tool.model_dump_json()
        if key not in cache:
            try:
                check_tool(tool)
                cache[key] = ""
            except ToolSchemaError as exc:
                cache[key] = "" if exc.field == "description" else str(exc)
        if cache[key]:
            return cache[key]
    return ""


def _counts_of(records) -> dict[str, int]:
    counts = {o.value: 0 for o in ProbeOutcome}
    for r in records:
        counts[r.get("outcome", "failed")] = counts.get(r.get("outcome", "failed"), 0) + 1
    return counts


def run_probe(
    gen: Generator,
    dataset: DatasetRef,
    out_uri: str,
    spec: ProbeSpec,
    round: int,
    *,
    batch_size: int = 16,
    s3=None,
    cancel: CancelToken | None = None,
) -> Iterator[EventValue]:
    from looptool.shared.reward import score_sample

    t0 = time.monotonic()
    store, key = split_uri(out_uri, s3)
    if dataset_exists(store, key):  # finished by an earlier run: idempotent
        done_ds = open_dataset(out_uri, s3)
        counts = _counts_of(done_ds.iter_dicts())
        yield Progress(stage="probe", done=len(done_ds), total=len(done_ds), message="already probed")
        yield StageResult(outputs=[done_ds.ref], counts={**counts, "errors": 0, "resumed": len(done_ds)})
        return
    src = open_dataset(dataset, s3)
    if src.manifest.get("kind") not in ("samples", None):
        raise InputError("dataset", f"{dataset.uri} holds {src.manifest.get('kind')!r} records, not samples",
                         "pass the samples dataset to probe")
    total = len(src)
    if total == 0:
        raise InputError("dataset", f"{dataset.uri} is empty (0 samples); nothing to probe",
                         "check the synthesis stage's output")
    batch_size = max(1, batch_size)
    writer = writer_for_uri(out_uri, s3, kind=KIND, resume=True, part_size=1 << 30,
                            meta={"stage": "probe", "round": round, "source": dataset.uri})
    seen: set[str] = set()
    counts = {o.value: 0 for o in ProbeOutcome}
    ppl_sum = 0.0
    for r in writer.existing_records():  # streamed: only ids and tallies stay in memory
        seen.add(r["sample"]["id"])
        counts[r.get("outcome", "failed")] += 1
        ppl_sum += float(r.get("perplexity", 1.0))
    counts.update(errors=0, resumed=len(seen), duplicates=0)
    tool_cache: dict[str, str] = {}
    if seen:
        yield Progress(stage="probe", done=len(seen), total=total, message=f"resuming: {len(seen)} samples already probed")

    emitted: set[str] = set()
    consumed = 0  # source records read so far (progress)

    def pending() -> Iterator[Sample]:
        nonlocal consumed
        for s in src.iter(Sample):
            consumed += 1
            s = s.with_id()
            if s.id in emitted:
                counts["duplicates"] += 1
                continue
            emitted.add(s.id)
            if s.id in seen:
                continue
            yield s

    chunk: list[Sample] = []
    try:
        stream = pending()
        while True:
            chunk.clear()
            for s in stream:
                chunk.append(s)
                if len(chunk) >= batch_size:
                    break
            if not chunk:
                break
            if cancel is not None and cancel.cancelled:
                break
            try:
                events, results = _probe_chunk(gen, chunk, spec, round, score_sample, tool_cache)
            except Aborted:
                return  # the finally below keeps what earlier chunks wrote
            if cancel is not None and cancel.cancelled:
                return
            written = {r.sample.id for r in results}
            for ev in events:
                if ev.item_id in written:  # the sampled attempts failed; the greedy result was kept
                    counts["sampled_errors"] = counts.get("sampled_errors", 0) + 1
                else:
                    counts["errors"] += 1
                    _PROBED.labels("error").inc()
                yield ev
            for r in results:
                writer.write(r)
                counts[r.outcome.value] += 1
                ppl_sum += r.perplexity
                _OUTCOMES.labels(r.outcome.value).inc()
                _PROBED.labels("ok").inc()
            done = consumed
            writer.flush()  # one part per chunk: a crash loses at most the chunk in flight
            probed = counts["mastered"] + counts["borderline"] + counts["failed"]
            yield Progress(
                stage="probe",
                done=done,
                total=total,
                message=f"{probed} probed, {counts['errors']} errors",
                metrics={k: float(counts[k]) for k in ("mastered", "borderline", "failed", "errors")},
            )
        if cancel is not None and cancel.cancelled:
            return
        ref = writer.commit()
    finally:
        if writer._committed is None:  # noqa: SLF001 - crash / cancel: keep finished work for resume
            try:
                writer.flush()
            except Exception:  # pragma: no cover - best effort on the way out
                pass
    probed = counts["mastered"] + counts["borderline"] + counts["failed"]
    yield StageResult(
        outputs=[ref],
        counts=counts,
        metrics={
            "greedy_accuracy": (counts["mastered"] + counts["borderline"]) / probed if probed else 0.0,
            "mean_perplexity": ppl_sum / probed if probed else 0.0,
            "seconds": time.monotonic() - t0,
        },
    )


def _probe_chunk(gen, chunk: list[Sample], spec: ProbeSpec, round: int, score_sample, tool_cache):
    events: list[ErrorInfo] = []
    results: list[ProbeResult] = []
    ok: list[Sample] = []
    for s in chunk:
        problem = _tool_problem(s, tool_cache)
        if problem:
            events.append(ErrorInfo(code="SCHEMA_VIOLATION", message=problem, field="tools", item_id=s.id))
        else:
            ok.append(s)
    if not ok:
        return events, results
    requests: list[GenRequest] = []
    for s in ok:
        msgs = probe_messages(s)
        requests.append(GenRequest(msgs, s.tools, SamplingParams(temperature=0.0, max_tokens=spec.maxTokens), s.id))
        if spec.k > 0:
            params = SamplingParams(
                temperature=spec.temperature or _SAMPLED_TEMPERATURE, max_tokens=spec.maxTokens, n=spec.k, seed=sample_seed(s.id, round)
            )
            requests.append(GenRequest(msgs, s.tools, params, s.id + "#sampled"))
    outs: list[GenResult] = gen.generate(requests)
    raise_if_aborted(outs)  # cancelled / deadline: the chunk is not written, a resumed run redoes it
    step = 2 if spec.k > 0 else 1
    for i, s in enumerate(ok):
        greedy = outs[i * step]
        sampled = outs[i * step + 1] if spec.k > 0 else None
        if greedy.error or not greedy.completions:
            code, msg = split_error(greedy.error or "INTERNAL: no completion returned")
            events.append(ErrorInfo(code=code, message=msg, item_id=s.id))
            continue
        comp = greedy.completions[0]
        try:
            rr = score_sample(comp.text, s)
            sampled_ok = sampled_n = 0
            if sampled is not None and not sampled.error:
                for c in sampled.completions:
                    sampled_n += 1
                    sampled_ok += int(score_sample(c.text, s).correct)
        except ToolSchemaError as exc:
            events.append(ErrorInfo(code="SCHEMA_VIOLATION", message=str(exc), field="tools", item_id=s.id))
            continue
        if sampled is not None and sampled.error:
            code, msg = split_error(sampled.error)
            events.append(ErrorInfo(code=code, message=f"sampled attempts failed (greedy kept): {msg}", item_id=s.id))
        ppl = perplexity(comp.mean_logprob)
        outcome, why = classify(rr.correct, sampled_ok, sampled_n, ppl, spec.highPerplexity.fixed())
        sample = s.model_copy(deep=True)
        sample.add_lineage(round, "probe", "probed", reason=outcome.value)
        results.append(
            ProbeResult(
                sample=sample,
                prediction=comp.text,
                predicted_calls=comp.tool_calls,
                parse_error=comp.parse_error,
                correct=rr.correct,
                score=rr.score,
                reason=rr.reason if not rr.correct else why,
                perplexity=ppl,
                sampled_correct=sampled_ok,
                sampled_total=sampled_n,
                outcome=outcome,
            )
        )
    return events, results
