"""``looptool operator``: reconcile LoopRound resources on a Kubernetes cluster (kopf)."""

from __future__ import annotations

import argparse

from looptool.commands.argtypes import port


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", default=None, help="operator settings YAML (the chart mounts /etc/looptool/operator/operator.yaml)")
    p.add_argument("-n", "--namespace", action="append", dest="namespaces", default=None,
                   help="watch this namespace (repeatable); default: settings.namespaces, else all namespaces")
    p.add_argument("--metrics-port", type=port(), default=None, help="Prometheus /metrics port (0 = off; default 9100)")
    p.add_argument("--api-url", default=None, help="Kubernetes API URL (default: in-cluster config, then kubeconfig)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                   help="kopf liveness endpoint URL for the kubelet probe ('' = off)")
    p.add_argument("--print-crd", action="store_true", help="print the LoopRound CRD YAML and exit")


def run(args: argparse.Namespace) -> int:
    if args.print_crd:
        from looptool.operators.crd import render

        print(render(), end="")
        return 0
    from looptool.operators.main import run as run_operator
    from looptool.operators.settings import load_settings

    settings = load_settings(
        args.settings,
        {"namespaces": args.namespaces, "metricsPort": args.metrics_port, "apiUrl": args.api_url},
    )
    return run_operator(settings, args.cfg, liveness=args.liveness or None)
