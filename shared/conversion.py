"""Dialogues → per-assistant-turn samples → GRPO Parquet (verl's row layout). One deterministic transformation.

Rules (tested in ``tests/shared/test_conversion.py``):

- Every assistant message of a dialogue becomes one :class:`Sample`:
  ``context`` = all messages before it (the prompt builder keeps the last 8 user turns),
  ``tools`` = the dialogue's tools, ``reference`` = that turn's calls (call ids dropped: they are
  transport detail). A turn without calls (clarification question, no-tool answer, summary of
  tool results) becomes a sample with an empty ``reference`` and ``reference_text`` = its text.
- ``meta``: ``dialog_id``, ``turn`` (message index), ``kind`` (``call`` | ``parallel`` |
  ``clarification`` | ``no_tool`` | ``summary`` | ``text``), plus the dialogue's ``date`` when
  it has one (the prompt shows it). ``kind`` comes from the dialogue plan
  (``plan["turn_kinds"][str(index)]``) when the synthesizer recorded it, otherwise from the
  message shape.
- ``id`` = :meth:`Sample.content_id` (stable: a function of context, tool names and reference);
  lineage: one event ``stage=convert, action=created, parent_id=<dialog id>``. Its timestamp is
  the ``at`` argument (the dialogues dataset's commit time when converting a dataset), so the
  output is byte-identical for the same input.
- Samples with the same content id (identical prompts and labels from different dialogues) are
  kept once; the later ones are counted as ``duplicates``.
- Split: held out iff ``sha256(sample id) / 2**64 < heldout_fraction`` (first 8 bytes) — stable
  per sample, independent of order and of the other samples.
- Parquet rows: :func:`looptool.shared.verl_format.sample_to_verl_row` with ``split`` and a
  per-split running ``index``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from looptool.shared.records import DatasetRef, Dialog, Message, Sample, Stage, ToolCall, utcnow
from looptool.shared.verl_format import sample_to_verl_row

TURN_KINDS = ("call", "parallel", "clarification", "no_tool", "summary", "text")


def _turn_kind(dialog: Dialog, index: int, msg: Message) -> str:
    kinds = dialog.plan.get("turn_kinds") if isinstance(dialog.plan, dict) else None
    if isinstance(kinds, dict) and isinstance(kinds.get(str(index)), str):
        return kinds[str(index)]
    if msg.tool_calls:
        return "parallel" if len(msg.tool_calls) > 1 else "call"
    prev = next((m for m in reversed(dialog.messages[:index]) if m.role != "system"), None)
    if prev is not None and prev.role == "tool":
        return "summary"
    if msg.content.strip().endswith("?"):
        return "clarification"
    return "text"


def dialog_to_samples(
    dialog: Dialog,
    round: int = 0,
    at: str | None = None,
    source: str = "synthesized",
    include_kinds: Iterable[str] | None = None,
) -> list[Sample]:
    """One sample per assistant turn of ``dialog`` (see the module rules).

    ``include_kinds`` limits which turns become samples (default: all). ``at`` is the lineage
    timestamp (default ``None``: now; pass a fixed one, or ``""`` for none, for byte-identical output).
    """
    wanted = set(include_kinds) if include_kinds is not None else None
    stamp = utcnow() if at is None else at
    out: list[Sample] = []
    for i, msg in enumerate(dialog.messages):
        if msg.role != "assistant":
            continue
        kind = _turn_kind(dialog, i, msg)
        if wanted is not None and kind not in wanted:
            continue
        context = [m.model_copy(deep=True) for m in dialog.messages[:i]]
        reference = [ToolCall(name=c.name, arguments=c.arguments) for c in msg.tool_calls]
        meta = {"dialog_id": dialog.id, "turn": str(i), "kind": kind}
        if dialog.meta.get("date"):
            meta["date"] = dialog.meta["date"]
        for key in ("disagreement",):
            if dialog.meta.get(f"{key}.{i}"):
                meta[key] = dialog.meta[f"{key}.{i}"]
        sample = Sample(
            context=context,
            tools=[t.model_copy(deep=True) for t in dialog.tools],
            reference=reference,
            reference_text="" if reference else msg.content,
            meta=meta,
            source=source,
        ).with_id()
        sample.add_lineage(round, Stage.CONVERT, "created", reason=f"assistant turn {i} ({kind})", parent_id=dialog.id)
        sample.lineage[-1].at = stamp
        out.append(sample)
    return out


def split_of(sample_id: str, heldout_fraction: float) -> str:
    """``"heldout"`` or ``"train"``, by a deterministic hash of the sample id."""
    if heldout_fraction <= 0:
        return "train"
    if heldout_fraction >= 1:
        return "heldout"
    h = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big")
    return "heldout" if h / 2**64 < heldout_fraction else "train"


@dataclass
class ConversionResult:
    samples: DatasetRef | None = None
    train: DatasetRef | None = None
    heldout: DatasetRef | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def outputs(self) -> list[DatasetRef]:
        return [r for r in (self.samples, self.train, self.heldout) if r is not None]


def dialogs_to_samples(
    dialogs: Iterable[Dialog], round: int = 0, at: str | None = None, counts: dict[str, int] | None = None, **kw: Any
) -> Iterator[Sample]:
    """Samples of many dialogues, in order, without duplicates (by content id)."""
    seen: set[str] = set()
    counts = counts if counts is not None else {}
    for d in dialogs:
        counts["dialogs"] = counts.get("dialogs", 0) + 1
        for s in dialog_to_samples(d, round=round, at=at, **kw):
            if s.id in seen:
                counts["duplicates"] = counts.get("duplicates", 0) + 1
                continue
            seen.add(s.id)
            counts["samples"] = counts.get("samples", 0) + 1
            kind = s.meta.get("kind", "text")
            counts[f"kind.{kind}"] = counts.get(f"kind.{kind}", 0) + 1
            yield s


def samples_to_verl_rows(samples: Iterable[Sample], heldout_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) in verl's layout, in input order."""
    train: list[dict] = []
    held: list[dict] = []
    for s in samples:
        split = split_of(s.id, heldout_fraction)
        rows = held if split == "heldout" else train
        rows.append(sample_to_verl_row(s, split=split, index=len(rows)))
    return train, held


