"""Error-Driven Data Expansion (EDDE): new training samples from verified failures — the stage.

Input: the judge's verdicts (``JudgedSample`` records); the seeds among them are chosen by
``seeds.py``. For each seed, ``factor`` new samples keep the failure's *structure* (the same
functions, the same number and order of calls, the same argument names) but change its *context*:
new argument values, a new request phrasing/style, and the seed's tools shuffled among extra
distractor tools from the corpus' toolset. The manifest's ``changeCalls`` / ``siblingTools`` let the
structure change too, and ``keepContext`` (default on) keeps a multi-turn seed's earlier turns
before the new request (``structure.py``); off, a new sample is single-turn. Drafts come from a generator (``drafts.py``: programmatic; ``llm_drafts.py``: a model) and
every draft is checked (``drafts.check_draft``) before it is kept.

A rejected draft is retried (up to ``maxAttempts`` drafts per requested sample), then counted as
rejected. Accepted drafts are deduplicated against the existing corpus and within the batch, by
normalised user text and by content id. With ``filterMastered`` each new sample is probed greedily
through a ``Generator`` (the inference client) and dropped when the current model already answers it
correctly.

Determinism: every draft's randomness comes from ``sha256(seed, seed sample id, slot, attempt)``,
seeds are processed in dataset order and the dedup state is "corpus + samples written so far", so
the same inputs and seed give byte-identical output. Seeds are processed in groups of
``flushEvery``: each attempt drafts for the whole group at once (one batched model call for the llm
generator, one batched probe for ``filterMastered``). Resume: the output is written with a resumable
writer, one part per group, each preceded by a small stats record
(``<output>/_expander/batch-*.json``: the group's seeds and counts), so a restarted run skips the
groups already done (and any seed whose children exist) and reports the same counts and bytes as
an uninterrupted run.

Execution: drafting (programmatic generator), checking and building samples are CPU-bound and
pure per seed, so with ``processes`` >= 1 they run in worker processes (``shared.workers``), one task
per seed of the group; the llm generator's batched model call stays in this process. Dedup then
runs here in seed, slot and attempt order, as before: the output does not depend on ``processes``.

Counts (``StageResult.counts``): ``seeds``, ``generated`` (drafts produced) = ``invalid`` +
``duplicates`` + ``filtered_mastered`` + ``written``; ``rejected_<reason>`` per reason;
``skipped_<why>`` for judged records that are not seeds.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from pydantic import Field

from looptool.shared.generation import GenRequest, Generator, SamplingParams
from looptool.shared.logs import get_logger
from looptool.shared.loop.manifest import ExpandSpec
from looptool.shared.metrics import counter
from looptool.shared.records import (
    DatasetRef,
    ErrorInfo,
    JudgedSample,
    Message,
    Progress,
    Sample,
    Stage,
    StageResult,
    Tool,
    ToolCall,
    text_key,
)
from looptool.shared.reward import score_sample
from looptool.shared.schema import ToolSchemaError, check_tool
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri
from looptool.shared.storage.base import NotFound
from looptool.shared.textnorm import normalize_text
from looptool.shared.workers import WorkerCrashed, WorkerPool, worker_state

from .drafts import REJECT_REASONS, Draft, DraftGenerator, ProgrammaticGenerator, check_draft, derived_rng, drafts_for_all
from .llm_drafts import LLMGenerator
from .seeds import Seed, seed_from_judged
from .structure import StructureOptions, expansion_history

log = get_logger("looptool.expander")

STAGE = Stage.EXPAND.value
SOURCE = "edde"
STATS_DIR = "_expander"

SEEDS = counter("expander", "seeds", "judged errors used as expansion seeds")
GENERATED = counter("expander", "generated", "drafts produced by the generator", ["generator"])
REJECTED = counter("expander", "rejected", "drafts rejected, by reason", ["reason"])
WRITTEN = counter("expander", "written", "new samples written")


DEFAULT_FACTOR: int = ExpandSpec.model_fields["factor"].default  # new samples per seed


class ExpandConfig(ExpandSpec):
    """``ExpandRequest.config_json``: the manifest's ``spec.expand`` plus service knobs.

    ``factor`` and ``seed`` in the request message are authoritative; the copies that arrive here
    with the manifest's ExpandSpec are ignored.
    """

    includeUnclear: bool = Field(False, description="treat 'unclear' verdicts as seeds (the reference as correct)")
    maxDistractors: int = Field(2, ge=0, description="extra distractor tools added per new sample (0..N)")
    maxAttempts: int = Field(3, ge=1, description="drafts tried per requested sample before it counts as rejected")
    requireGrounded: bool = Field(True, description="every argument value must be stated in the new user request")
    temperature: float = Field(0.8, ge=0, description="llm generator sampling temperature")
    maxTokens: int = Field(512, ge=16, description="llm generator completion budget")
    probeMaxTokens: int = Field(256, ge=8, description="filterMastered: greedy probe completion budget")
    flushEvery: int = Field(16, ge=1, description="seeds per durable part (resume granularity)")
    inferenceAddress: str = Field("", description="inference server host:port (default: services.inference)")
    generatorModel: str = Field("", description="llm generator: model URI on the inference server (default: its model)")
    probeModel: str = Field("", description="filterMastered: the current checkpoint's URI (default: the server's model)")


def user_text_key(sample: Sample) -> str:
    """Dedup key over the sample's user turns; empty when it has none."""
    text = " | ".join(normalize_text(m.content) for m in sample.context if m.role == "user")
    return text_key(text, 24) if text.strip(" |") else ""


