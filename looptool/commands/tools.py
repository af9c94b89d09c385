"""``looptool tools``: import, validate and list toolsets.

``import SRC`` reads OpenAI function JSON, BFCL function docs (``bfcl:<category>`` or a BFCL file),
ToolBench tool files, or an MCP server (``mcp+stdio:<command>``, ``http://…``), validates every tool
(per-item errors name the tool and the field; valid tools are kept) and stores the toolset as a
versioned ``tools`` dataset (``<out>/<content hash>``).
"""

from __future__ import annotations

import argparse
import json
import sys

from looptool.commands.argtypes import count, number


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="bfcl:<category|doc>, a .json/.jsonl file or directory, mcp+stdio:<command>, or an MCP http(s):// URL")
    p.add_argument("--format", default="auto", choices=["auto", "openai", "bfcl", "toolbench", "mcp-stdio", "mcp-http"])
    p.add_argument("--limit", type=count(), default=0, help="keep at most N tools (0 = all)")
    p.add_argument("--offset", type=count(), default=0, help="skip the first N tools")
    p.add_argument("--names", default="", help="comma-separated tool names to keep")
    p.add_argument("--timeout", type=number(0, 86400, low_open=True, what="seconds"), default=20.0, help="seconds to wait for an MCP server")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="import a toolset, validate it and store it as a versioned dataset")
    _source_args(imp)
    imp.add_argument("--out", default="", help="toolset URI (default: <storage>/toolsets/<name>); the version is appended")
    imp.add_argument("--exact", action="store_true", help="store at --out itself instead of <out>/<version>")
    imp.add_argument("--strict", action="store_true", help="exit 1 (and store nothing) when any tool is invalid")
    val = sub.add_parser("validate", help="import and validate without storing; exit 1 on any invalid tool")
    _source_args(val)
    ls = sub.add_parser("list", help="list the tools of a stored toolset (or the versions under a URI)")
    ls.add_argument("uri")
    ls.add_argument("--json", action="store_true")


def _report(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"source": report.source, "counts": report.counts, "errors": [e.model_dump() for e in report.errors],
                          "tools": [t.name for t in report.tools]}, indent=1))
        return
    for e in report.errors:
        print(f"  invalid: {e.message}", file=sys.stderr)
    print(report.summary())


def _slug(source: str) -> str:
    import re

    base = source.split("/")[-1] if "://" not in source else source.split("://", 1)[1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base.replace("bfcl:", "bfcl-")).strip("-.")[:60] or "toolset"


def run(args: argparse.Namespace) -> int:
    from looptool.shared.toolsets import import_source, list_versions, load_toolset, store_toolset

    s3 = args.cfg.storage.s3
    if args.action == "list":
        refs = list_versions(args.uri, s3)
        if not refs:
            print(f"error: no committed toolset at {args.uri}", file=sys.stderr)
            return 2
        for ref in refs:
            tools = load_toolset(ref, s3)
            if args.json:
                print(json.dumps({"uri": ref.uri, "version": ref.content_hash[:12], "tools": [t.model_dump() for t in tools]}))
                continue
            print(f"{ref.uri}  version={ref.content_hash[:12]}  tools={len(tools)}")
            for t in tools:
                req = t.parameters.get("required", [])
                params = ", ".join(k + ("*" if k in req else "") for k in t.parameters.get("properties", {}))
                print(f"  {t.name}({params}): {t.description[:90]}")
        return 0
    names = [n for n in args.names.split(",") if n]
    report = import_source(args.source, fmt=args.format, limit=args.limit, names=names, offset=args.offset, timeout=args.timeout,
                           max_bytes=args.cfg.limits.toolset_bytes)
    dups = [e for e in report.errors if e.code == "DUPLICATE_TOOL"]
    if args.action == "import" and dups:
        # which definition a stored toolset holds must not depend on order: refuse, name each one
        for e in dups:
            print(f"error: {args.source}: {e.message.replace('; the first definition is kept', '')}; rename or remove one (nothing stored)",
                  file=sys.stderr)
        return 1
    _report(report, args.json)
    if args.action == "validate":
        return 1 if report.errors else 0
    if args.strict and report.errors:
        print("error: invalid tools and --strict: nothing stored", file=sys.stderr)
        return 1
    if not report.tools:
        print("error: no valid tools to store", file=sys.stderr)
        return 1
    out = args.out or f"{args.cfg.storage.base_uri()}/toolsets/{_slug(args.source)}"
    ref = store_toolset(report.tools, out, versioned=not args.exact, s3=s3, meta={"source": args.source, "counts": report.counts})
    print(ref.model_dump_json())
    return 0
