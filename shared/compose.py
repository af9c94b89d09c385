"""Round composition (paper, Eq. 5) and dataset diffs between rounds.

``compose_next_round`` assembles the next round's training data from this round's probe results,
the judge's verdicts, the EDDE expansions and this round's fresh seed samples. Eq. 5: model-wrong +
label-fixed + EDDE + high-perplexity + fresh seed samples; mastered and both-wrong samples leave.
Each choice is a ``compose`` field (defaults = the paper):

=======================  =================================================================
probe outcome/verdict    next round
=======================  =================================================================
mastered                 dropped when ``dropMastered`` (kept otherwise)
high perplexity          kept (borderline with a correct greedy answer: perplexity above the
                         threshold, or some sampled attempts wrong; ``keepHighPerplexity: false``
                         → treated as mastered). ``probe.highPerplexity: {percentile: p}``:
                         composition marks correct greedy answers above the round's p-th
                         percentile of their perplexities
borderline (sampled)     kept (greedy wrong but some sampled attempts right)
failed, label_wrong      kept with the judge's corrected label (``reference := corrected``, also
                         when the judge already wrote it; the old label is taken from
                         ``meta["label_before_judge"]`` or the probe results;
                         no corrected calls → the model's calls; a correction that does not
                         validate against the tools is not applied: the sample goes by the
                         ``unclear`` policy and counts as ``relabel_rejected``)
failed, model_wrong      kept, label unchanged (the model must learn it)
failed, both_acceptable  ``bothAcceptable``: ``mastered`` (like an exact match: dropped when
                         ``dropMastered``) or ``keep``
failed, both_wrong       ``bothWrong``: ``drop`` (paper) or ``keep``
failed, unclear          ``unclear_policy`` (``judge.unclearPolicy``): ``keep`` (label unchanged) or
                         ``drop``. Unclear = the judge cannot tell; not the same as both_wrong
failed, not judged       kept, label unchanged (``failed_unjudged``: e.g. ``judge.enabled: false``)
EDDE expansions          kept
fresh seed samples       this round's fresh synthesized samples not kept above, in order, at most
                         ``round(freshSeedFraction × |everything above|)``: ones the probe never
                         saw, and ones dropped as mastered (seed data the next round keeps
                         seeing); ones dropped as wrong (both_wrong, unclear, rejected fix) never.
                         Default 0: in the loop, Eq. 5's fresh seed term is the next round's own
                         synthesis, which ``stage_synthesize`` adds to the composed data
=======================  =================================================================

Every sample keeps its lineage and gets one ``compose`` event (``kept`` / ``relabelled`` /
``dropped``) with the round and a reason that starts with its category (``high_perplexity: …``).
Samples are written in a deterministic order (probe order, then expansions, then fresh); a repeated
id is written once (``duplicates``). Dropped samples, with their ``dropped`` event, go to a sibling
dataset (``<out_uri>-dropped`` by default). Counts per category come back and are stored in the manifest's
``meta.counts``; composing onto a committed output returns it unchanged.

``diff_datasets`` compares two sample datasets by id: added, removed, relabelled (same id,
different reference calls), unchanged (same id, same reference), with per-source and per-lineage
breakdowns and examples; ``looptool data diff A B`` prints it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal

from looptool.shared.loop.manifest import ComposeSpec, PerplexityThreshold
from looptool.shared.records import (
    DatasetRef,
    Decision,
    JudgedSample,
    ProbeOutcome,
    ProbeResult,
    Sample,
    Stage,
    ToolCall,
    Verdict,
    canonical_json,
)
from looptool.shared.schema import ToolSchemaError, validate_call
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri

STAGE = Stage.COMPOSE.value
COUNT_KEYS = (
    "mastered_dropped",
    "mastered_kept",
    "borderline",
    "high_perplexity",
    "high_perplexity_dropped",
    "relabelled",
    "relabel_rejected",
    "model_wrong",
    "both_acceptable",
    "both_wrong_kept",
    "both_wrong_dropped",
    "unclear_kept",
    "unclear_dropped",
    "failed_unjudged",
    "expanded",
    "fresh",
    "fresh_placed",
    "fresh_rejected",
    "duplicates",
    "dropped",
    "total",
)


# ----------------------------------------------------------------------------- call helpers


def reference_key(calls: Iterable[ToolCall]) -> str:
    """Exact, order-independent identity of a label: sorted canonical (name, arguments), ids ignored."""
    return canonical_json(sorted(canonical_json([c.name, c.arguments]) for c in calls))


def format_call(call: ToolCall, limit: int = 160) -> str:
    """``name(key=value, ...)`` with JSON values, shortened to ``limit`` characters."""
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call.arguments.items())
    text = f"{call.name}({args})"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_calls(calls: list[ToolCall], limit: int = 240) -> str:
    if not calls:
        return "(no call)"
    text = "; ".join(format_call(c) for c in calls)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------- composition


def label_before_judge(sample: Sample) -> list[ToolCall] | None:
    """The label a sample had before the judge relabelled it (the judge keeps it in
    ``meta["label_before_judge"]``), or None when the judge did not record one."""
    raw = sample.meta.get("label_before_judge")
    if not raw:
        return None
    try:
        return [ToolCall.model_validate(c) for c in json.loads(raw)]
    except (ValueError, TypeError):
        return None


def _valid_label(calls: list[ToolCall], sample: Sample) -> str:
    """"" when every call validates against the sample's tools, else the first problem."""
    for c in calls:
        try:
            issues = validate_call(c, sample.tools)
        except ToolSchemaError as exc:
            return str(exc)
        if issues:
            return f"{c.name}: {issues[0]}"
    return ""