def is_correct_answer(text: str, sample: Sample) -> bool:
    """Default mastery rule for ``filterMastered``: the reward says the greedy answer is correct
    (``looptool.shared.reward.score_sample``, the same rule the trainer and the probe use)."""
    return score_sample(text, sample).correct



# ----------------------------------------------------------------------------- one seed's drafts → samples


def tools_for(seed: Seed, pool: list[Tool], rng: random.Random, max_distractors: int) -> list[Tool]:
    """The seed's tools and up to ``max_distractors`` from the pool, shuffled."""
    own = {t.name for t in seed.tools}
    candidates = [t for t in pool if t.name not in own]
    k = rng.randint(0, min(max_distractors, len(candidates))) if candidates else 0
    tools = list(seed.tools) + rng.sample(candidates, k)
    rng.shuffle(tools)
    return tools


def build_sample(seed: Seed, draft: Draft, tools: list[Tool], round: int, generator: str,
                 history: list[Message] | None = None) -> Sample:
    """``history``: the messages before the new request (``structure.expansion_history``; default:
    the seed's system messages, i.e. single-turn)."""
    context = list(history) if history is not None else [m for m in seed.sample.context if m.role == "system"]
    context.append(Message(role="user", content=draft.user))
    meta = {k: seed.sample.meta[k] for k in ("date",) if k in seed.sample.meta}
    meta.update(
        {
            "edde_seed": seed.id,
            "edde_decision": seed.decision.value,
            "edde_generator": generator,
            "edde_style": draft.style[:200],
        }
    )
    if draft.structure:
        meta["edde_structure"] = draft.structure[:200]
    s = Sample(
        context=context,
        tools=tools,
        reference=[ToolCall(name=c.name, arguments=c.arguments) for c in draft.calls],
        meta=meta,
        source=SOURCE,
    )
    s.add_lineage(round, STAGE, "expanded", reason=f"from {seed.id}: {seed.decision.value}", parent_id=seed.id)
    return s.with_id()


Prepared = Sample | tuple[str, str]  # a checked draft's sample, or (reject reason, detail)


def prepare_drafts(seed: Seed, tasks: list[tuple[int, int]], drafts: list[Draft], config: "ExpandConfig",
                   base_seed: int, round: int, pool: list[Tool], generator: str) -> list[Prepared]:
    """Check each ``(slot, attempt)`` task's draft and build its sample: pure, so it may run anywhere."""
    out: list[Prepared] = []
    structure = StructureOptions.from_spec(config)
    for (slot, attempt), draft in zip(tasks, drafts):
        reason, detail = check_draft(seed, draft, config.requireGrounded, structure)
        if reason:
            out.append((reason, detail))
            continue
        rng = derived_rng(base_seed, seed.id, slot, attempt, "tools")
        out.append(build_sample(seed, draft, tools_for(seed, pool, rng, config.maxDistractors), round, generator,
                                expansion_history(seed, draft.calls, structure)))
    return out


