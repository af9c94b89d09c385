"""The paper's ablations of a round chain (``looptool ablate``): which variants, how each one's rounds
are built from the manifest, and the table that compares them.

Variants (every round of the chain gets the variant's switches, paper §4 ablation):

* ``full``: the manifest as it is;
* ``no-jglv``: ``judge.enabled: false`` — no label verification; EDDE expands judged errors, so it
  is off too (``expand.factor: 0``, ``judge.candidates: 0``: the manifest check refuses the mix);
* ``no-edde``: ``expand.factor: 0``;
* ``no-hpr``: ``compose.keepHighPerplexity: false`` (correct-but-unsure samples count as mastered);
* ``baseline``: the same compute without the loop. Round 1 is the full loop's round 1 (one shared
  run). Round k > 1 continues from the baseline's round k-1 checkpoint but trains on freshly
  synthesized samples only (the previous round's composed data is not used), count-matched to the
  full loop's round-k training set (``synthesis.numDialogues`` scaled by the samples per dialogue the
  full loop's round k got) with the same number of GRPO steps (``training.grpoSteps``); it does not
  judge or expand (nothing would use it).

Variant rounds are named ``<round>-<suffix>`` (their statuses and leases are their own) but write
stage outputs into the original round's folder (``StageContext.outputs_round``): outputs are keyed by
content, so a stage whose inputs and settings two variants share (round 1's synthesis, training and
probe, say) runs once.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from looptool.shared.loop.chain import HELDOUT, HELDOUT_AFTER_SFT
from looptool.shared.loop.manifest import LoopRound
from looptool.shared.loop.state import RoundStatus

NAME_MAX = 63  # metadata.name


class AblationError(ValueError):
    """A manifest ablate cannot run as variants; one line naming the fields and the fix."""


@dataclass(frozen=True)
class Variant:
    key: str  # what --variants takes
    suffix: str  # appended to round names
    label: str  # the table's row label


VARIANTS: tuple[Variant, ...] = (
    Variant("full", "full", "LoopTool (full loop)"),
    Variant("no-jglv", "nojglv", "w/o JGLV (no judge, hence no EDDE)"),
    Variant("no-edde", "noedde", "w/o EDDE"),
    Variant("no-hpr", "nohpr", "w/o high-perplexity samples"),
    Variant("baseline", "base", "same compute, no loop (fresh data)"),
)
BY_KEY = {v.key: v for v in VARIANTS}


def variant_name(round_name: str, v: Variant) -> str:
    return f"{round_name}-{v.suffix}"


def select_variants(keys: list[str] | None) -> list[Variant]:
    """``--variants`` (None: all), in table order; unknown names and a baseline without the full
    loop (it matches the full loop's data sizes) are refused in one line."""
    if not keys:
        return list(VARIANTS)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise AblationError(f"--variants: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(BY_KEY)}")
    if "baseline" in keys and "full" not in keys:
        raise AblationError("--variants: baseline is count-matched to the full loop's training sets: add full")
    return [v for v in VARIANTS if v.key in keys]


def _with(r: LoopRound, name: str, previous: str, patch: dict[str, dict[str, Any]], where: str, v: Variant) -> LoopRound:
    data = r.model_dump(mode="json", exclude_none=True)
    data["metadata"]["name"] = name
    spec = data["spec"]
    if previous:
        spec["previousRound"] = previous
    for section, fields in patch.items():
        spec.setdefault(section, {}).update(fields)
    try:
        return LoopRound.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise AblationError(f"{where}: variant {v.key}: {err['msg'].removeprefix('Value error, ')}") from None


def _check(rounds: list[LoopRound], source: str, variants: list[Variant]) -> None:
    """Refuse, before anything runs, a chain the variants cannot compare or a variant the manifest
    already is (it would equal the full loop)."""
    if len(rounds) < 2:
        raise AblationError(f"{source}: ablate needs a chain of at least 2 rounds (variants differ from round 2 on): "
                            "add a round with spec.previousRound")
    keys = {v.key for v in variants}
    for i, r in enumerate(rounds):
        where = f"{source}[{i}] ({r.name})"
        s = r.spec
        if i == 0 and s.previousRound:
            raise AblationError(f"{where}: spec.previousRound {s.previousRound!r} is not in {source}: ablate runs whole "
                                "chains; start the file at a round with spec.baseModel")
        if i > 0 and s.previousRound != rounds[i - 1].name:
            raise AblationError(f"{where}: spec.previousRound is {s.previousRound!r}, not the round before it "
                                f"({rounds[i - 1].name!r}): ablate runs one chain in file order")
        if s.stopWhen.minHeldoutGain is not None:
            raise AblationError(f"{where}: spec.stopWhen.minHeldoutGain is set, but ablate compares every round of every "
                                "variant (they would stop at different rounds): remove stopWhen")
        longest = max(len(v.suffix) for v in variants) + 1
        if len(r.name) + longest > NAME_MAX:
            raise AblationError(f"{where}: metadata.name is {len(r.name)} characters; ablate appends up to {longest} "
                                f"(-<variant>): use at most {NAME_MAX - longest}")
        if "no-jglv" in keys and not s.judge.enabled:
            raise AblationError(f"{where}: variant no-jglv sets spec.judge.enabled: false, but the manifest has it false "
                                "already (the full loop would not judge either): set judge.enabled: true or leave out no-jglv")
        if "no-edde" in keys and s.expand.factor == 0:
            raise AblationError(f"{where}: variant no-edde sets spec.expand.factor: 0, but the manifest has it 0 already: "
                                "set expand.factor > 0 or leave out no-edde")
        if "no-hpr" in keys and not s.compose.keepHighPerplexity:
            raise AblationError(f"{where}: variant no-hpr sets spec.compose.keepHighPerplexity: false, but the manifest "
                                "has it false already: set compose.keepHighPerplexity: true or leave out no-hpr")
        if "no-hpr" in keys and not s.compose.dropMastered:
            raise AblationError(f"{where}: variant no-hpr sets spec.compose.keepHighPerplexity: false (unsure samples "
                                "count as mastered), but spec.compose.dropMastered is false, so mastered samples are kept "
                                "anyway and no-hpr equals the full loop: set compose.dropMastered: true or leave out no-hpr")
        if "baseline" in keys and i > 0 and s.synthesis.numDialogues == 0:
            raise AblationError(f"{where}: variant baseline scales spec.synthesis.numDialogues to the full loop's training "
                                "set, but it is 0: set synthesis.numDialogues > 0 or leave out baseline")


def variant_rounds(rounds: list[LoopRound], source: str, variants: list[Variant]) -> dict[str, list[LoopRound]]:
    """Each variant's chain (the baseline's rounds k > 1 are placeholders until ``baseline_round``
    sizes them from the full loop). Raises ``AblationError`` (one line) for what cannot run."""
    _check(rounds, source, variants)
    out: dict[str, list[LoopRound]] = {}
    for v in variants:
        chain: list[LoopRound] = []
        for i, r in enumerate(rounds):
            where = f"{source}[{i}] ({r.name})"
            prev = variant_name(rounds[i - 1].name, v) if i else ""
            patch: dict[str, dict[str, Any]] = {}
            if v.key == "no-jglv":
                patch = {"judge": {"enabled": False, "candidates": 0}, "expand": {"factor": 0}}
            elif v.key == "no-edde":
                patch = {"expand": {"factor": 0}}
            elif v.key == "no-hpr":
                patch = {"compose": {"keepHighPerplexity": False}}
            elif v.key == "baseline" and i > 0:
                patch = {"judge": {"enabled": False, "candidates": 0}, "expand": {"factor": 0}}
            chain.append(_with(r, variant_name(r.name, v), prev, patch, where, v))
        out[v.key] = chain
    return out


def baseline_round(placeholder: LoopRound, original: LoopRound, full: RoundStatus) -> LoopRound:
    """The baseline's round k > 1, sized from the full loop's round k (``full``, Succeeded): as many
    fresh samples as the full loop trained on (dialogues scaled by its samples per dialogue) and its
    GRPO step count."""
    syn, train = full.stage("synthesize").counts, full.stage("train").counts
    target, fresh = syn.get("train_samples", 0), syn.get("fresh_samples", 0)
    dialogues = original.spec.synthesis.numDialogues
    if not fresh or not dialogues:
        raise AblationError(f"{original.name}: the full loop's round synthesized no samples; the baseline cannot be "
                            "count-matched (spec.synthesis.numDialogues)")
    n = max(1, round(target * dialogues / fresh))
    data = placeholder.model_dump(mode="json", exclude_none=True)
    data["spec"]["synthesis"]["numDialogues"] = n
    data["spec"]["training"]["grpoSteps"] = int(train.get("grpo_steps", 0))
    if data["spec"]["training"]["grpoSteps"] == 0:
        data["spec"]["training"]["sftWarmStart"] = True
    return LoopRound.model_validate(data)


# ----------------------------------------------------------------------------- the table


@dataclass
class Row:
    variant: str
    label: str
    round: int
    name: str
    phase: str
    heldout_after_sft: float | None
    heldout: float | None
    bfcl: float | None  # mean over the BFCL categories run
    train_samples: int | None
    grpo_steps: int | None
    noise_recovery: float | None  # share of injected wrong labels fixed so far (loop noise recall)
    wall_s: float  # stage time of this run (a stage reused from another variant takes ~0)
    train_s: float | None  # the training run's own time (also when reused)
    bfcl_categories: dict[str, float]

    @property
    def grpo_share(self) -> float | None:
        if self.heldout is None or self.heldout_after_sft is None:
            return None
        return self.heldout - self.heldout_after_sft


def _seconds(a: str, b: str) -> float:
    try:
        return max(0.0, (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds())
    except ValueError:
        return 0.0


def row_of(v: Variant, r: LoopRound, status: RoundStatus | None) -> Row:
    st = status or RoundStatus()
    acc = st.accuracy
    cats = {k.removeprefix("bfcl_"): v for k, v in acc.items() if k.startswith("bfcl_")}  # held-out breakdowns aside
    ev = st.stages.get("evaluate")
    train = st.stages.get("train")
    syn = st.stages.get("synthesize")
    noise = (ev.metrics.get("loopnoise_recall") if ev else None)
    return Row(
        variant=v.key, label=v.label, round=r.spec.round, name=r.name, phase=st.phase.value,
        heldout_after_sft=acc.get(HELDOUT_AFTER_SFT), heldout=acc.get(HELDOUT),
        bfcl=sum(cats.values()) / len(cats) if cats else None,
        train_samples=syn.counts.get("train_samples") if syn else None,
        grpo_steps=train.counts.get("grpo_steps") if train else None,
        noise_recovery=noise,
        wall_s=sum(_seconds(s.startedAt, s.finishedAt) for s in st.stages.values() if s.startedAt and s.finishedAt),
        train_s=train.metrics.get("seconds") if train else None,
        bfcl_categories=cats,
    )


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


HEADERS = ["variant", "round", "held-out after SFT %", "held-out after GRPO %", "GRPO share (pts)", "BFCL %",
           "train samples", "GRPO steps", "noise recovery %", "wall s", "train s"]


def _cells(row: Row) -> list[str]:
    return [row.label if row.round == 1 else "", f"{row.round}" + ("" if row.phase == "Succeeded" else f" ({row.phase})"),
            _pct(row.heldout_after_sft), _pct(row.heldout), _pct(row.grpo_share, signed=True), _pct(row.bfcl),
            "–" if row.train_samples is None else str(row.train_samples), "–" if row.grpo_steps is None else str(row.grpo_steps),
            _pct(row.noise_recovery), f"{row.wall_s:.0f}", "–" if row.train_s is None else f"{row.train_s:.0f}"]


def render_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    last = max((r.round for r in rows), default=0)
    full = next((r for r in rows if r.variant == "full" and r.round == last), None)
    if full is not None and full.heldout is not None:
        lines += ["", f"Final round ({last}) held-out accuracy vs the full loop:"]
        for r in rows:
            if r.round == last and r.variant != "full" and r.heldout is not None:
                lines.append(f"- {r.label}: {_pct(r.heldout)} ({_pct(r.heldout - full.heldout, signed=True)} pts)")
    return "\n".join(lines)


def render_csv(rows: list[Row]) -> str:
    cats = sorted({c for r in rows for c in r.bfcl_categories})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "round", "name", "phase", "heldout_after_sft", "heldout", "grpo_share", "bfcl_mean",
                *[f"bfcl_{c}" for c in cats], "train_samples", "grpo_steps", "noise_recovery", "wall_s", "train_s"])
    fmt: Callable[[Any], str] = lambda x: "" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))  # noqa: E731
    for r in rows:
        w.writerow([r.variant, r.round, r.name, r.phase, fmt(r.heldout_after_sft), fmt(r.heldout), fmt(r.grpo_share),
                    fmt(r.bfcl), *[fmt(r.bfcl_categories.get(c)) for c in cats], fmt(r.train_samples), fmt(r.grpo_steps),
                    fmt(r.noise_recovery), f"{r.wall_s:.1f}", fmt(r.train_s)])
    return buf.getvalue()


