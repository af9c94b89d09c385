"""``looptool model``: import a model directory into storage (local or S3) and list stored models."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser(
        "import",
        help="store a model directory (config.json + weights) where the trainer and the inference server read it",
        description="Upload DIR to URI as a committed model: files first, then _artifact.json with each file's "
        "sha256 and a content hash. Re-importing the same content is a no-op; different content at the same "
        "URI is refused unless --force.",
    )
    imp.add_argument("dir", help="local model directory (config.json + *.safetensors / *.bin, or a *.gguf file)")
    imp.add_argument("uri", help="where to store it: s3://bucket/prefix, file:///path or a local path")
    imp.add_argument("--force", action="store_true", help="replace a different model already stored at URI")
    imp.add_argument("--json", action="store_true", help="print the result as JSON")
    ls = sub.add_parser("list", help="list the models stored at or below a URI (name, size, files, hash, created)")
    ls.add_argument("uri", help="s3://bucket/prefix, file:///path or a local path")
    ls.add_argument("--json", action="store_true", help="print the models as JSON")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    from looptool.shared.models import import_model, list_models

    s3 = args.cfg.storage.s3
    if args.action == "import":
        res = import_model(args.dir, args.uri, s3, force=args.force)
        m = res.model
        if args.json:
            print(json.dumps({"action": res.action, **asdict(m)}))
        else:
            print(f"{res.action} {m.uri}  {m.files} files, {_size(m.size)}, sha256 {m.content_hash}")
        return 0
    models = list_models(args.uri, s3)
    if args.json:
        print(json.dumps([asdict(m) for m in models], indent=1))
        return 0
    width = max(4, *(len(m.name) for m in models))
    print(f"{'NAME':<{width}}  {'SIZE':>10}  {'FILES':>5}  {'HASH':<12}  CREATED")
    for m in models:
        print(f"{m.name:<{width}}  {_size(m.size):>10}  {m.files:>5}  {m.content_hash[:12]:<12}  {m.created_at}")
    return 0