def _iter_refs(ref: DatasetRef | str | None, model: type, s3: Any) -> Iterator[Any]:
    if ref is None or not (ref.uri if isinstance(ref, DatasetRef) else ref):
        return iter(())
    return open_dataset(ref, s3).iter(model)


# Why a dropped sample left. Only "mastered" ones may come back as fresh seed samples.
_MASTERED, _WRONG = "mastered", "wrong"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0 < p < 100) with linear interpolation between ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("inf")
    pos = (len(xs) - 1) * p / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class _Composer:
    def __init__(self, round: int, spec: ComposeSpec, unclear_policy: str, ppl_threshold: float | None = None):
        if unclear_policy not in ("drop", "keep"):
            raise ValueError(f"unclear_policy must be 'drop' or 'keep', got {unclear_policy!r}")
        self.round, self.spec, self.unclear_policy = round, spec, unclear_policy
        self.ppl_threshold = ppl_threshold  # calibrated (percentile) threshold; None = the probe's outcome stands
        self.counts: Counter[str] = Counter({k: 0 for k in COUNT_KEYS})
        self.kept: list[Sample] = []
        self.dropped: list[Sample] = []
        self.dropped_why: dict[str, str] = {}  # id → _MASTERED / _WRONG
        self.seen: set[str] = set()

    def _keep(self, s: Sample, action: str, reason: str, parent: str = "") -> None:
        sid = s.id or s.content_id()
        s.id = sid
        if sid in self.seen:
            self.counts["duplicates"] += 1
            return
        self.seen.add(sid)
        s.add_lineage(self.round, STAGE, action, reason=reason, parent_id=parent)
        self.kept.append(s)

    def _drop(self, s: Sample, reason: str, why: str = _WRONG) -> None:
        s.id = s.id or s.content_id()
        s.add_lineage(self.round, STAGE, "dropped", reason=reason)
        self.dropped.append(s)
        self.dropped_why.setdefault(s.id, why)
        self.counts["dropped"] += 1

    def _mastered(self, s: Sample, category: str, why: str) -> None:
        """An answer the model already gives: dropped when ``dropMastered``."""
        if self.spec.dropMastered:
            self.counts["mastered_dropped"] += category == "mastered"
            self._drop(s, f"{category}: {why} (dropMastered)", _MASTERED)
        else:
            self.counts["mastered_kept"] += category == "mastered"
            self._keep(s, "kept", f"{category}: {why} (dropMastered=false)")

    def _unclear(self, s: Sample, reason: str) -> None:
        if self.unclear_policy == "keep":
            self.counts["unclear_kept"] += 1
            self._keep(s, "kept", f"unclear: {reason} (unclear_policy=keep, label unchanged)")
        else:
            self.counts["unclear_dropped"] += 1
            self._drop(s, f"unclear: {reason} (unclear_policy=drop)")

    def route(self, probe: ProbeResult | None, judged: JudgedSample | None) -> None:
        if judged is not None:
            # the judged copy carries the judge's lineage (and, for label_wrong, often the new label)
            s = judged.probe.sample.model_copy(deep=True)
            original = probe.sample.reference if probe is not None else None
            self._route_verdict(s, judged, original)
            return
        assert probe is not None
        s = probe.sample.model_copy(deep=True)
        ppl = f"perplexity {probe.perplexity:.2f}"
        if probe.outcome == ProbeOutcome.FAILED:
            self.counts["failed_unjudged"] += 1
            self._keep(s, "kept", f"failed_unjudged: no verdict, label unchanged ({_short(probe.reason, 120)})")
        elif probe.outcome == ProbeOutcome.BORDERLINE and not probe.correct:
            self.counts["borderline"] += 1
            self._keep(s, "kept", f"borderline: {probe.sampled_correct}/{probe.sampled_total} sampled attempts correct, {ppl}")
        elif probe.outcome == ProbeOutcome.BORDERLINE or (
            self.ppl_threshold is not None and probe.correct and probe.perplexity > self.ppl_threshold
        ):
            # correct but unsure: the probe's absolute threshold, or the round's calibrated percentile
            where = f" > {self.ppl_threshold:.2f} (round percentile)" if probe.outcome != ProbeOutcome.BORDERLINE else ""
            why = f"correct but unsure, {ppl}{where}"
            if self.spec.keepHighPerplexity:
                self.counts["borderline"] += 1
                self.counts["high_perplexity"] += 1
                self._keep(s, "kept", f"high_perplexity: {why}")
            else:
                self.counts["high_perplexity_dropped"] += self.spec.dropMastered
                self._mastered(s, "high_perplexity", f"{why}; keepHighPerplexity=false treats it as mastered")
        else:
            self._mastered(s, "mastered", f"greedy answer correct, {ppl}")

    def _route_verdict(self, s: Sample, j: JudgedSample, original: list[ToolCall] | None) -> None:
        v: Verdict = j.verdict
        why = _short(v.reason)
        if v.decision == Decision.LABEL_WRONG:
            before = label_before_judge(s)
            if before is None:
                before = list(original) if original is not None else list(s.reference)
            new = [ToolCall(name=c.name, arguments=c.arguments) for c in (v.corrected or j.probe.predicted_calls)]
            problem = _valid_label(new, s)
            if problem:
                s.reference = before  # the judge may already have written the correction: undo it
                self.counts["relabel_rejected"] += 1
                self._unclear(s, f"corrected label rejected ({_short(problem, 120)}); judge: {why}")
                return
            old = format_calls(before)
            s.reference = new
            if not new:  # the right answer is text (e.g. ask for a missing parameter)
                s.reference_text = j.probe.prediction
            self.counts["relabelled"] += 1
            self._keep(s, "relabelled", f"label_wrong: {old} -> {format_calls(new)}; judge: {why}")
        elif v.decision == Decision.MODEL_WRONG:
            self.counts["model_wrong"] += 1
            self._keep(s, "kept", f"model_wrong: label kept; judge: {why}")
        elif v.decision == Decision.BOTH_ACCEPTABLE:
            self.counts["both_acceptable"] += 1
            if self.spec.bothAcceptable == "mastered":
                self._mastered(s, "both_acceptable", f"the prediction is also right, treated as mastered; judge: {why}")
            else:
                self._keep(s, "kept", f"both_acceptable: label kept (bothAcceptable=keep); judge: {why}")
        elif v.decision == Decision.BOTH_WRONG:
            if self.spec.bothWrong == "drop":
                self.counts["both_wrong_dropped"] += 1
                self._drop(s, f"both_wrong: label and prediction wrong (bothWrong=drop); judge: {why}")
            else:
                self.counts["both_wrong_kept"] += 1
                self._keep(s, "kept", f"both_wrong: label kept (bothWrong=keep); judge: {why}")
        else:
            self._unclear(s, f"judge: {why}")

    def fresh(self, samples: Iterable[Sample], want: int) -> None:
        """Fresh seed samples (see the module docstring), in order, until ``want`` are in."""
        readmit = {s.id: i for i, s in enumerate(self.dropped) if self.dropped_why.get(s.id) == _MASTERED}
        back: set[str] = set()
        for s in samples:
            sid = s.id or s.content_id()
            if sid in self.seen:
                self.counts["fresh_placed"] += 1  # already kept by the rule above
                continue
            if sid in self.dropped_why and sid not in readmit:
                self.counts["fresh_rejected"] += 1  # dropped as wrong: never seed data
                continue
            if self.counts["fresh"] >= want:
                continue
            s = s.model_copy(deep=True)
            if sid in readmit:
                last = self.dropped[readmit[sid]].lineage[-1].reason
                back.add(sid)
                reason = f"fresh: seed sample of this round, kept as seed data although {_short(last, 160)}"
            else:
                reason = "fresh: new seed sample"
            before = len(self.kept)
            self._keep(s, "kept", reason)
            self.counts["fresh"] += len(self.kept) - before
        if back:  # re-admitted: no longer dropped
            self.dropped = [s for s in self.dropped if s.id not in back]
            self.counts["dropped"] -= len(back)  # mastered_dropped etc. still say what the probe/judge found


