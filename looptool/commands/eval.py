"""``looptool eval``: BFCL categories (AST and multi-turn) and held-out synthesized data for one model.

Multi-turn categories (``multi_turn_*``) run BFCL's classes on the tool simulator: a running one
(``--toolsim HOST:PORT``) or one embedded in this process.

Scores every entry of each category (``--limit N``: a seeded sample of N), prints the per-category
results and BFCL's leaderboard aggregates (``shared/bfcl_scores.py``), and with ``--out DIR`` writes
the scorecard (``scorecard.json``, ``scorecard.md``) and each finished category under
``DIR/categories/`` as it finishes, so a rerun with the same settings resumes where it stopped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from looptool.commands.argtypes import address, count
from looptool.shared.config import SecuritySettings


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory / checkpoint URI (or model name for openai backends)")
    p.add_argument("--server", type=address, default="", help="use a running inference server at HOST:PORT instead of loading in-process")
    p.add_argument("--bfcl", default="", help="comma-separated BFCL categories, e.g. simple_python,multiple,parallel,irrelevance,multi_turn_base")
    p.add_argument("--toolsim", type=address, default="",
                   help="tool simulator at HOST:PORT for BFCL multi-turn categories (default: one embedded in this process)")
    p.add_argument("--limit", type=count(), default=0, help="score a seeded sample of N entries per BFCL category (default: all)")
    p.add_argument("--heldout", default="", help="held-out samples dataset URI")
    p.add_argument("--max-tokens", type=count(1), default=256, help="most new tokens per answer (at most limits.max_tokens)")
    p.add_argument("--json", dest="json_out", default="", help="also write the report as JSON to this file")
    p.add_argument("--out", default="", help="directory for scorecard.json / scorecard.md and finished categories (a rerun resumes)")
    p.add_argument("--exclude-functions", default="",
                   help="functions the model trained on (comma-separated, or @FILE: a JSON list or one per line); "
                        "BFCL entries using any of them are not scored")


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


def _check_endpoint(inference) -> None:
    """An OpenAI-compatible endpoint that refuses connections is one line before any work."""
    import socket
    from urllib.parse import urlsplit

    from looptool.shared.errors import InputError

    if inference.backend not in ("openai", "vllm") or (inference.backend == "vllm" and inference.vllm_mode == "in_process"):
        return
    url = urlsplit(inference.base_url)
    if not url.hostname:
        raise InputError("inference.base_url", f"{inference.base_url!r} is not a URL", "set it to the endpoint, e.g. http://host:8000/v1")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as exc:
        raise InputError("inference.base_url", f"no model endpoint answers at {inference.base_url} ({exc.strerror or exc})",
                         "start the endpoint or fix inference.base_url") from None


def _exclude_functions(text: str) -> list[str] | None:
    from looptool.shared.errors import InputError

    if not text:
        return None
    if not text.startswith("@"):
        return [n.strip() for n in text.split(",") if n.strip()]
    path = text[1:]
    try:
        body = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise InputError("--exclude-functions", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        names = json.loads(body)
    except ValueError:
        names = [line.strip() for line in body.splitlines() if line.strip()]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError("--exclude-functions", f"{path}: not a JSON list of function names", "give a JSON list or one name per line")
    return names


def _tool_executor(args: argparse.Namespace, cats: list[str]):
    """BFCL's classes on the tool simulator, for multi-turn categories (else None)."""
    from looptool.shared.bfcl_multiturn import is_multi_turn

    if not any(is_multi_turn(c) for c in cats):
        return None
    from looptool.services.toolsim.bfcl_env import ToolSimBfclExecutor

    if not args.toolsim:
        return ToolSimBfclExecutor()
    import socket

    from looptool.services.toolsim.client import ToolSimClient
    from looptool.shared.errors import InputError

    host, _, port = args.toolsim.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise InputError("--toolsim", f"no tool simulator answers at {args.toolsim} ({exc.strerror or exc})",
                         "start one (looptool serve toolsim), fix --toolsim, or leave it out to use an embedded one") from None
    return ToolSimBfclExecutor(ToolSimClient(args.toolsim, security=args.cfg.security))


