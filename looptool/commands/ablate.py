"""``looptool ablate FILE.yaml``: run a manifest's round chain as the paper's ablation variants (full
loop, without JGLV, without EDDE, without high-perplexity samples, a same-compute baseline without
the loop) on this machine, and print the table (``shared/loop/ablation.py`` says how each variant is
built). Variants share the stages they have in common and resume after a kill, like ``looptool run``."""

from __future__ import annotations

import argparse
import sys
import time


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="LoopRound YAML: a chain of at least 2 rounds (---, or a kind: List), in order")
    p.add_argument(
        "--variants", default="",
        help="comma-separated subset of full,no-jglv,no-edde,no-hpr,baseline (default: all; baseline needs full)",
    )
    p.add_argument("--storage-root", default=None, help="local storage directory (default: storage.root)")
    p.add_argument("--report-dir", default=None, help="where the table and reports go (default: <storage-root>/report/ablation)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--wait", action="store_true",
        help="when another runner holds a round (its lease), wait for it instead of exiting with code 3",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from looptool.commands.run import _UI, checked_and_leased
    from looptool.runner import LocalServices, StatusStore, drive_chain
    from looptool.services.inference.client import InferenceClient
    from looptool.services.toolsim import bfcl_env
    from looptool.shared.limits import check_round_numbers
    from looptool.shared.loop.ablation import (
        BY_KEY,
        AblationError,
        baseline_round,
        row_of,
        select_variants,
        variant_name,
        variant_rounds,
        write_table,
    )
    from looptool.shared.loop.chain import round_base_uri
    from looptool.shared.loop.manifest import LoopRound, ManifestError, load_manifests
    from looptool.shared.loop.report import write_report
    from looptool.shared.loop.stages import StageContext
    from looptool.shared.loop.state import Phase, RoundStatus

    cfg = args.cfg
    if args.storage_root:
        cfg.storage.root = args.storage_root
        cfg.storage.backend = "local"
    try:
        rounds = load_manifests(args.manifest, cfg.limits.manifest_bytes)
        for i, r in enumerate(rounds):
            check_round_numbers(r, cfg.limits, f"{args.manifest}[{i}]")
        variants = select_variants([k.strip() for k in args.variants.split(",") if k.strip()])
        chains = variant_rounds(rounds, args.manifest, variants)
    except (ManifestError, AblationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    original = {variant_name(r.name, v): r for v in variants for r in rounds}
    every = [r for chain in chains.values() for r in chain]
    base_uri = round_base_uri(rounds[0], cfg)
    statuses = StatusStore(base_uri, cfg.storage.s3)
    code, leases = checked_and_leased(every, cfg, statuses, args.manifest, wait=args.wait)
    if leases is None:
        return code

    root = Path(cfg.storage.root).resolve()
    started = time.monotonic()
    results: dict[str, list[tuple[LoopRound, RoundStatus]]] = {}
    failed = ""

    def context_for(variant: str):
        def context(r: LoopRound, previous: RoundStatus | None) -> StageContext:
            if variant == "baseline" and previous is not None:
                # no loop: the previous round's checkpoint, not its composed data (fresh samples only)
                previous = previous.model_copy(update={"datasetUri": ""})
            return StageContext(
                round=r, config=cfg, addresses=services.addresses, base_uri=base_uri, generator=InferenceClient,
                previous=previous, tool_executor=bfcl_env.connect,
                outputs_round=original[r.name].name,  # variants share content-keyed outputs
            )
        return context

    with leases, LocalServices(cfg, root / "logs") as services:
        print(f"services up: {', '.join(f'{k}@{v}' for k, v in services.addresses.items())}", flush=True)
        for v in variants:
            chain = chains[v.key]
            if v.key == "baseline":  # sized from the full loop's rounds, which ran first
                try:
                    chain = [chain[0]] + [
                        baseline_round(r, original[r.name], statuses.load(variant_name(original[r.name].name, BY_KEY["full"]))[0] or RoundStatus())
                        for r in chain[1:]
                    ]
                except AblationError as exc:
                    failed = str(exc)
                    break
            t0 = time.monotonic()
            print(f"== variant {v.key}: {', '.join(r.name for r in chain)}", flush=True)
            done = drive_chain(chain, context_for(v.key), statuses, lambda r: _UI(r.name, args.quiet))
            results[v.key] = done.results
            print(f"== variant {v.key}: {'done' if done.succeeded else 'FAILED'} in {time.monotonic() - t0:.0f}s", flush=True)
            if not done.succeeded:
                r, st = done.results[-1]
                failed = f"{r.name} failed: {st.reason}: {st.message}"
                break

    rows = []
    for v in variants:
        by_name = dict((r.name, st) for r, st in results.get(v.key, []))
        for r in chains[v.key]:
            rows.append(row_of(v, r, by_name.get(r.name)))
    report_dir = Path(args.report_dir) if args.report_dir else root / "report" / "ablation"
    table, files = write_table(rows, report_dir)
    write_report([x for v in variants for x in results.get(v.key, [])], report_dir / "rounds")
    print()
    print(table)
    print()
    if not any(f.suffix == ".png" for f in files):
        print("(matplotlib is not installed: no plot; the table is in ablation.md and ablation.csv)")
    print(f"ablation: {', '.join(str(f) for f in files)}  (total {time.monotonic() - started:.0f}s)")
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0 if all(st.phase == Phase.SUCCEEDED for v in variants for _, st in results.get(v.key, [])) else 1