def compose_next_round(
    probe_results: DatasetRef | str,
    verdicts: DatasetRef | str | None,
    expansions: DatasetRef | str | None,
    fresh: DatasetRef | str | None,
    out_uri: str,
    spec: ComposeSpec | None = None,
    round: int = 0,
    unclear_policy: Literal["drop", "keep"] = "keep",
    dropped_uri: str | None = "",
    s3: Any = None,
    high_perplexity: PerplexityThreshold | None = None,
) -> tuple[DatasetRef, dict[str, int]]:
    """Write the next round's dataset to ``out_uri``; returns its reference and counts per category
    (see the module docstring). ``verdicts`` / ``expansions`` / ``fresh`` may be None (stage off).
    ``high_perplexity`` (``probe.highPerplexity``) in percentile mode: the threshold is that
    percentile of the perplexities of this round's correct greedy answers.

    Dropped samples (with their ``dropped`` lineage event) go to ``dropped_uri``; the default ``""``
    means ``<out_uri>-dropped``, ``None`` writes none. The main manifest's ``meta.dropped_uri`` names
    it, so ``diff_datasets`` can say why samples left."""
    spec = spec or ComposeSpec()
    if dropped_uri == "":
        dropped_uri = out_uri.rstrip("/") + "-dropped"
    store, prefix = split_uri(out_uri, s3)
    if dataset_exists(store, prefix):
        ds = open_dataset(out_uri, s3)
        return ds.ref, {k: int(v) for k, v in (ds.manifest.get("meta") or {}).get("counts", {}).items()}

    threshold = None
    if high_perplexity is not None and high_perplexity.percentile is not None:
        ppls = [p.perplexity for p in _iter_refs(probe_results, ProbeResult, s3) if p.correct]
        threshold = percentile(ppls, high_perplexity.percentile) if ppls else None
    comp = _Composer(round, spec, unclear_policy, threshold)
    judged: dict[str, JudgedSample] = {}
    for j in _iter_refs(verdicts, JudgedSample, s3):
        sid = j.probe.sample.id or j.verdict.sample_id
        judged.setdefault(sid, j)
    used: set[str] = set()
    for p in _iter_refs(probe_results, ProbeResult, s3):
        sid = p.sample.id
        j = judged.get(sid) if p.outcome == ProbeOutcome.FAILED else None
        if j is not None:
            used.add(sid)
        comp.route(p, j)
    for sid, j in judged.items():  # verdicts whose probe result is not in probe_results
        if sid not in used:
            comp.route(None, j)
    for s in _iter_refs(expansions, Sample, s3):
        comp.counts["expanded"] += 1
        parent = s.meta.get("edde_seed", "")
        comp._keep(s, "kept", f"expanded: EDDE sample{' from ' + parent if parent else ''}", parent)
    base = len(comp.kept)
    if fresh is not None:
        comp.fresh(_iter_refs(fresh, Sample, s3), int(round_half_up(spec.freshSeedFraction * base)))
    comp.counts["total"] = len(comp.kept)
    counts = {k: int(comp.counts[k]) for k in comp.counts}

    if dropped_uri:
        dstore, dprefix = split_uri(dropped_uri, s3)
        if not dataset_exists(dstore, dprefix):
            dw = writer_for_uri(dropped_uri, s3, kind="samples", meta={"stage": STAGE, "round": round, "dropped_from": out_uri})
            dw.write_many(comp.dropped)
            dw.commit()
    w = writer_for_uri(
        out_uri,
        s3,
        kind="samples",
        meta={
            "stage": STAGE,
            "round": round,
            "spec": spec.model_dump(mode="json"),
            "unclear_policy": unclear_policy,
            "perplexity_threshold": threshold,
            "counts": counts,
            "dropped_uri": dropped_uri or "",
        },
    )
    w.write_many(comp.kept)
    return w.commit(), counts


