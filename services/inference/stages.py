"""Probe and Judge runs for the inference server: the request's fields merged over its spec, the
default output URI, the model leases, and the rule that a stage stream ends in a result.

``StageRuns.probe`` / ``.judge`` take records (specs, ``DatasetRef``) and yield stage events
(``Progress`` / ``ErrorInfo`` per item / one ``StageResult``); ``server`` converts protobuf. A run
that stops before its result because the caller left ends quietly; one whose deadline passed
raises ``DEADLINE_EXCEEDED``, any other early stop ``ABORTED`` (finished chunks are kept).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

from looptool.shared.config import LoopToolConfig
from looptool.shared.errors import ServiceError
from looptool.shared.loop.manifest import JudgeSpec, ProbeSpec
from looptool.shared.records import DatasetRef, ErrorInfo, Progress, StageResult, content_key
from looptool.shared.workers import pool_size

from .backends import Backend, BoundGenerator, CancelToken
from .judge import CandidateSampler, GroundingJudge, Judge, LLMJudge, PanelJudge, run_judge
from .pool import ModelPool
from .probe import run_probe

StageEvent = Progress | ErrorInfo | StageResult


@dataclass(frozen=True)
class Call:
    """What a run needs from its RPC: the cancel token (set when the RPC ends), the deadline
    (``time.monotonic()``, None: none), whether the caller is still there, whether the deadline passed."""

    cancel: CancelToken
    deadline: float | None
    active: Callable[[], bool]
    deadline_passed: Callable[[], bool]


def probe_spec(config_json: str, k: int = 0, temperature: float = 0.0, max_tokens: int = 0) -> ProbeSpec:
    """``config_json`` (a ``ProbeSpec``) with the request's non-zero fields on top."""
    spec = ProbeSpec.model_validate_json(config_json) if config_json else ProbeSpec()
    updates: dict[str, object] = {}
    if k > 0:
        updates["k"] = k
    if temperature > 0:
        updates["temperature"] = temperature
    if max_tokens > 0:
        updates["maxTokens"] = max_tokens
    return ProbeSpec.model_validate({**spec.model_dump(), **updates})


def judge_spec(config_json: str, votes: int = 0) -> JudgeSpec:
    """``config_json`` (a ``JudgeSpec``) with the request's ``votes`` on top when set."""
    spec = JudgeSpec.model_validate_json(config_json) if config_json else JudgeSpec()
    if votes > 0:
        spec = JudgeSpec.model_validate({**spec.model_dump(), "votes": votes})
    return spec


def output_uri(base_uri: str, stage: str, *parts: object) -> str:
    """Where a run writes when the request names no output: keyed by everything that shapes it,
    so the same request resumes the same dataset."""
    key = content_key([str(p) for p in parts], 16)
    return f"{base_uri}/{stage}/{stage}-{key}"


def until_result(events: Iterator[StageEvent], call: Call) -> Iterator[StageEvent]:
    """``events`` until the caller leaves; a stream that ends without its result says why."""
    finished = False
    try:
        for ev in events:
            if not call.active():
                call.cancel.cancel()
                return
            finished = finished or isinstance(ev, StageResult)
            yield ev
    finally:
        call.cancel.cancel()
    if not finished and call.active():  # stopped early (deadline): say so, do not just end
        code = "DEADLINE_EXCEEDED" if call.deadline_passed() else "ABORTED"
        raise ServiceError("stage stopped before finishing; finished chunks are kept, re-run to resume", code)


class StageRuns:
    """Probe and Judge over the server's model pools (``judge_pool``: the ``judge:`` section's model)."""

    def __init__(self, cfg: LoopToolConfig, pool: ModelPool, judge_pool: ModelPool | None = None):
        self.cfg, self.pool, self.judge_pool = cfg, pool, judge_pool

    def probe(self, dataset: DatasetRef, spec: ProbeSpec, model_uri: str, output_prefix: str, round: int,
              call: Call) -> Iterator[StageEvent]:
        out = output_prefix or output_uri(
            self.cfg.storage.base_uri(), "probe",
            dataset.content_hash or dataset.uri, self.pool.key(model_uri), spec.model_dump_json(), round,
        )
        with self.pool.lease(model_uri) as backend:
            events = run_probe(
                BoundGenerator(backend, call.cancel, call.deadline), dataset, out, spec, round,
                batch_size=self.cfg.inference.max_batch_size, s3=self.cfg.storage.s3, cancel=call.cancel,
            )
            yield from until_result(events, call)

    def _judge_lease(self, spec: JudgeSpec) -> ContextManager[Backend]:
        """The judge's model: ``spec.model``, else the ``judge:`` section's, else the inference model."""
        if spec.model:
            return self.pool.lease(spec.model)
        if self.judge_pool is not None:
            return self.judge_pool.lease("")
        return self.pool.lease("")

    def judge(self, probe_results: DatasetRef, spec: JudgeSpec, policy_model: str, output_prefix: str, round: int,
              call: Call) -> Iterator[StageEvent]:
        out = output_prefix or output_uri(
            self.cfg.storage.base_uri(), "judge",
            probe_results.content_hash or probe_results.uri, spec.model_dump_json(), round,
            *([self.pool.key(policy_model)] if spec.candidates > 0 else []),
        )
        batch = self.cfg.inference.max_batch_size
        s3 = self.cfg.storage.s3
        with contextlib.ExitStack() as stack:
            sampler = None
            if spec.candidates > 0:
                policy = stack.enter_context(self.pool.lease(policy_model))
                sampler = CandidateSampler(
                    BoundGenerator(policy, call.cancel, call.deadline), spec.candidates,
                    spec.candidateTemperature, spec.candidateMaxTokens, round,
                )
            if spec.backend == "grounding":
                processes = pool_size(None, self.cfg.services.inference.processes)  # CPU-bound: every core
                events = run_judge(GroundingJudge(), probe_results, out, spec, round, batch_size=batch,
                                   s3=s3, cancel=call.cancel, candidates=sampler, processes=processes if processes >= 2 else 0)
            elif spec.models:
                # a panel (the reference's list of judges): each model leased for one chunk at a time,
                # so a panel larger than the model pool still runs
                @contextlib.contextmanager
                def member(model: str) -> Iterator[Judge]:
                    with self.pool.lease(model) as backend:
                        yield LLMJudge(BoundGenerator(backend, call.cancel, call.deadline), votes=1, seed=round)

                panel = PanelJudge([(m, functools.partial(member, m)) for m in spec.models])
                events = run_judge(panel, probe_results, out, spec, round, batch_size=batch,
                                   s3=s3, cancel=call.cancel, candidates=sampler)
            else:
                backend = stack.enter_context(self._judge_lease(spec))
                judge = LLMJudge(BoundGenerator(backend, call.cancel, call.deadline), votes=spec.votes, seed=round)
                events = run_judge(judge, probe_results, out, spec, round, batch_size=max(1, batch // spec.votes),
                                   s3=s3, cancel=call.cancel, candidates=sampler)
            yield from until_result(events, call)