@dataclass
class _WorkerRun:
    """An expansion worker's state for one run: the drafter (None: drafts come with each task)."""

    drafter: DraftGenerator | None
    generator: str
    config: "ExpandConfig"
    base_seed: int
    round: int
    pool: list[Tool]


def _worker_init(*args: Any) -> _WorkerRun:
    return _WorkerRun(*args)


def _worker_prepare(seed: Seed, tasks: list[tuple[int, int]], drafts: list[Draft] | None) -> list[Prepared]:
    st: _WorkerRun = worker_state()
    if drafts is None:
        assert st.drafter is not None
        drafts = st.drafter.drafts(seed, tasks, st.base_seed)
    return prepare_drafts(seed, tasks, drafts, st.config, st.base_seed, st.round, st.pool, st.generator)


# ----------------------------------------------------------------------------- the stage


def _tool_pool(samples: Iterable[Sample], seen: dict[str, Tool]) -> None:
    for s in samples:
        for t in s.tools:
            if t.name not in seen:
                seen[t.name] = t


def _usable(tool: Tool) -> bool:
    try:
        check_tool(tool)
        return True
    except ToolSchemaError:
        return False


@dataclass
class _State:
    counts: dict[str, int]
    texts: set[str]
    ids: set[str]


def _new_counts() -> dict[str, int]:
    base = ["seeds", "generated", "invalid", "duplicates", "filtered_mastered", "written", "probe_errors"]
    return {k: 0 for k in base} | {f"rejected_{r}": 0 for r in REJECT_REASONS}