def round_half_up(x: float) -> int:
    """0.5 → 1 (Python's ``round`` would give 0: banker's rounding)."""
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


# ----------------------------------------------------------------------------- dataset diff


@dataclass
class RelabelExample:
    id: str
    old: list[ToolCall]
    new: list[ToolCall]
    reason: str = ""


@dataclass
class DatasetDiff:
    a: DatasetRef
    b: DatasetRef
    added: int = 0
    removed: int = 0
    relabelled: int = 0
    unchanged: int = 0
    content_changed: int = 0  # same id and label, other content (context/tools) differs
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    lineage_b: dict[str, int] = field(default_factory=dict)  # last lineage event of B's samples
    lineage_removed: dict[str, int] = field(default_factory=dict)  # last lineage event in A of removed ones
    relabel_examples: list[RelabelExample] = field(default_factory=list)
    added_examples: list[str] = field(default_factory=list)
    removed_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "a": self.a.model_dump(),
            "b": self.b.model_dump(),
            "added": self.added,
            "removed": self.removed,
            "relabelled": self.relabelled,
            "unchanged": self.unchanged,
            "content_changed": self.content_changed,
            "by_source": self.by_source,
            "lineage_b": self.lineage_b,
            "lineage_removed": self.lineage_removed,
            "relabel_examples": [
                {"id": e.id, "old": [c.model_dump(exclude={"id"}) for c in e.old], "new": [c.model_dump(exclude={"id"}) for c in e.new], "reason": e.reason}
                for e in self.relabel_examples
            ],
            "added_examples": self.added_examples,
            "removed_examples": self.removed_examples,
        }
        return out


