"""The LoopTool Grafana dashboard, generated (one row per stage) and shipped in the chart.

    python -m looptool.operators.dashboard --write   # regenerate charts/looptool/dashboards/looptool.json
    python -m looptool.operators.dashboard --check   # exit 1 if that file is stale

Only metric names the code exports are referenced (``tests/operators/test_dashboard.py`` collects both sides
and fails on a name no code exports). Grafana variables: ``$datasource``, ``$namespace``, ``$round``;
``$__rate_interval`` / ``$__range`` are Grafana built-ins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from looptool.shared.config import SERVICE_NAMES

REPO = Path(__file__).resolve().parent.parent
CHART_DASHBOARD = REPO / "charts" / "looptool" / "dashboards" / "looptool.json"
UID = "looptool-overview"

NS = 'namespace=~"$namespace"'
ROUND = 'namespace=~"$namespace", round=~"$round"'
RATE = "$__rate_interval"

DS = {"type": "prometheus", "uid": "${datasource}"}


class Builder:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], kind: str = "timeseries", w: int = 8, h: int = 8,
              unit: str = "short", description: str = "", stack: bool = False, options: dict | None = None,
              instant: bool = False) -> None:
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        fieldconfig: dict[str, Any] = {"defaults": {"unit": unit}, "overrides": []}
        if kind == "timeseries":
            fieldconfig["defaults"]["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 5, "showPoints": "never",
                "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            }
        p: dict[str, Any] = {
            "type": kind,
            "title": title,
            "id": self._id(),
            "datasource": DS,
            "description": description,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": fieldconfig,
            "options": options or {},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                 **({"instant": True, "range": False, "format": "table"} if instant else {"range": True})}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)


def rate(metric: str, by: str = "", sel: str = NS) -> str:
    agg = f"sum by ({by}) " if by else "sum "
    return f"{agg}(rate({metric}{{{sel}}}[{RATE}]))"


def increase(metric: str, by: str = "", sel: str = NS) -> str:
    agg = f"sum by ({by}) " if by else "sum "
    return f"{agg}(increase({metric}{{{sel}}}[$__range]))"


def quantile(q: float, metric: str, by: str = "", sel: str = NS) -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RATE}])))"


def build() -> dict[str, Any]:
    b = Builder()

    # ------------------------------------------------------------------ rounds (operator)
    b.row("Rounds (operator)")
    b.panel("Round phase", [(f"max by (namespace, round, phase) (looptool_operator_round_phase{{{ROUND}}}) == 1", "{{round}}: {{phase}}")],
            kind="table", w=8, instant=True, description="Current phase of each LoopRound (kubectl get looprounds).")
    b.panel("Round accuracy", [(f"max by (round, metric) (looptool_operator_round_accuracy{{{ROUND}}})", "{{round}} {{metric}}")],
            kind="bargauge", w=8, unit="percentunit", description="Accuracy measured by each round's evaluation stage.",
            options={"orientation": "horizontal", "displayMode": "gradient"})
    b.panel("Stage progress", [(f"max by (round, stage) (looptool_operator_stage_progress_ratio{{{ROUND}}})", "{{round}} {{stage}}")],
            w=8, unit="percentunit", description="done/total of running data stages.")
    b.panel("Training Jobs", [(increase("looptool_operator_training_jobs_total", "event"), "{{event}}")],
            kind="stat", w=6, description="Trainer Jobs created / succeeded / failed in the time range.")
    b.panel("Rounds finished", [(increase("looptool_operator_rounds_finished_total", "phase"), "{{phase}}")], kind="stat", w=6)
    b.panel("Stage failures", [(increase("looptool_operator_stage_failures_total", "stage, reason"), "{{stage}}: {{reason}}")],
            kind="stat", w=6, description="Failed stage attempts (retried ones included) by reason.")
    b.panel("Stage duration p50", [(quantile(0.5, "looptool_operator_stage_duration_seconds", "stage"), "{{stage}}")],
            kind="bargauge", w=6, unit="s", options={"orientation": "horizontal"})
    b.panel("Reconciles", [(rate("looptool_operator_reconciles_total", "result"), "{{result}}")], w=10, unit="ops")
    b.panel("Reconcile step latency p95", [(quantile(0.95, "looptool_operator_reconcile_seconds"), "p95")], w=10, unit="s")
    b.panel("Invalid specs", [(increase("looptool_operator_invalid_specs_total"), "rejected")], kind="stat", w=4,
            description="LoopRound specs the operator reported as InvalidSpec in the time range.")

    # ------------------------------------------------------------------ synthesis
    b.row("Synthesis (dialogue synthesizer)")
    b.panel("Synthesis rate", [(rate("looptool_synthesizer_dialogs_total", "outcome"), "{{outcome}}")], w=8, unit="ops", stack=True,
            description="Dialogues synthesized per second, by outcome.")
    b.panel("Rejected dialogues", [(rate("looptool_synthesizer_rejections_total", "filter"), "{{filter}}")], w=8, unit="ops", stack=True)
    b.panel("Dialogue latency", [(quantile(0.5, "looptool_synthesizer_dialog_seconds"), "p50"),
                                 (quantile(0.95, "looptool_synthesizer_dialog_seconds"), "p95")], w=8, unit="s")
    b.panel("Assistant turns", [(rate("looptool_synthesizer_assistant_turns_total", "kind"), "{{kind}}")], w=12, unit="ops", stack=True)
    b.panel("Synthesizer RPCs", [(rate("looptool_synthesizer_rpc_requests_total", "method, code"), "{{method}} {{code}}")], w=12, unit="reqps")

    # ------------------------------------------------------------------ tool simulator
    b.row("Tool simulator")
    b.panel("Tool calls", [(rate("looptool_toolsim_calls_total", "mode"), "{{mode}}")], w=6, unit="ops", stack=True)
    b.panel("Tool simulator errors", [(rate("looptool_toolsim_errors_total", "type"), "{{type}}")], w=6, unit="ops", stack=True,
            description="Tool calls answered with an error, by error type (injected errors included).")
    b.panel("Error ratio", [(f"{rate('looptool_toolsim_errors_total')} / {rate('looptool_toolsim_calls_total')}", "errors / calls")],
            w=4, unit="percentunit", kind="stat")
    b.panel("Tool call latency p95", [(quantile(0.95, "looptool_toolsim_call_latency_seconds", "mode"), "{{mode}}")], w=4, unit="s")
    b.panel("Open sessions", [(f"sum(looptool_toolsim_sessions_open{{{NS}}})", "sessions")], w=4)

    # ------------------------------------------------------------------ probe
    b.row("Probe (greedy capability probing)")
    b.panel("Probe throughput", [(rate("looptool_inference_probe_samples_total", "status"), "{{status}}")], w=8, unit="ops", stack=True,
            description="Samples probed per second.")
    b.panel("Probe outcomes", [(increase("looptool_inference_probe_outcomes_total", "outcome"), "{{outcome}}")], kind="bargauge", w=8,
            description="mastered / borderline (correct but high perplexity) / failed in the time range.",
            options={"orientation": "horizontal", "displayMode": "gradient"})
    b.panel("Probe outcomes over time", [(rate("looptool_inference_probe_outcomes_total", "outcome"), "{{outcome}}")], w=8, unit="ops", stack=True)
    b.panel("Tokens", [(rate("looptool_inference_tokens_total", "backend, kind"), "{{backend}} {{kind}}")], w=6, unit="ops")
    b.panel("Inference queue", [(f"sum by (backend) (looptool_inference_queue_depth{{{NS}}})", "{{backend}} waiting")], w=6)
    b.panel("Queue wait p95", [(quantile(0.95, "looptool_inference_queue_wait_seconds", "backend"), "{{backend}}")], w=6, unit="s")
    b.panel("Generation latency p95", [(quantile(0.95, "looptool_inference_generate_latency_seconds", "rpc"), "{{rpc}}")], w=6, unit="s")
    b.panel("Generation requests", [(rate("looptool_inference_generate_requests_total", "rpc, status"), "{{rpc}} {{status}}")], w=8, unit="reqps")
    b.panel("Batch size p50", [(quantile(0.5, "looptool_inference_batch_size", "backend"), "{{backend}}")], w=8,
            description="Sequences per batched forward pass of the inference backend.")
    b.panel("Remote endpoint retries", [(rate("looptool_inference_remote_retries_total", "backend, reason"), "{{backend}} {{reason}}")], w=8, unit="ops",
            description="Retried requests to an OpenAI-compatible endpoint (rate limits, timeouts).")

    # ------------------------------------------------------------------ judge
    b.row("Judge (label verification)")
    b.panel("Judge verdicts", [(increase("looptool_inference_judge_verdicts_total", "decision"), "{{decision}}")], kind="bargauge", w=12,
            description="label incorrect / prediction incorrect / both correct / both incorrect in the time range.",
            options={"orientation": "horizontal", "displayMode": "gradient"})
    b.panel("Verdict rate", [(rate("looptool_inference_judge_verdicts_total", "decision"), "{{decision}}")], w=12, unit="ops", stack=True)

    # ------------------------------------------------------------------ expansion
    b.row("Expansion (error-driven data expansion)")
    b.panel("Expansion counts", [(increase("looptool_expander_seeds_total"), "error seeds"),
                                 (increase("looptool_expander_generated_total", "generator"), "generated ({{generator}})"),
                                 (increase("looptool_expander_written_total"), "samples written")],
            kind="bargauge", w=8, options={"orientation": "horizontal"})
    b.panel("Rejected drafts", [(rate("looptool_expander_rejected_total", "reason"), "{{reason}}")], w=8, unit="ops", stack=True)
    b.panel("Expansion rate", [(rate("looptool_expander_written_total"), "written"), (rate("looptool_expander_seeds_total"), "seeds")], w=8, unit="ops")

    # ------------------------------------------------------------------ training
    b.row("Training (GRPO)")
    b.panel("Training step", [(f"max by (phase) (looptool_trainer_step{{{NS}}})", "{{phase}}")], w=6)
    b.panel("Reward", [(f"avg(looptool_trainer_reward_mean{{{NS}}})", "mean"), (f"avg(looptool_trainer_reward_std{{{NS}}})", "std")], w=6)
    b.panel("Loss", [(f"avg by (phase) (looptool_trainer_loss{{{NS}}})", "{{phase}}")], w=6)
    b.panel("KL", [(f"avg(looptool_trainer_kl{{{NS}}})", "KL")], w=6)
    b.panel("Tokens/s", [(f"sum by (phase) (looptool_trainer_tokens_per_second{{{NS}}})", "{{phase}}")], w=6)
    b.panel("Rollout share of step", [(f"avg(looptool_trainer_generation_share{{{NS}}})", "generation")], w=6, unit="percentunit")
    b.panel("Step time p50", [(quantile(0.5, "looptool_trainer_step_seconds", "phase"), "{{phase}}")], w=6, unit="s")
    # A trainer Job counts its run just before its process exits, so Prometheus rarely scrapes that
    # count; the operator, which sees every Job end, counts Job runs (event -> state), and the
    # trainer service's own counter (series without a `round` label: not a Job pod) adds local runs.
    job_runs = (f'label_replace(increase(looptool_operator_training_jobs_total{{{NS}, event=~"succeeded|failed"}}[$__range]), '
                '"state", "$1", "event", "(.*)")')
    service_runs = f'increase(looptool_trainer_runs_total{{{NS}, round=""}}[$__range])'
    b.panel("Training runs", [(f"sum by (state) ({job_runs} or {service_runs})", "{{state}}"),
                              (f"sum(looptool_trainer_runs_active{{{NS}}})", "active")], kind="stat", w=6,
            description="Training runs that ended in the time range by state: trainer Jobs as the operator saw them end, "
                        "and the trainer service's runs (looptool run); active: runs in progress.")

    # ------------------------------------------------------------------ services
    b.row("gRPC services")
    services = SERVICE_NAMES
    b.panel("Requests", [(rate(f"looptool_{s}_rpc_requests_total"), s) for s in services], w=8, unit="reqps")
    b.panel("Errors", [(f'sum(rate(looptool_{s}_rpc_requests_total{{{NS}, code!="OK"}}[{RATE}]))', s) for s in services], w=8, unit="reqps")
    b.panel("Latency p95", [(quantile(0.95, f"looptool_{s}_rpc_latency_seconds"), s) for s in services], w=8, unit="s")
    b.panel("In flight", [(f"sum(looptool_{s}_rpc_inflight{{{NS}}})", s) for s in services], w=24, h=6)

    return {
        "uid": UID,
        "title": "LoopTool",
        "description": "LoopTool closed loop: rounds, synthesis, tool simulator, probe, judge, expansion, training, services.",
        "tags": ["looptool", "llm", "tool-calling"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
                 "current": {}, "hide": 0, "refresh": 1},
                {"name": "namespace", "type": "query", "label": "Namespace", "datasource": DS,
                 "query": {"query": "label_values(looptool_operator_round_phase, namespace)", "refId": "ns"},
                 "definition": "label_values(looptool_operator_round_phase, namespace)",
                 "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "current": {}},
                {"name": "round", "type": "query", "label": "LoopRound", "datasource": DS,
                 "query": {"query": 'label_values(looptool_operator_round_phase{namespace=~"$namespace"}, round)', "refId": "round"},
                 "definition": 'label_values(looptool_operator_round_phase{namespace=~"$namespace"}, round)',
                 "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "current": {}},
            ]
        },
        "panels": b.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m looptool.operators.dashboard")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        CHART_DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
        CHART_DASHBOARD.write_text(text)
        print(f"wrote {CHART_DASHBOARD.relative_to(REPO)}")
    elif args.check:
        if not CHART_DASHBOARD.exists() or CHART_DASHBOARD.read_text() != text:
            print(f"{CHART_DASHBOARD.relative_to(REPO)} is stale; run: python -m looptool.operators.dashboard --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
