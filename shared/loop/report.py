"""Round reports: Markdown + HTML with per-stage counts, reward curves, accuracy per round and
category, JGLV noise recovery, and PNG plots (matplotlib, headless)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from looptool.shared import bfcl_scores
from looptool.shared.loop.manifest import LoopRound
from looptool.shared.loop.stages import LOOP_NOISE
from looptool.shared.loop.state import RoundStatus
from looptool.shared.records import RoundReport, StageReport

_REWARD_KEY = re.compile(r"^reward_step_(\d+)$")

# (stage, count key, label) rows of the per-stage table, in loop order.
COUNT_ROWS = [
    ("synthesize", "tools", "tools"),
    ("synthesize", "fresh_samples", "fresh samples (from dialogues)"),
    ("synthesize", "labels_corrupted", "labels corrupted on purpose"),
    ("synthesize", "train_samples", "training samples"),
    ("synthesize", "heldout_samples", "held-out samples"),
    ("probe", "mastered", "probe: mastered"),
    ("probe", "borderline", "probe: borderline"),
    ("probe", "failed", "probe: failed"),
    ("judge", "label_wrong", "judge: label wrong (relabelled)"),
    ("judge", "model_wrong", "judge: model wrong"),
    ("judge", "both_acceptable", "judge: both acceptable"),
    ("judge", "unclear", "judge: unclear"),
    ("expand", "written", "expansions written"),
    ("expand", "next_total", "next round's samples"),
]


LOOP_ROWS = ["corrupted", "relabelled", "detected", "fixed_exactly", "false_relabels", "removed", "still_wrong",
             "recall", "precision", "detection_recall", "detection_precision"]


def reward_curve(status: RoundStatus) -> list[float]:
    metrics = status.stages.get("train")
    if metrics is None:
        return []
    points = sorted((int(m.group(1)), v) for k, v in metrics.metrics.items() if (m := _REWARD_KEY.match(k)))
    return [v for _, v in points]


def round_report(r: LoopRound, status: RoundStatus) -> RoundReport:
    stages = [
        StageReport(
            stage=name,
            counts=dict(st.counts),
            metrics={k: v for k, v in st.metrics.items() if not _REWARD_KEY.match(k)},
            outputs=list(st.outputs.values()),
        )
        for name, st in status.stages.items()
    ]
    ev = status.stages.get("evaluate")
    noise = {k[len("noise_") :]: v for k, v in (ev.metrics.items() if ev else []) if k.startswith("noise_")}
    loop = {
        k[len(LOOP_NOISE) :]: v
        for k, v in (ev.metrics.items() if ev else [])
        if k.startswith(LOOP_NOISE) and not k.startswith(LOOP_NOISE + "gone_")
    }
    return RoundReport(
        round=r.spec.round,
        name=r.name,
        phase=status.phase.value,
        reason=status.message,
        stages=stages,
        accuracy=dict(status.accuracy),
        reward_curve=reward_curve(status),
        checkpoint_uri=status.checkpointUri,
        noise_recovery=noise,
        loop_noise=loop,
    )


def _count(rep: RoundReport, stage: str, key: str) -> str:
    for s in rep.stages:
        if s.stage == stage and key in s.counts:
            return str(s.counts[key])
    return "–"


def _plots(reports: list[RoundReport], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cats = sorted({c for r in reports for c in r.accuracy})
    if cats:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cats) + 2), 4))
        width = 0.8 / max(1, len(reports))
        for i, rep in enumerate(reports):
            xs = [j + i * width for j in range(len(cats))]
            ax.bar(xs, [100 * rep.accuracy.get(c, 0.0) for c in cats], width, label=rep.name)
        ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(cats))], cats, rotation=20, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy per round and category")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=110)
        plt.close(fig)
        files.append("accuracy.png")
    if any(r.reward_curve for r in reports):
        fig, ax = plt.subplots(figsize=(7, 4))
        offset = 0
        for rep in reports:
            if rep.reward_curve:
                xs = list(range(offset, offset + len(rep.reward_curve)))
                ax.plot(xs, rep.reward_curve, marker=".", label=rep.name)
                offset += len(rep.reward_curve)
        ax.set_xlabel("GRPO step (chained rounds)")
        ax.set_ylabel("mean reward")
        ax.set_title("Training reward")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "reward.png", dpi=110)
        plt.close(fig)
        files.append("reward.png")
    labels = [label for _, _, label in COUNT_ROWS[5:13]]
    if reports:
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / max(1, len(reports))
        for i, rep in enumerate(reports):
            vals = []
            for stage, key, _ in COUNT_ROWS[5:13]:
                v = _count(rep, stage, key)
                vals.append(int(v) if v.isdigit() else 0)
            ax.bar([j + i * width for j in range(len(labels))], vals, width, label=rep.name)
        ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(labels))], labels, rotation=25, ha="right")
        ax.set_title("Probe, judge and expansion counts")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=110)
        plt.close(fig)
        files.append("stages.png")
    return files


def bfcl_scorecard(rep: RoundReport) -> dict | None:
    """The round's BFCL scorecard (``bfcl_scores.scorecard``) from its evaluate stage, or None
    when the round scored no BFCL category."""
    ev = next((s for s in rep.stages if s.stage == "evaluate"), None)
    if ev is None:
        return None
    results = {}
    for key, n in ev.counts.items():
        if key.startswith("n_bfcl_") and n > 0:
            cat = key[len("n_bfcl_"):]
            acc = ev.metrics.get(f"accuracy_bfcl_{cat}", 0.0)
            results[cat] = bfcl_scores.CategoryResult(round(acc * n), n, ev.counts.get(f"undecodable_bfcl_{cat}", 0))
    if not results:
        return None
    overlap = bfcl_scores.overlap_line(bool(ev.counts.get("bfcl_overlap_allowed", 0)),
                                       ev.counts.get("bfcl_trained_functions_excluded", 0))
    return bfcl_scores.scorecard(results, model=rep.checkpoint_uri or rep.name, overlap=overlap)


def _scorecard_lines(reports: list[RoundReport]) -> list[str]:
    cards = [(r, c) for r in reports if (c := bfcl_scorecard(r)) is not None]
    if not cards:
        return []
    lines = ["", "## BFCL scorecard (leaderboard columns)", ""]
    lines += [f"- {r.name}: {c['header']}" for r, c in cards]
    lines += ["", "| | " + " | ".join(r.name for r, _ in cards) + " |", "|---|" + "---|" * len(cards)]
    columns = [k for k in cards[0][1]["tables"]["overall"] if k != "Model"]
    for col in columns:
        cells = [c["tables"]["overall"][col] for _, c in cards]
        if all(v == "N/A" for v in cells):
            continue  # a group no round ran
        lines.append(f"| {col} | " + " | ".join(
            ("N/A" if v == "N/A" else f"{100 * v:.2f}") + ("*" if col in c["partial"].get("overall", []) else "")
            for v, (_, c) in zip(cells, cards)) + " |")
    lines += ["", "N/A: not run (never counted as 0). \\* over the categories run only."]
    return lines


def render_markdown(reports: list[RoundReport], images: list[str]) -> str:
    lines = ["# LoopTool run report", ""]
    names = [r.name for r in reports]
    lines += ["## Rounds", "", "| round | phase | checkpoint |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.phase}{' (' + r.reason + ')' if r.reason else ''} | `{r.checkpoint_uri}` |" for r in reports]
    lines += ["", "## Per-stage counts", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for stage, key, label in COUNT_ROWS:
        lines.append(f"| {label} | " + " | ".join(_count(r, stage, key) for r in reports) + " |")
    cats = sorted({c for r in reports for c in r.accuracy})
    if cats:
        lines += ["", "## Accuracy (%)", "", "| category | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for c in cats:
            lines.append(
                f"| {c} | " + " | ".join(f"{100 * r.accuracy[c]:.1f}" if c in r.accuracy else "–" for r in reports) + " |"
            )
        if any({"heldout", "heldout_after_sft"} <= set(r.accuracy) for r in reports):
            # held-out after SFT and after GRPO (the evaluate stage scores both): what GRPO added
            lines.append("| GRPO's share of held-out (points) | " + " | ".join(
                f"{100 * (r.accuracy['heldout'] - r.accuracy['heldout_after_sft']):+.1f}"
                if {"heldout", "heldout_after_sft"} <= set(r.accuracy) else "–" for r in reports) + " |")
    lines += _scorecard_lines(reports)
    noisy = [r for r in reports if r.noise_recovery]
    if noisy:
        keys = sorted({k for r in noisy for k in r.noise_recovery})
        lines += ["", "## JGLV against injected label noise", "", "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for r in noisy:
            lines.append(f"| {r.name} | " + " | ".join(f"{r.noise_recovery.get(k, 0):.3g}" for k in keys) + " |")
    looped = [r for r in reports if r.loop_noise]
    if looped:
        keys = [k for k in LOOP_ROWS if any(k in r.loop_noise for r in looped)]
        lines += [
            "", "## Injected label noise across the loop", "",
            "All labels corrupted so far and where they stand after each round (relabelled by JGLV in any round; "
            "removed = left the data unfixed).", "",
            "| | " + " | ".join(r.name for r in looped) + " |", "|---|" + "---|" * len(looped),
        ]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(f"{r.loop_noise.get(k, 0):.3g}" for r in looped) + " |")
    curves = [r for r in reports if r.reward_curve]
    if curves:
        lines += ["", "## Training reward", ""]
        for r in curves:
            curve = r.reward_curve
            lines.append(f"- {r.name}: {len(curve)} GRPO steps, mean reward first {curve[0]:.3f} → last {curve[-1]:.3f}")
    if images:
        lines += ["", "## Plots", ""] + [f"![{img}]({img})" for img in images]
    return "\n".join(lines) + "\n"


def render_html(markdown_text: str, title: str = "LoopTool report") -> str:
    """A dependency-free HTML rendering of the report's Markdown (tables, headings, lists, images)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
           "</head><body>"]
    in_table = False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            out.append(f"<p><img src='{html.escape(src)}' alt='{html.escape(src)}'></p>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(rounds: list[tuple[LoopRound, RoundStatus]], out_dir: str | Path) -> tuple[Path, list[RoundReport]]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = [round_report(r, s) for r, s in rounds]
    images = _plots(reports, out)
    md = render_markdown(reports, images)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(md))
    (out / "rounds.json").write_text("[" + ",\n".join(r.model_dump_json(indent=1) for r in reports) + "]\n")
    for rep in reports:  # each round's full scorecard, as `looptool eval --out` writes it
        card = bfcl_scorecard(rep)
        if card is not None:
            (out / f"scorecard-{rep.name}.json").write_text(json.dumps(card, indent=1) + "\n")
            (out / f"scorecard-{rep.name}.md").write_text(bfcl_scores.render_markdown(card))
    return out / "report.md", reports