def lineage_label(s: Sample) -> str:
    """``stage/action (category)`` of the sample's last lineage event; ``(none)`` without one."""
    if not s.lineage:
        return "(none)"
    e = s.lineage[-1]
    head = e.reason.split(":", 1)[0].strip() if ":" in e.reason else ""
    cat = f" ({head})" if head and len(head) <= 24 and " " not in head else ""
    return f"r{e.round} {e.stage}/{e.action}{cat}"


def _samples_of(ds: Any) -> Iterator[Sample]:
    """The dataset's records as Samples; a dataset of another kind is a one-line user error."""
    from pydantic import ValidationError

    from looptool.shared.errors import InputError

    for i, d in enumerate(ds.iter_dicts()):
        try:
            yield Sample.model_validate(d)
        except ValidationError:
            raise InputError(
                ds.ref.uri, f"record {i} is not a sample (dataset kind {ds.manifest.get('kind')!r})", "diff two sample datasets"
            ) from None


@dataclass
class _Entry:
    ref_key: str
    content_key: str
    source: str
    lineage: str
    reference: list[ToolCall]


def _entries(ref: DatasetRef | str, s3: Any) -> tuple[DatasetRef, dict[str, _Entry]]:
    ds = open_dataset(ref, s3)
    out: dict[str, _Entry] = {}
    for s in _samples_of(ds):
        sid = s.id or s.content_id()
        if sid in out:
            continue
        content = canonical_json([[m.model_dump(exclude={"reasoning"}) for m in s.context], sorted(t.name for t in s.tools)])
        out[sid] = _Entry(reference_key(s.reference), content, s.source or "(none)", lineage_label(s), s.reference)
    return ds.ref, out


