"""The training Job entry point: ``python -m looptool.services.trainer.job --request FILE.json``.

What a Kubernetes Job (or a person) runs. The request file is the TrainRequest as JSON::

    {"run_id": "r1", "round": 1,
     "dataset": {"uri": "s3://looptool/rounds/r1/grpo", "content_hash": "…"},   # or a URI string
     "base_checkpoint_uri": "s3://looptool/models/qwen3-8b",                    # or builtin:tiny
     "output_prefix": "s3://looptool/rounds/r1/train",
     "config": {...TrainingSpec...}}                                             # or "config_json": "…"

It trains with the configured backend, writes ``<output_prefix>/result.json`` and prints one
progress line per step on stdout. A restarted Job resumes from the last checkpoint; a Job whose
result already exists is a no-op. SIGTERM (pod deletion) stops at the next step boundary after a
checkpoint.

Exit codes (for ``podFailurePolicy``): 0 done (or already done); 2 bad input — don't retry;
3 cancelled (SIGTERM/SIGINT); 1 training failed — a retry resumes from the last checkpoint.
On failure the last stderr line is the one-line reason, also written to ``--termination-log``
(default ``/dev/termination-log`` when it exists, which Kubernetes shows as the pod's message).
"""

from __future__ import annotations

import os

# Library settings for this process (not LoopTool settings, which the config module reads), set
# before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine shared with
# other busy processes, spinning threads wait on a descheduled peer at every parallel region (we
# measured 2 threads 4–15× slower than 1); passive waiting removes that cliff.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MKL may otherwise use fewer threads than asked when the machine is busy, which changes the
# summation order: the same training would not give bit-identical weights run to run.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m looptool.services.trainer.job", description=__doc__.split("\n\n")[0])
    p.add_argument("--request", required=True, help="TrainRequest JSON file")
    p.add_argument("-c", "--config", default=None, help="LoopTool YAML config (storage / S3 settings); default: env")
    p.add_argument(
        "--workdir",
        default=None,
        help="directory kept across retries: model and checkpoint caches (default: trainer.workdir of the config, "
        "LOOPTOOL_TRAINER__WORKDIR, .looptool/trainer); in Kubernetes the round's PersistentVolumeClaim",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0 = off)")
    p.add_argument("--termination-log", default=None, help="write the one-line failure reason here")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true")
    return p


def _fail(code: int, reason: str, termination_log: str | None) -> int:
    reason = " ".join(reason.split())
    path = termination_log or ("/dev/termination-log" if os.path.exists("/dev/termination-log") else None)
    if path:
        try:
            Path(path).write_text(reason[:4000])
        except OSError:
            pass
    print(f"error: {reason}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from looptool.shared.config import ConfigError, load_config
    from looptool.shared.logs import get_logger, setup_logging

    setup_logging(args.log_level, args.log_json)
    log = get_logger("looptool.trainer.job")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(EXIT_INVALID, str(exc), args.termination_log)
    try:
        raw = json.loads(Path(args.request).read_text())
    except FileNotFoundError:
        return _fail(EXIT_INVALID, f"--request {args.request}: file not found", args.termination_log)
    except json.JSONDecodeError as exc:
        return _fail(EXIT_INVALID, f"--request {args.request}: not valid JSON ({exc.msg} at line {exc.lineno})", args.termination_log)

    from looptool.services.trainer.runner import classify, execute, parse_job
    from looptool.shared.errors import UserError

    cancel = threading.Event()

    def on_signal(signum, _frame):
        log.warning("signal %s: stopping at the next step boundary (checkpoint kept)", signum)
        cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.metrics_port:
        from looptool.shared.metrics import serve_metrics

        serve_metrics(args.metrics_port, addr=cfg.security.metrics_host)

    def emit(p) -> None:
        total = f"/{p.total}" if p.total else ""
        print(f"[{p.done}{total}] {p.message}", flush=True)

    try:
        job = parse_job(raw)
        result = execute(
            job, s3=cfg.storage.s3, workdir=args.workdir or cfg.trainer.workdir, emit=emit, cancel=cancel, settings=cfg.trainer
        )
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit code + one line
        state, reason = classify(exc)
        if state == "failed" and not isinstance(exc, UserError):
            log.error("training failed", exc_info=exc if not isinstance(exc, KeyboardInterrupt) else None)
        code = {"invalid": EXIT_INVALID, "cancelled": EXIT_CANCELLED}.get(state, EXIT_FAILED)
        return _fail(code, reason, args.termination_log)
    summary = {"checkpoint_uri": result.checkpoint_uri, "cached": bool(result.metrics.get("cached"))}
    for k in ("reward_first5", "reward_last5", "resumed_from_step", "seconds"):
        if k in result.metrics:
            summary[k] = round(result.metrics[k], 4)
    print("result: " + json.dumps(summary), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