def convert_dataset(
    dialogs: DatasetRef | str,
    out_prefix: str,
    heldout_fraction: float = 0.02,
    round: int = 0,
    s3: Any = None,
    include_kinds: Iterable[str] | None = None,
) -> ConversionResult:
    """A committed dialogues dataset → three datasets under ``out_prefix``:
    ``samples`` (JSONL Sample records), ``train`` and ``heldout`` (Parquet, verl rows).

    Idempotent: outputs that are already committed are opened, not rewritten.
    """
    from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri

    src = open_dataset(dialogs, s3)
    at = str(src.manifest.get("created_at", "")) or utcnow()
    base = out_prefix.rstrip("/")
    uris = {name: f"{base}/{name}" for name in ("samples", "train", "heldout")}

    def committed(uri: str) -> bool:
        store, key = split_uri(uri, s3)
        return dataset_exists(store, key)

    counts: dict[str, int] = {}
    if all(committed(u) for u in uris.values()):
        refs = {n: open_dataset(u, s3).ref for n, u in uris.items()}
        return ConversionResult(
            refs["samples"], refs["train"], refs["heldout"],
            {"samples": refs["samples"].record_count, "train": refs["train"].record_count, "heldout": refs["heldout"].record_count},
        )
    meta = {"source": src.ref.uri, "source_hash": src.ref.content_hash, "heldout_fraction": heldout_fraction, "round": round}
    w_samples = writer_for_uri(uris["samples"], s3, kind="samples", fmt="jsonl", meta=meta)
    w_train = writer_for_uri(uris["train"], s3, kind="verl", fmt="parquet", meta={**meta, "split": "train"})
    w_held = writer_for_uri(uris["heldout"], s3, kind="verl", fmt="parquet", meta={**meta, "split": "heldout"})
    n = {"train": 0, "heldout": 0}
    for s in dialogs_to_samples(src.iter(Dialog), round=round, at=at, counts=counts, include_kinds=include_kinds):
        w_samples.write(s)
        split = split_of(s.id, heldout_fraction)
        (w_held if split == "heldout" else w_train).write(sample_to_verl_row(s, split=split, index=n[split]))
        n[split] += 1
    counts.update(n)
    return ConversionResult(w_samples.commit(), w_train.commit(), w_held.commit(), counts)


def write_verl_parquet(samples: Iterable[Sample], path: str, split: str = "train") -> int:
    """Write samples as one plain Parquet file of verl rows (for handing to verl directly)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [sample_to_verl_row(s, split=split, index=i) for i, s in enumerate(samples)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)


__all__ = [
    "TURN_KINDS",
    "ConversionResult",
    "convert_dataset",
    "dialog_to_samples",
    "dialogs_to_samples",
    "samples_to_verl_rows",
    "split_of",
    "write_verl_parquet",
]
