"""``looptool eval``: BFCL AST categories and held-out synthesized data for one model."""

from __future__ import annotations

import argparse
import json

from looptool.commands.argtypes import address, count
from looptool.shared.config import SecuritySettings


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory / checkpoint URI (or model name for openai backends)")
    p.add_argument("--server", type=address, default="", help="use a running inference server at HOST:PORT instead of loading in-process")
    p.add_argument("--bfcl", default="", help="comma-separated BFCL categories, e.g. simple_python,multiple,parallel,irrelevance")
    p.add_argument("--limit", type=count(), default=0, help="entries per BFCL category (0 = all)")
    p.add_argument("--heldout", default="", help="held-out samples dataset URI")
    p.add_argument("--max-tokens", type=count(1), default=256, help="most new tokens per answer (at most limits.max_tokens)")
    p.add_argument("--json", dest="json_out", default="", help="also write the report as JSON to this file")


def _check_server(address: str, security: "SecuritySettings | None" = None) -> None:
    """A dead --server is one line now, not a gRPC traceback after the BFCL data has loaded."""
    import socket

    from looptool.shared.errors import InputError
    from looptool.shared.grpc_util import wait_healthy

    host, _, port = address.rpartition(":")
    fix = "start one (looptool serve inference) or fix --server"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        wait_healthy(address, timeout=10, security=security)
    except (OSError, TimeoutError) as exc:
        raise InputError("--server", f"no inference server answers at {address} ({getattr(exc, 'strerror', None) or 'not serving'})", fix) from None


def run(args: argparse.Namespace) -> int:
    from looptool.shared.errors import InputError
    from looptool.shared.evaluation import evaluate
    from looptool.shared.generation import Generator

    cats = [c.strip() for c in args.bfcl.split(",") if c.strip()]
    if not cats and not args.heldout:
        raise InputError("--bfcl/--heldout", "nothing to evaluate", "name BFCL categories or a held-out dataset")
    if cats:
        from looptool.shared import bfcl

        for c in cats:
            try:
                bfcl.resolve_category(c)
            except ValueError as exc:
                raise InputError("--bfcl", str(exc)) from None
    from looptool.shared.limits import check_int

    check_int("--max-tokens", args.max_tokens, 1, args.cfg.limits.max_tokens, "max_tokens")
    gen: Generator
    if args.server:
        from looptool.services.inference.client import InferenceClient

        _check_server(args.server, args.cfg.security)

        gen = InferenceClient(args.server, model=args.model, security=args.cfg.security)
    else:
        from looptool.services.inference.backends import make_backend

        gen = make_backend(args.cfg.inference, model_uri=args.model, s3=args.cfg.storage.s3)
    heldout = None
    if args.heldout:
        from looptool.shared.storage import open_dataset

        heldout = open_dataset(args.heldout, args.cfg.storage.s3).ref
    report = evaluate(gen, heldout=heldout, bfcl_categories=cats, bfcl_limit=args.limit, max_tokens=args.max_tokens, s3=args.cfg.storage.s3)
    width = max([len(k) for k in report.accuracy] + [10])
    print(f"{'category'.ljust(width)}  {'n':>5}  accuracy")
    for k in report.accuracy:
        print(f"{k.ljust(width)}  {report.counts[k]:>5}  {100 * report.accuracy[k]:6.2f}%")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report.to_json(), fh, indent=1)
    return 0