def _merge(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + int(v)


class Expander:
    """EDDE over one verdicts dataset. Use ``events()`` (progress/errors/result, for the servicer) or
    ``run()`` (just the StageResult)."""

    def __init__(
        self,
        config: ExpandConfig | None = None,
        generator: DraftGenerator | None = None,
        prober: Generator | None = None,
        s3: Any = None,
        is_correct: Callable[[str, Sample], bool] = is_correct_answer,
        processes: int = 0,
    ):
        """``processes`` >= 1: drafts are checked and built (and programmatic ones drafted) in that
        many worker processes during ``events``; 0: in this process."""
        self.config = config or ExpandConfig()
        if generator is None:
            if self.config.generator == "llm":
                raise ValueError("generator 'llm' needs a Generator: pass LLMGenerator(inference_client)")
            generator = ProgrammaticGenerator(structure=StructureOptions.from_spec(self.config))
        self.generator = generator
        if self.config.filterMastered and prober is None:
            raise ValueError("filterMastered needs a prober (a Generator, e.g. the inference client)")
        self.prober, self.s3, self.is_correct = prober, s3, is_correct
        self.processes = processes
        self._workers: WorkerPool | None = None  # set while ``events`` runs with processes
        self._workers_for: tuple[int, int] | None = None  # (base seed, round) the workers were built for

    # -- building samples

    def _tools_for(self, seed: Seed, pool: list[Tool], rng: random.Random) -> list[Tool]:
        return tools_for(seed, pool, rng, self.config.maxDistractors)

    def _build(self, seed: Seed, draft: Draft, tools: list[Tool], round: int) -> Sample:
        return build_sample(seed, draft, tools, round, self.generator.name)

    def _prepare(self, work: list[tuple[Seed, list[tuple[int, int]]]], base_seed: int, round: int,
                 pool: list[Tool]) -> list[list[Prepared]]:
        """Per seed of ``work``: its tasks' drafts, checked and built (in the worker processes when
        ``events`` started them for this base seed and round)."""
        workers = self._workers if self._workers_for == (base_seed, round) else None
        if workers is None:
            return [prepare_drafts(seed, tasks, drafts, self.config, base_seed, round, pool, self.generator.name)
                    for (seed, tasks), drafts in zip(work, drafts_for_all(self.generator, work, base_seed))]
        # programmatic drafts are made in the workers too; a model's drafts come from its batched call here
        drafted: list[list[Draft] | None] = [None] * len(work)
        if not isinstance(self.generator, ProgrammaticGenerator):
            drafted = list(drafts_for_all(self.generator, work, base_seed))
        return workers.map(_worker_prepare, [(seed, tasks, drafts) for (seed, tasks), drafts in zip(work, drafted)])

    def expand_seed(
        self, seed: Seed, factor: int, base_seed: int, round: int, pool: list[Tool], state: _State
    ) -> tuple[list[Sample], dict[str, int], list[str]]:
        """Up to ``factor`` new samples for one seed (``expand_group`` of one)."""
        return self.expand_group([seed], factor, base_seed, round, pool, state)[0]

    def expand_group(
        self, seeds: list[Seed], factor: int, base_seed: int, round: int, pool: list[Tool], state: _State
    ) -> list[tuple[list[Sample], dict[str, int], list[str]]]:
        """Up to ``factor`` new samples per seed, drafted as one batch per attempt; updates the dedup
        state. Per seed: its samples, its counts and the rejection details of slots left empty.

        Drafts are checked in seed order, then slot order, attempt by attempt, so the result depends
        only on the group (groups are the resume unit: ``flushEvery`` seeds)."""
        counts = [_new_counts() | {"seeds": 1} for _ in seeds]
        accepted: list[list[tuple[int, Sample]]] = [[] for _ in seeds]
        pending = [list(range(factor)) for _ in seeds]
        last_reject: list[dict[int, str]] = [{} for _ in seeds]
        for attempt in range(self.config.maxAttempts):
            work = [(i, [(slot, attempt) for slot in pending[i]]) for i in range(len(seeds)) if pending[i]]
            if not work:
                break
            prepared = self._prepare([(seeds[i], tasks) for i, tasks in work], base_seed, round, pool)
            for (i, tasks), items in zip(work, prepared):
                c, retry = counts[i], []
                for (slot, _a), item in zip(tasks, items):
                    c["generated"] += 1
                    if isinstance(item, tuple):
                        reason, detail = item
                        c["invalid"] += 1
                        c[f"rejected_{reason}"] = c.get(f"rejected_{reason}", 0) + 1
                        last_reject[i][slot] = f"{reason}: {detail}"
                        retry.append(slot)
                        continue
                    sample = item
                    text_key = user_text_key(sample)
                    if sample.id in state.ids or (text_key and text_key in state.texts):
                        c["duplicates"] += 1
                        last_reject[i][slot] = "duplicate"
                        retry.append(slot)
                        continue
                    state.ids.add(sample.id)
                    if text_key:
                        state.texts.add(text_key)
                    accepted[i].append((slot, sample))
                pending[i] = retry
        per_seed = [[smp for _, smp in sorted(acc, key=lambda x: x[0])] for acc in accepted]
        if self.config.filterMastered:
            per_seed = self._filter_mastered(per_seed, counts, state)
        out = []
        for i, samples in enumerate(per_seed):
            counts[i]["written"] = len(samples)
            out.append((samples, counts[i], [last_reject[i][s] for s in pending[i] if s in last_reject[i]]))
        return out

    def _filter_mastered(
        self, per_seed: list[list[Sample]], counts: list[dict[str, int]], state: _State
    ) -> list[list[Sample]]:
        """Probe every new sample greedily (one batch); drop those the current model answers right."""
        assert self.prober is not None
        flat = [(i, smp) for i, samples in enumerate(per_seed) for smp in samples]
        if not flat:
            return per_seed
        reqs = [
            GenRequest(
                messages=smp.context,
                tools=smp.tools,
                params=SamplingParams(temperature=0.0, max_tokens=self.config.probeMaxTokens),
                request_id=f"edde-probe-{smp.id}",
            )
            for _, smp in flat
        ]
        try:
            results = self.prober.generate(reqs)
        except Exception as exc:  # noqa: BLE001 - cannot tell: keep them, count it
            log.warning("mastery probe failed; keeping the samples", extra={"error": repr(exc)})
            results = []
        kept: list[list[Sample]] = [[] for _ in per_seed]
        for k, (i, smp) in enumerate(flat):
            res = results[k] if k < len(results) else None
            if res is None or res.error or not res.completions:
                counts[i]["probe_errors"] += 1
                kept[i].append(smp)
            elif self.is_correct(res.completions[0].text, smp):
                counts[i]["filtered_mastered"] += 1
                # forget its dedup keys: the state stays "corpus + samples written" (resume-exact)
                state.ids.discard(smp.id)
                key = user_text_key(smp)
                if key:
                    state.texts.discard(key)
            else:
                kept[i].append(smp)
        return kept

    # -- the whole stage

    def events(
        self,
        verdicts: DatasetRef | str,
        out_uri: str,
        factor: int = DEFAULT_FACTOR,
        seed: int = 0,
        round: int = 0,
        corpus: DatasetRef | str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Progress | ErrorInfo | StageResult]:
        if factor < 0:
            raise ValueError("factor must be >= 0")
        store, prefix = split_uri(out_uri, self.s3)
        if dataset_exists(store, prefix):  # idempotent: a finished expansion is reused as is
            ds = open_dataset(out_uri, self.s3)
            counts = {k: int(v) for k, v in (ds.manifest.get("meta") or {}).get("counts", {}).items()}
            yield StageResult(outputs=[ds.ref], counts=counts or {"written": len(ds)})
            return

        skipped: dict[str, int] = {}
        seeds: list[Seed] = []
        seen_ids: set[str] = set()
        judged_samples: list[Sample] = []
        for j in open_dataset(verdicts, self.s3).iter(JudgedSample):
            judged_samples.append(j.probe.sample)
            s, why = seed_from_judged(j, self.config.includeUnclear)
            if s is None:
                skipped[f"skipped_{why}"] = skipped.get(f"skipped_{why}", 0) + 1
            elif s.id in seen_ids:
                skipped["skipped_repeated"] = skipped.get("skipped_repeated", 0) + 1
            else:
                seen_ids.add(s.id)
                seeds.append(s)

        # dedup state and tool pool: corpus + the judged samples themselves
        state = _State(counts=_new_counts(), texts=set(), ids=set())
        pool_by_name: dict[str, Tool] = {}

        def _register(samples: Iterable[Sample]) -> Iterator[Sample]:
            for s in samples:
                state.ids.add(s.id or s.content_id())
                state.ids.add(s.content_id())
                key = user_text_key(s)
                if key:
                    state.texts.add(key)
                yield s

        if corpus is not None and (corpus.uri if isinstance(corpus, DatasetRef) else corpus):
            _tool_pool(_register(open_dataset(corpus, self.s3).iter(Sample)), pool_by_name)
        _tool_pool(_register(judged_samples), pool_by_name)
        pool = [pool_by_name[n] for n in sorted(pool_by_name) if _usable(pool_by_name[n])]

        cfg_meta = self.config.model_dump(mode="json", exclude={"inferenceAddress"})
        writer = writer_for_uri(
            out_uri,
            self.s3,
            kind="samples",
            part_size=1 << 30,  # flushed by hand, one part per group of seeds
            resume=True,
            meta={"stage": STAGE, "round": round, "factor": factor, "seed": seed, "config": cfg_meta},
        )
        # Resume. Groups of ``flushEvery`` seeds are the unit of work: for each, a stats record naming
        # its seeds and counts is written *before* its part is flushed, with the part count the
        # writer must reach. A record whose part did not survive is ignored (the group is redone and
        # the record overwritten); records are read in order and the first invalid one ends the scan.
        done: set[str] = set()
        stats_prefix = f"{writer.prefix}/{STATS_DIR}/"
        batch_index = 0
        for key in sorted(store.list(stats_prefix)):
            try:
                rec = json.loads(store.get_bytes(key))
            except (NotFound, ValueError):
                break
            if int(rec.get("batch", -1)) != batch_index or int(rec.get("parts", 1 << 30)) > len(writer.parts):
                break
            done.update(rec["seeds"])
            _merge(state.counts, rec["counts"])
            batch_index += 1
        for rec in writer.existing_records():
            child = Sample.model_validate(rec)
            done.add(child.meta.get("edde_seed", ""))  # children exist: that seed is done in any case
            list(_register([child]))
        if done:
            log.info("resuming expansion", extra={"uri": out_uri, "seeds_done": len(done & seen_ids), "children": len(writer.parts)})

        total = len(seeds)
        todo = [sd for sd in seeds if sd.id not in done]
        finished = total - len(todo)
        yield Progress(stage=STAGE, done=finished, total=total, message=f"{total} seeds, {len(pool)} tools in the pool")
        workers = None
        if self.processes >= 1 and todo:
            drafter = self.generator if isinstance(self.generator, ProgrammaticGenerator) else None
            workers = WorkerPool(self.processes, _worker_init, (drafter, self.generator.name, self.config, seed, round, pool),
                                 preload=[__name__])
        self._workers, self._workers_for = workers, (seed, round)
        try:
            group_size = self.config.flushEvery
            for g in range(0, len(todo), group_size):
                if should_stop():
                    return  # finished groups are durable; a new call resumes after them
                group = todo[g : g + group_size]
                results = self.expand_group(group, factor, seed, round, pool, state)
                group_counts = _new_counts()
                n_children = 0
                for (children, c, _rejects) in results:
                    writer.write_many(children)
                    _merge(group_counts, c)
                    n_children += len(children)
                    self._observe(c)
                body = {
                    "batch": batch_index,
                    "parts": len(writer.parts) + (1 if n_children else 0),
                    "seeds": [sd.id for sd in group],
                    "counts": group_counts,
                }
                store.put_bytes(f"{stats_prefix}batch-{batch_index:06d}.json", json.dumps(body).encode())
                writer.flush()
                _merge(state.counts, group_counts)
                batch_index += 1
                for sd, (children, c, rejects) in zip(group, results):
                    finished += 1
                    if factor and not children and rejects:
                        yield ErrorInfo(
                            code="EXPANSION_EMPTY",
                            message=f"no sample kept after {self.config.maxAttempts} attempts per slot; last: {rejects[-1][:300]}",
                            item_id=sd.id,
                        )
                    yield Progress(
                        stage=STAGE,
                        done=finished,
                        total=total,
                        message=f"{sd.id}: {len(children)} new",
                        metrics={"written": float(state.counts["written"])},
                    )
        except WorkerCrashed as exc:  # the finished groups are durable: a new call resumes after them
            yield ErrorInfo(code="WORKER_CRASHED", message=str(exc))
            return
        finally:
            self._workers = self._workers_for = None
            if workers is not None:
                workers.close()
        counts = dict(state.counts)
        _merge(counts, skipped)
        counts["seeds"] = total
        counts["written"] = writer.records_flushed
        writer.meta["counts"] = counts
        ref = writer.commit()
        store.delete_prefix(stats_prefix)
        g_ = counts["generated"]
        metrics = {"acceptance_rate": counts["written"] / g_ if g_ else 0.0, "per_seed": counts["written"] / total if total else 0.0}
        yield StageResult(outputs=[ref], counts=counts, metrics=metrics)

    def _observe(self, c: dict[str, int]) -> None:
        SEEDS.inc(c["seeds"])
        GENERATED.labels(self.generator.name).inc(c["generated"])
        WRITTEN.inc(c["written"])
        for r in REJECT_REASONS:
            if c.get(f"rejected_{r}"):
                REJECTED.labels(r).inc(c[f"rejected_{r}"])
        for k in ("duplicates", "filtered_mastered"):
            if c[k]:
                REJECTED.labels("duplicate" if k == "duplicates" else "mastered").inc(c[k])

    def run(self, *args: Any, **kw: Any) -> StageResult:
        result, crashed = None, ""
        for ev in self.events(*args, **kw):
            if isinstance(ev, StageResult):
                result = ev
            elif isinstance(ev, ErrorInfo) and ev.code == "WORKER_CRASHED":
                crashed = ev.message
        if result is None:
            raise RuntimeError("expansion stopped before it finished" + (f": {crashed}" if crashed else ""))
        return result


def expand(
    verdicts: DatasetRef | str,
    out_uri: str,
    factor: int = DEFAULT_FACTOR,
    seed: int = 0,
    round: int = 0,
    corpus: DatasetRef | str | None = None,
    config: ExpandConfig | None = None,
    generator: Generator | None = None,
    prober: Generator | None = None,
    s3: Any = None,
) -> StageResult:
    """One-call EDDE. ``generator`` (a model Generator) is needed for ``config.generator == 'llm'``,
    ``prober`` for ``config.filterMastered`` (the same inference client usually serves both)."""
    config = config or ExpandConfig()
    drafter: DraftGenerator | None = None
    if config.generator == "llm":
        if generator is None:
            raise ValueError("generator 'llm' needs a Generator (e.g. the inference client)")
        drafter = LLMGenerator(generator, config.temperature, config.maxTokens, structure=StructureOptions.from_spec(config))
    return Expander(config, drafter, prober, s3).run(verdicts, out_uri, factor, seed, round, corpus)
