"""``looptool data``: inspect, verify and copy datasets (local or S3)."""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from looptool.commands.argtypes import count, number


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print a dataset's manifest and its first records")
    show.add_argument("uri", help="dataset URI (file:///..., s3://bucket/prefix or an absolute path)")
    show.add_argument("-n", "--head", type=count(), default=3, help="records to print (default 3)")
    show.add_argument("--no-verify", action="store_true", help="skip checking every part's hash (reads the whole dataset)")
    verify = sub.add_parser("verify", help="stream a dataset and check its content hash against the manifest")
    verify.add_argument("uri")
    copy = sub.add_parser("copy", help="copy a committed dataset to another URI (e.g. local → s3)")
    copy.add_argument("src")
    copy.add_argument("dst")
    copy.add_argument("--format", choices=["jsonl", "parquet"], default=None, help="re-encode (default: keep)")
    imp = sub.add_parser("import-jsonl", help="store a JSONL file of records as a committed dataset")
    imp.add_argument("file", help="JSONL file, one JSON object per line")
    imp.add_argument("dst", help="dataset URI to create")
    imp.add_argument("--kind", default="samples", help="record kind (samples, dialogs, tools, ...)")
    imp.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    conv = sub.add_parser("convert", help="dialogues dataset → per-assistant-turn samples + verl GRPO Parquet (train/heldout)")
    conv.add_argument("src", help="a committed dialogs dataset URI")
    conv.add_argument("dst", help="output prefix: writes <dst>/samples (JSONL), <dst>/train and <dst>/heldout (Parquet)")
    conv.add_argument("--heldout-fraction", type=number(0, 1, high_open=True, what="a fraction"), default=0.02, help="share held out, by a hash of the sample id (default 0.02)")
    conv.add_argument("--round", type=count(0, 10**6, "a round number"), default=0, help="round number recorded in the samples' lineage")
    conv.add_argument("--kinds", default="", help="only these turn kinds, comma-separated (call,parallel,clarification,no_tool,summary,text)")
    diff = sub.add_parser("diff", help="compare two sample datasets (e.g. two rounds): added/removed/relabelled")
    diff.add_argument("a", help="the earlier dataset URI")
    diff.add_argument("b", help="the later dataset URI")
    diff.add_argument("--show", type=count(), default=5, metavar="N", help="examples to print per kind (default 5)")
    diff.add_argument("--json", action="store_true", help="print the diff as JSON")


def _abort_quietly(writer) -> None:
    try:
        writer.abort()
    except Exception:  # keep the original error; leftovers are invisible without a manifest
        pass


def run(args: argparse.Namespace) -> int:
    from looptool.shared.storage import StorageError, open_dataset, writer_for_uri

    s3 = args.cfg.storage.s3
    if args.action == "show":
        from looptool.shared.storage import DatasetCorrupt

        try:
            ds = open_dataset(args.uri, s3)
        except DatasetCorrupt as exc:  # an inconsistent manifest: nothing trustworthy to show
            print(f"warning: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({k: v for k, v in ds.manifest.items() if k != "parts"} | {"parts": len(ds.manifest["parts"])}, indent=1))
        try:
            for rec in itertools.islice(ds.iter_dicts(), args.head):  # verified part by part
                print(json.dumps(rec, ensure_ascii=False)[:2000])
            if not args.no_verify:
                ds.verify()  # the parts the head did not reach, and the content hash
        except DatasetCorrupt as exc:
            print(f"warning: {exc}", file=sys.stderr)
        return 0
    if args.action == "verify":
        ds = open_dataset(args.uri, s3)
        digest = ds.verify()
        print(f"ok {len(ds)} records sha256={digest}")
        return 0
    if args.action == "copy":
        src = open_dataset(args.src, s3)
        fmt = args.format or src.manifest["format"]
        w = writer_for_uri(args.dst, s3, kind=src.manifest["kind"], fmt=fmt, meta=src.manifest.get("meta", {}))
        try:
            # iter_dicts verifies each source part before yielding it, and the source's content
            # hash after its last part: a damaged source raises here, before the commit.
            w.write_many(src.iter_dicts())
            ref = w.commit()
        except BaseException:
            _abort_quietly(w)
            raise
        if ref.content_hash != src.content_hash:  # cannot happen unless a store corrupts data
            raise StorageError(f"copy of {args.src} to {args.dst} changed the content hash; the copy is unusable")
        print(ref.model_dump_json())
        return 0
    if args.action == "import-jsonl":
        from pathlib import Path

        from looptool.shared.errors import InputError

        path = Path(args.file)
        if not path.is_file():
            raise InputError("file", f"{args.file} does not exist or is not a file", "pass a JSONL file")
        w = writer_for_uri(args.dst, s3, kind=args.kind, fmt=args.format)
        try:
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{args.file}:{lineno}", f"not JSON ({exc.msg})", "fix or remove the line") from None
                    if not isinstance(rec, dict):
                        raise InputError(f"{args.file}:{lineno}", "each line must be a JSON object")
                    w.write(rec)
            ref = w.commit()
        except UnicodeDecodeError as exc:
            _abort_quietly(w)
            raise InputError(args.file, f"not UTF-8 text (byte {exc.start})", "pass a UTF-8 JSONL file") from None
        except BaseException:
            _abort_quietly(w)  # nothing partial stays behind
            raise
        print(ref.model_dump_json())
        return 0
    if args.action == "diff":
        from looptool.shared.compose import diff_datasets, format_diff

        d = diff_datasets(args.a, args.b, examples=max(0, args.show), s3=s3)
        print(json.dumps(d.to_dict(), indent=1, ensure_ascii=False) if args.json else format_diff(d))
        return 0
    if args.action == "convert":
        from looptool.shared.conversion import convert_dataset
        from looptool.shared.errors import InputError

        from typing import get_args

        from looptool.shared.loop.manifest import SampleKind
        from looptool.shared.storage import open_dataset

        if not 0 <= args.heldout_fraction < 1:
            raise InputError("--heldout-fraction", f"{args.heldout_fraction} is outside [0, 1)")
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] or None
        unknown = sorted(set(kinds or ()) - set(get_args(SampleKind)))
        if unknown:
            raise InputError("--kinds", f"unknown turn kind(s) {', '.join(unknown)}", f"use some of {','.join(get_args(SampleKind))}")
        # checked before any writer opens: a wrong source would otherwise fail on its first record
        src_kind = open_dataset(args.src, s3).manifest.get("kind")
        if src_kind != "dialogs":
            raise InputError("src", f"{args.src} holds {src_kind!r} records, not dialogs", "pass a synthesized dialogs dataset")
        if args.dst.rstrip("/") == args.src.rstrip("/") or args.dst.rstrip("/").startswith(args.src.rstrip("/") + "/"):
            raise InputError("dst", f"{args.dst} is inside the source dataset {args.src}", "write to another prefix")
        res = convert_dataset(args.src, args.dst, heldout_fraction=args.heldout_fraction, round=args.round, s3=s3, include_kinds=kinds)
        print(json.dumps({"counts": res.counts, "outputs": [o.model_dump() for o in res.outputs()]}))
        return 0
    print(f"unknown action {args.action}", file=sys.stderr)
    return 2