def plot(rows: list[Row], path: Path) -> bool:
    """Held-out accuracy per variant over the rounds (after SFT dashed), as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for v in VARIANTS:
        mine = [r for r in rows if r.variant == v.key and r.heldout is not None]
        if not mine:
            continue
        line, = ax.plot([r.round for r in mine], [100 * (r.heldout or 0.0) for r in mine], marker="o", label=v.label)
        sft = [r for r in mine if r.heldout_after_sft is not None]
        if sft:
            ax.plot([r.round for r in sft], [100 * (r.heldout_after_sft or 0.0) for r in sft], linestyle="--", marker=".",
                    color=line.get_color(), alpha=0.6)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy (%)  (dashed: after SFT)")
    ax.set_title("Ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


def write_table(rows: list[Row], out_dir: Path) -> tuple[str, list[Path]]:
    """ablation.md, ablation.csv and ablation.png (matplotlib) under ``out_dir`` (atomic writes);
    returns the Markdown table and the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_markdown(rows)
    files = []
    for name, text in (("ablation.md", "# Ablation\n\n" + md + "\n"), ("ablation.csv", render_csv(rows))):
        p = out_dir / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)
        files.append(p)
    png = out_dir / "ablation.png"
    if plot(rows, png):
        files.append(png)
    return md, files
