"""``looptool serve <service>``: run one gRPC service until SIGTERM."""

from __future__ import annotations

import argparse
import importlib

from looptool.shared.config import SERVICE_NAMES

SERVICES = {name: f"looptool.services.{name}.server" for name in SERVICE_NAMES}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", choices=sorted(SERVICES), help="which service to run")
    p.add_argument("--host", default=None, help="bind address (default: services.<name>.host)")
    p.add_argument("--port", type=int, default=None, help="gRPC port (default: services.<name>.port; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (0 = off)")
    p.add_argument("--port-file", default=None, help="write the bound port to this file once serving")


def run(args: argparse.Namespace) -> int:
    from looptool.shared.grpc_util import wait_for_termination

    endpoint = getattr(args.cfg.services, args.service)
    host = args.host or endpoint.host
    port = endpoint.port if args.port is None else args.port
    metrics_port = endpoint.metrics_port if args.metrics_port is None else args.metrics_port
    module = importlib.import_module(SERVICES[args.service])
    running = module.start(args.cfg, host=host, port=port, metrics_port=metrics_port)
    if args.port_file:
        from pathlib import Path

        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(args.port_file)
    print(f"looptool {args.service} serving on {host}:{running.port}", flush=True)
    wait_for_termination(running)
    return 0
