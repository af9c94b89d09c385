"""``looptool serve <service>``: run one gRPC service until SIGTERM."""

from __future__ import annotations

import argparse
import importlib

from looptool.commands.argtypes import port
from looptool.shared.config import SERVICE_NAMES

SERVICES = {name: f"looptool.services.{name}.server" for name in SERVICE_NAMES}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", choices=sorted(SERVICES), help="which service to run")
    p.add_argument("--host", default=None, help="bind address (default: services.<name>.host)")
    p.add_argument("--port", type=port(), default=None, help="gRPC port (default: services.<name>.port; 0 = any free port)")
    p.add_argument("--metrics-port", type=port(), default=None, help="Prometheus /metrics port (0 = off)")
    p.add_argument("--port-file", default=None, help="write the bound port to this file once serving")


def _check_free(host: str, port: int, field: str) -> None:
    """A busy port is one line before the model loads (minutes for a large one), not an OSError after."""
    import socket

    from looptool.shared.errors import InputError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError("--host", f"{host!r} does not resolve ({exc.strerror})", "pass an IP address or a known host name") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: only a listener makes it busy
        try:
            s.bind(addr)
        except OSError as exc:
            raise InputError(field, f"cannot bind {host}:{port} ({exc.strerror})", "stop what listens there or pick a free port (0 = any)") from None


def run(args: argparse.Namespace) -> int:
    from looptool.shared.errors import InputError
    from looptool.shared.grpc_util import wait_for_termination

    endpoint = getattr(args.cfg.services, args.service)
    host = args.host or endpoint.host
    port = endpoint.port if args.port is None else args.port
    metrics_port = endpoint.metrics_port if args.metrics_port is None else args.metrics_port
    where = f"services.{args.service}"
    _check_free(host, port, "--port" if args.port is not None else f"{where}.port")
    _check_free("0.0.0.0", metrics_port, "--metrics-port" if args.metrics_port is not None else f"{where}.metrics_port")
    module = importlib.import_module(SERVICES[args.service])
    try:
        running = module.start(args.cfg, host=host, port=port, metrics_port=metrics_port)
    except OSError as exc:  # taken between the check and the bind
        if "cannot bind" in str(exc) or "metrics" in str(exc):
            raise InputError("--metrics-port" if "metrics" in str(exc) else "--port", str(exc)) from None
        raise
    if args.port_file:
        from pathlib import Path

        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(args.port_file)
    print(f"looptool {args.service} serving on {host}:{running.port}", flush=True)
    wait_for_termination(running)
    return 0