def _write_atomic(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    from looptool.shared.errors import InputError
    from looptool.shared.evaluation import EndpointDown, ResultStore, evaluate
    from looptool.shared.generation import Generator

    cats = [c.strip() for c in args.bfcl.split(",") if c.strip()]
    if not cats and not args.heldout:
        raise InputError("--bfcl/--heldout", "nothing to evaluate", "name BFCL categories or a held-out dataset")
    if cats:
        from looptool.shared import bfcl, bfcl_multiturn

        for c in cats:
            try:
                bfcl_multiturn.resolve_category(c) if bfcl_multiturn.is_multi_turn(c) else bfcl.resolve_category(c)
            except ValueError as exc:
                raise InputError("--bfcl", str(exc)) from None
    tool_executor = _tool_executor(args, cats)
    from looptool.shared.limits import check_int

    check_int("--max-tokens", args.max_tokens, 1, args.cfg.limits.max_tokens, "max_tokens")
    exclude = _exclude_functions(args.exclude_functions)
    gen: Generator
    if args.server:
        from looptool.services.inference.client import InferenceClient

        _check_server(args.server, args.cfg.security)

        gen = InferenceClient(args.server, model=args.model, security=args.cfg.security)
    else:
        from looptool.services.inference.backends import make_backend

        _check_endpoint(args.cfg.inference)
        gen = make_backend(args.cfg.inference, model_uri=args.model, s3=args.cfg.storage.s3)
    heldout = None
    if args.heldout:
        from looptool.shared.storage import open_dataset

        heldout = open_dataset(args.heldout, args.cfg.storage.s3).ref
    out = Path(args.out) if args.out else None
    store = None
    if out is not None:
        from importlib.metadata import version

        from looptool.shared.records import content_key

        # a finished category is reused only if it was scored the same way
        fingerprint = {"model": args.model, "server": args.server, "backend": "" if args.server else args.cfg.inference.backend,
                       "max_tokens": args.max_tokens, "limit": args.limit, "bfcl_eval": version("bfcl-eval"),
                       "exclude": content_key(sorted(set(exclude)), 16) if exclude is not None else None}
        store = ResultStore(out / "categories", fingerprint)

    def told(name: str, res, reused: bool) -> None:
        if reused:
            print(f"{name}: kept from an earlier run ({res.result.correct}/{res.result.total})", flush=True)

    try:
        report = evaluate(gen, heldout=heldout, bfcl_categories=cats, bfcl_limit=args.limit, max_tokens=args.max_tokens,
                          s3=args.cfg.storage.s3, bfcl_exclude_functions=exclude, store=store, on_category=told,
                          tool_executor=tool_executor)
    except EndpointDown as exc:
        kept = f"; finished categories are kept in {out / 'categories'}, rerun to resume" if out is not None else ""
        raise InputError("model endpoint", str(exc), "bring it back and rerun" + kept) from None
    _print_and_write(args, report, exclude, out)
    return 0


def _print_and_write(args: argparse.Namespace, report, exclude: list[str] | None, out: Path | None) -> None:
    from looptool.shared import bfcl_scores
    from looptool.shared.bfcl_scores import CategoryResult

    width = max([len(k) for k in report.counts] + [10])
    print(f"{'category'.ljust(width)}  {'n':>5}  {'undecodable':>11}  accuracy")
    for k, n in report.counts.items():
        acc = f"{100 * report.accuracy[k]:6.2f}%" if k in report.accuracy else "   N/A (no entry left to score)"
        print(f"{k.ljust(width)}  {n:>5}  {report.undecodable.get(k, 0):>11}  {acc}")
    if exclude is None:
        overlap = "overlap: unknown — no trained functions given (--exclude-functions); whole categories scored"
    else:
        overlap = bfcl_scores.overlap_line(False, len(set(exclude)))
    heldout = {k: CategoryResult(round(report.accuracy.get(k, 0.0) * n), n) for k, n in report.counts.items() if k.startswith("heldout")}
    card = bfcl_scores.scorecard(report.bfcl, model=args.model, overlap=overlap, extra=heldout)
    if report.bfcl:
        print(card["header"])
        for column, value in card["tables"]["overall"].items():
            if column != "Model" and value != "N/A":
                print(f"  {column}: {100 * value:.2f}%{'  (over the categories run)' if column in card['partial'].get('overall', []) else ''}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report.to_json(), fh, indent=1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "scorecard.json", json.dumps(card, indent=1) + "\n")
        _write_atomic(out / "scorecard.md", bfcl_scores.render_markdown(card))
        print(f"scorecard: {out / 'scorecard.md'}")
