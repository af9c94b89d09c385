"""``looptool run FILE.yaml``: run LoopRound manifest(s) on this machine (services as local processes)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm



def checked_and_leased(rounds, cfg, statuses, manifest: str, *, wait: bool, fresh: bool = False) -> tuple[int, Any]:
    """``(0, leases)`` once every reference of every round checks out (all problems at once, before
    anything starts or is written) and this process holds each round's lease (one runner per round:
    a second runner stops, naming the holder); else ``(exit code, None)`` with the errors printed."""
    from looptool.runner import hold_rounds, preflight_rounds
    from looptool.shared.loop.lease import LeaseHeld

    problems = preflight_rounds(rounds, cfg, statuses, fresh=fresh)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if len(problems) > 1:  # one problem stays one line
            print(f"error: {len(problems)} problems in {manifest}; nothing was started or written", file=sys.stderr)
        return 2, None
    try:
        return 0, hold_rounds(rounds, statuses, cfg.storage.s3, wait=wait)
    except LeaseHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3, None

def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="LoopRound YAML: one round, several (---), or a kind: List; chained in order")
    p.add_argument("--storage-root", default=None, help="local storage directory (default: storage.root)")
    p.add_argument("--report-dir", default=None, help="where the report goes (default: <storage-root>/report)")
    p.add_argument("--fresh", action="store_true", help="ignore saved status and start every round from Pending")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--wait", action="store_true",
        help="when another runner holds a round (its lease), wait for it instead of exiting with code 3",
    )


class _UI:
    """A progress bar per stage (tqdm) and a one-line summary when a stage finishes."""

    def __init__(self, round_name: str, quiet: bool):
        self.round_name, self.quiet = round_name, quiet
        self.bar: tqdm[Any] | None = None
        self.started = 0.0

    def __call__(self, stage: str, progress) -> None:
        from tqdm import tqdm

        if progress is None:
            self.started = time.monotonic()
            if not self.quiet:
                self.bar = tqdm(total=0, desc=f"{self.round_name} {stage:<10}", unit="it", leave=False, file=sys.stderr)
            return
        if progress.message == "done" or progress.message.startswith("FAILED"):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            mark = "✗" if progress.message.startswith("FAILED") else "✓"
            print(f"{mark} {self.round_name} {stage:<10} {time.monotonic() - self.started:6.1f}s {progress.message if mark == '✗' else ''}", flush=True)
            return
        if self.bar is not None:
            if progress.total and self.bar.total != progress.total:
                self.bar.total = progress.total
            self.bar.n = progress.done
            extra = " ".join(f"{k}={v:.3g}" for k, v in list(progress.metrics.items())[:3])
            self.bar.set_postfix_str(extra or progress.message[:30], refresh=True)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `configure` stays cheap for every other sub-command (cli.py).
    from pathlib import Path

    from looptool.runner import LocalServices, StatusStore, drive_chain
    from looptool.services.inference.client import InferenceClient
    from looptool.services.toolsim import bfcl_env
    from looptool.shared.limits import check_round_numbers
    from looptool.shared.loop.chain import round_base_uri
    from looptool.shared.loop.manifest import ManifestError, load_manifests
    from looptool.shared.loop.report import write_report
    from looptool.shared.loop.stages import StageContext
    from looptool.shared.loop.state import Phase

    cfg = args.cfg
    if args.storage_root:
        cfg.storage.root = args.storage_root
        cfg.storage.backend = "local"
    try:
        rounds = load_manifests(args.manifest, cfg.limits.manifest_bytes)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i, r in enumerate(rounds):  # numbers over the services' caps: refused here, before anything starts
        check_round_numbers(r, cfg.limits, f"{args.manifest}[{i}]")
    # One store for the whole file: the first round's (its outputs and every round's saved status).
    base_uri = round_base_uri(rounds[0], cfg)
    statuses = StatusStore(base_uri, cfg.storage.s3)
    # Every reference of every round that will run (toolset, datasets, models, previousRound here or
    # in storage, the store itself, numbers), all problems at once, before anything starts or is written.
    code, leases = checked_and_leased(rounds, cfg, statuses, args.manifest, wait=args.wait, fresh=args.fresh)
    if leases is None:
        return code
    if args.fresh:
        for r in rounds:
            statuses.delete(r.name)

    root = Path(cfg.storage.root).resolve()
    started = time.monotonic()
    contexts: list[StageContext] = []

    def context(r, previous):
        ctx = StageContext(
            round=r, config=cfg, addresses=services.addresses, base_uri=base_uri, generator=InferenceClient, previous=previous,
            tool_executor=bfcl_env.connect,
        )
        contexts.append(ctx)
        return ctx

    with leases, LocalServices(cfg, root / "logs") as services:
        print(f"services up: {', '.join(f'{k}@{v}' for k, v in services.addresses.items())}", flush=True)
        chain = drive_chain(rounds, context, statuses, lambda r: _UI(r.name, args.quiet))
    results = chain.results
    for ctx in contexts:
        if ctx.item_errors:
            print(f"  {ctx.round.name}: {len(ctx.item_errors)} per-item errors (first: {ctx.item_errors[0].message[:120]})")
    last = results[-1][1] if results else None
    if last is not None and last.phase != Phase.SUCCEEDED:
        print(f"round {results[-1][0].name} failed: {last.reason}: {last.message}", file=sys.stderr)
    report_dir = Path(args.report_dir) if args.report_dir else root / "report"
    path, reports = write_report(results, report_dir)
    print()
    print(summary(reports))
    if chain.stopped is not None:
        print(f"chain stopped: {chain.stopped.message}: {', '.join(chain.not_run)}")
    print(f"report: {path}  (total {time.monotonic() - started:.0f}s)")
    done = len(results) + len(chain.not_run) == len(rounds)
    return 0 if chain.succeeded and done else 1


def summary(reports) -> str:
    cats = sorted({c for r in reports for c in r.accuracy})
    lines = ["accuracy (%)".ljust(34) + "".join(r.name[:14].rjust(16) for r in reports)]
    for c in cats:
        lines.append(c.ljust(34) + "".join((f"{100 * r.accuracy[c]:.1f}" if c in r.accuracy else "-").rjust(16) for r in reports))
    for r in reports:
        if r.noise_recovery:
            nr = r.noise_recovery
            lines.append(
                f"JGLV {r.name}: " + ", ".join(f"{k}={v:.3g}" for k, v in sorted(nr.items()))
            )
    looped = [r for r in reports if r.loop_noise]
    if looped:
        lines.append("injected label noise, after round".ljust(34) + "".join(r.name[:14].rjust(16) for r in looped))
        for k in ("corrupted", "relabelled", "fixed_exactly", "false_relabels", "removed", "still_wrong", "recall", "precision"):
            cells = []
            for r in looped:
                v = r.loop_noise.get(k, 0.0)
                cells.append((f"{100 * v:.1f}%" if k in ("recall", "precision") else f"{v:.0f}").rjust(16))
            lines.append(f"  {k}".ljust(34) + "".join(cells))
    return "\n".join(lines)