def _last_relabel_reason(ref: DatasetRef | str, ids: set[str], s3: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not ids:
        return out
    for s in open_dataset(ref, s3).iter(Sample):
        if s.id in ids and s.id not in out:
            reasons = [e.reason for e in s.lineage if e.action == "relabelled"]
            out[s.id] = reasons[-1] if reasons else ""
    return out


def dropped_uri(ds: Any) -> str:
    """Where a composed dataset's dropped samples went (``meta.dropped_uri``); "" when none were kept."""
    return (ds.manifest.get("meta") or {}).get("dropped_uri") or ""


def _dropped_labels(b: DatasetRef, s3: Any) -> dict[str, str]:
    """id → lineage label of the ``dropped`` event, from the dataset B's composition dropped."""
    try:
        uri = dropped_uri(open_dataset(b, s3))
        if not uri:
            return {}
        return {s.id: lineage_label(s) for s in open_dataset(uri, s3).iter(Sample)}
    except Exception:  # noqa: BLE001 - the explanation is optional; the diff itself is not
        return {}


def diff_datasets(a: DatasetRef | str, b: DatasetRef | str, examples: int = 5, s3: Any = None) -> DatasetDiff:
    """Compare two sample datasets by sample id (``a`` → ``b``)."""
    a_ref, ea = _entries(a, s3)
    b_ref, eb = _entries(b, s3)
    d = DatasetDiff(a=a_ref, b=b_ref)
    by_source: dict[str, Counter[str]] = {}

    def bump(source: str, what: str) -> None:
        by_source.setdefault(source, Counter())[what] += 1

    relabelled_ids: list[str] = []
    for sid, e in eb.items():
        old = ea.get(sid)
        if old is None:
            d.added += 1
            bump(e.source, "added")
            if len(d.added_examples) < examples:
                d.added_examples.append(sid)
        elif old.ref_key != e.ref_key:
            d.relabelled += 1
            bump(e.source, "relabelled")
            relabelled_ids.append(sid)
        else:
            d.unchanged += 1
            bump(e.source, "unchanged")
            if old.content_key != e.content_key:
                d.content_changed += 1
    why_dropped = _dropped_labels(b_ref, s3)
    lineage_removed: Counter[str] = Counter()
    for sid, e in ea.items():
        if sid not in eb:
            d.removed += 1
            bump(e.source, "removed")
            lineage_removed[why_dropped.get(sid, e.lineage)] += 1
            if len(d.removed_examples) < examples:
                d.removed_examples.append(sid)
    d.lineage_b = dict(sorted(Counter(e.lineage for e in eb.values()).items(), key=lambda kv: (-kv[1], kv[0])))
    d.lineage_removed = dict(sorted(lineage_removed.items(), key=lambda kv: (-kv[1], kv[0])))
    keys = ("added", "removed", "relabelled", "unchanged")
    d.by_source = {src: {k: int(c[k]) for k in keys} for src, c in sorted(by_source.items())}
    shown = relabelled_ids[:examples]
    reasons = _last_relabel_reason(b_ref, set(shown), s3)
    d.relabel_examples = [RelabelExample(i, ea[i].reference, eb[i].reference, reasons.get(i, "")) for i in shown]
    return d


def format_diff(d: DatasetDiff) -> str:
    """The human-readable summary ``looptool data diff`` prints."""
    lines = [
        f"A: {d.a.uri}  ({d.a.record_count} records, sha256 {d.a.content_hash[:12]})",
        f"B: {d.b.uri}  ({d.b.record_count} records, sha256 {d.b.content_hash[:12]})",
        "",
        f"  added       {d.added:>7}",
        f"  removed     {d.removed:>7}",
        f"  relabelled  {d.relabelled:>7}   (same id, different reference calls)",
        f"  unchanged   {d.unchanged:>7}" + (f"   ({d.content_changed} with other content changes)" if d.content_changed else ""),
    ]
    if d.by_source:
        w = max(12, *(len(s) for s in d.by_source))
        lines += ["", f"  {'by source':<{w}}  {'added':>7} {'removed':>7} {'relabelled':>10} {'unchanged':>9}"]
        for src, c in d.by_source.items():
            lines.append(f"  {src:<{w}}  {c['added']:>7} {c['removed']:>7} {c['relabelled']:>10} {c['unchanged']:>9}")
    if d.lineage_b:
        lines += ["", "  B by last lineage event"]
        lines += [f"    {k:<44} {v:>7}" for k, v in d.lineage_b.items()]
    if d.lineage_removed:
        lines += ["", "  removed, by why they left (their dropped event, else their last event in A)"]
        lines += [f"    {k:<44} {v:>7}" for k, v in d.lineage_removed.items()]
    if d.relabel_examples:
        lines += ["", "  relabelled examples (old -> new)"]
        for e in d.relabel_examples:
            lines.append(f"    {e.id}")
            lines.append(f"      - {format_calls(e.old)}")
            lines.append(f"      + {format_calls(e.new)}")
            if e.reason:
                lines.append(f"      why: {_short(e.reason, 200)}")
    if d.added_examples:
        lines += ["", "  added examples: " + ", ".join(d.added_examples)]
    if d.removed_examples:
        lines += ["  removed examples: " + ", ".join(d.removed_examples)]
    return "\n".join(lines)
