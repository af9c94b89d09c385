"""The ``looptool`` console script. Each sub-command lives in ``looptool.commands.<name>``
with ``configure(parser)`` (arguments only, cheap to import) and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import NoReturn

from looptool import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("looptool.commands.serve", "run one gRPC service (inference, toolsim, synthesizer, expander, trainer)"),
    "operator": ("looptool.commands.operator", "run the Kubernetes operator that reconciles LoopRound resources"),
    "run": ("looptool.commands.run", "run LoopRound manifest(s) on this machine: services, storage and training locally"),
    "ablate": ("looptool.commands.ablate", "run a round chain as the paper's ablation variants and print the comparison table"),
    "eval": ("looptool.commands.eval", "evaluate a model on BFCL AST categories and held-out synthesized data"),
    "tools": ("looptool.commands.tools", "import, validate and list toolsets"),
    "data": ("looptool.commands.data", "inspect, verify, convert and diff datasets"),
    "model": ("looptool.commands.model", "import model directories into storage (local or S3) and list stored models"),
}


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line naming the argument (no usage block): the same shape as every
    other bad-input error. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="looptool",
        description="LoopTool: synthesize tool-use data, train with GRPO, probe, judge labels, expand failures, repeat.",
    )
    parser.add_argument("--version", action="version", version=f"looptool {__version__}")
    parser.add_argument("-c", "--config", help="YAML config file (default: built-in defaults + LOOPTOOL_* env)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="structured JSON logs (one object per line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is None:  # a command not built in this checkout
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already printed): a code, in-process too
        return exc.code if isinstance(exc.code, int) else 2
    if not args.command:
        parser.print_help()
        return 2
    from looptool.shared.config import ConfigError, load_config
    from looptool.shared.errors import UserError
    from looptool.shared.logs import setup_logging

    try:
        args.cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or args.cfg.log.level, args.log_json or args.cfg.log.json_format)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:  # known bad input: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
