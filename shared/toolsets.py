"""Toolset import: OpenAI function JSON, BFCL function docs, ToolBench tool files, MCP servers → Tool records.

Every importer yields *candidates* (a label + a Tool, or a per-item error when the raw item cannot
even be read); :func:`validate_candidates` then checks each tool (``check_tool``: name,
description, object parameters, valid JSON Schema) and rejects duplicate names. Bad items become
per-item :class:`ErrorInfo` values naming the tool and the field; the import goes on with the valid
tools and reports counts.

Sources (:func:`import_source` picks one from the string):

- ``bfcl:<category>`` or a bare BFCL category (``simple_python``, ``multiple``...): the function
  docs of that category's entries (first definition of each name wins); ``bfcl:<doc>`` for a
  multi-turn function doc (``math_api``, ``travel_booking``...).
- a ``.json``/``.jsonl`` file or a directory of them: OpenAI tools (a list, ``{"tools": [...]}``,
  ``{"type": "function", "function": {...}}`` or a bare function), BFCL entries/docs (JSON lines),
  ToolBench tool files (``api_list`` with ``required_parameters``/``optional_parameters``).
- ``mcp+stdio:<command line>``: spawn an MCP server and call ``initialize`` then ``tools/list``
  (JSON-RPC 2.0, newline-delimited) with pagination.
- ``http://…``/``https://…`` (or ``mcp+http://…``): an MCP server over streamable HTTP (POST JSON-RPC;
  a JSON or an SSE response; ``Mcp-Session-Id`` carried).

Toolsets are stored as datasets of kind ``tools``; the version is the content hash of the tools
(:func:`toolset_version`), and :func:`store_toolset` writes under ``<uri>/<version>`` by default,
so a changed toolset never overwrites an older one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from looptool.shared.errors import InputError
from looptool.shared.records import DatasetRef, ErrorInfo, Tool, canonical_json
from looptool.shared.schema import ToolSchemaError, check_tool, normalize_schema

MCP_PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "looptool", "version": "0.1.0"}


@dataclass
class Candidate:
    label: str  # where it came from: "#3", "file.json#2", "api_list[1]"
    tool: Tool | None = None
    error: ErrorInfo | None = None


@dataclass
class ImportReport:
    tools: list[Tool] = field(default_factory=list)
    errors: list[ErrorInfo] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def summary(self) -> str:
        c = self.counts
        return (
            f"{self.source}: {c.get('seen', 0)} seen, {c.get('imported', 0)} imported, "
            f"{c.get('invalid', 0)} invalid, {c.get('duplicate', 0)} duplicate"
        )


class ToolsetError(InputError):
    """The source itself cannot be read (missing file, unreachable MCP server, unknown format)."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.field, self.problem, self.fix = "toolset", message, ""


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_candidates(candidates: Iterable[Candidate], source: str = "") -> ImportReport:
    report = ImportReport(source=source)
    seen: dict[str, str] = {}
    counts = {"seen": 0, "imported": 0, "invalid": 0, "duplicate": 0}
    for cand in candidates:
        counts["seen"] += 1
        if cand.error is not None:
            counts["invalid"] += 1
            report.errors.append(cand.error)
            continue
        tool = cand.tool
        assert tool is not None
        try:
            check_tool(tool)
        except ToolSchemaError as exc:
            counts["invalid"] += 1
            report.errors.append(ErrorInfo(code="TOOL_SCHEMA", message=str(exc), field=exc.field, item_id=exc.tool or cand.label))
            continue
        if tool.name in seen:
            counts["duplicate"] += 1
            report.errors.append(
                ErrorInfo(
                    code="DUPLICATE_TOOL",
                    message=f"tool {tool.name!r}: field 'name': duplicate of the tool at {seen[tool.name]}; the first definition is kept",
                    field="name",
                    item_id=tool.name,
                )
            )
            continue
        seen[tool.name] = cand.label
        counts["imported"] += 1
        report.tools.append(tool)
    report.counts = counts
    return report


def _bad(label: str, field_: str, problem: str, name: str = "") -> Candidate:
    who = name or label
    return Candidate(label, error=ErrorInfo(code="TOOL_SCHEMA", message=f"tool {who!r}: field {field_!r}: {problem}", field=field_, item_id=who))


def _make_tool(label: str, name: Any, description: Any, parameters: Any) -> Candidate:
    if not isinstance(name, str) or not name:
        return _bad(label, "name", "missing or not a string")
    if description is not None and not isinstance(description, str):
        return _bad(label, "description", "must be a string", name)
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        return _bad(label, "parameters", f"must be a JSON Schema object, got {type(parameters).__name__}", name)
    params = normalize_schema(parameters)
    if params.get("type") == "object":
        params.setdefault("properties", {})
    return Candidate(label, Tool(name=name, description=description or "", parameters=params))


# ---------------------------------------------------------------------------------------------
# OpenAI / BFCL / ToolBench item readers
# ---------------------------------------------------------------------------------------------


def _is_toolbench(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("api_list"), list)


def _is_bfcl_entry(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("function"), list) and "question" in obj


def openai_candidates(obj: Any, label: str = "") -> Iterator[Candidate]:
    """OpenAI tools in any of the common shapes (also BFCL docs, which share the function shape)."""
    if isinstance(obj, dict) and isinstance(obj.get("tools"), list):
        obj = obj["tools"]
    items = obj if isinstance(obj, list) else [obj]
    for i, item in enumerate(items):
        lab = f"{label}#{i}"
        if not isinstance(item, dict):
            yield _bad(lab, "tool", f"must be an object, got {type(item).__name__}")
            continue
        if _is_toolbench(item):
            yield from toolbench_candidates(item, lab)
            continue
        if _is_bfcl_entry(item):
            yield from openai_candidates(item["function"], lab)
            continue
        fn = item.get("function") if item.get("type") == "function" or "function" in item else item
        if not isinstance(fn, dict):
            yield _bad(lab, "function", "must be an object with name, description, parameters", str(item.get("name", "")))
            continue
        params = fn.get("parameters", fn.get("inputSchema", fn.get("input_schema")))
        yield _make_tool(lab, fn.get("name"), fn.get("description"), params)


_TB_TYPES = {"NUMBER": "integer", "INTEGER": "integer", "FLOAT": "number", "STRING": "string", "BOOLEAN": "boolean",
             "ARRAY": "array", "OBJECT": "object", "ENUM": "string", "DATE": "string", "TIME": "string", "GEOPOINT": "string",
             "CREDENTIALS": "string", "FILE": "string"}


def _std(name: str) -> str:
    """ToolBench's name standardisation: lowercase, non-alphanumerics → ``_``."""
    s = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_")
    s = re.sub(r"_+", "_", s)
    if s and s[0].isdigit():
        s = "get_" + s
    return s


def toolbench_candidates(obj: dict[str, Any], label: str = "") -> Iterator[Candidate]:
    """A ToolBench tool file: one Tool per ``api_list`` entry, named ``<api>_for_<tool>`` as
    ToolBench does; parameter types STRING/NUMBER/BOOLEAN/... mapped to JSON Schema."""
    tool_name = obj.get("standardized_name") or obj.get("tool_name") or obj.get("name") or ""
    tool_desc = obj.get("tool_description") or obj.get("description") or ""
    for i, api in enumerate(obj.get("api_list", [])):
        lab = f"{label}api_list[{i}]"
        if not isinstance(api, dict) or not api.get("name"):
            yield _bad(lab, "api_list.name", "each api needs a name")
            continue
        name = f"{_std(api['name'])}_for_{_std(tool_name)}"[:64] if tool_name else _std(api["name"])[:64]
        props: dict[str, Any] = {}
        required: list[str] = []
        bad: Candidate | None = None
        for group in ("required_parameters", "optional_parameters"):
            plist = api.get(group) or []
            if not isinstance(plist, list):
                bad = _bad(lab, group, "must be a list of parameters", name)
                break
            for p in plist:
                if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p.get("name"):
                    bad = _bad(lab, group, "each parameter needs a name", name)
                    break
                ptype = _TB_TYPES.get(str(p.get("type", "STRING")).upper(), "string")
                schema: dict[str, Any] = {"type": ptype, "description": str(p.get("description", "") or "")}
                if p.get("default") not in (None, ""):
                    schema["description"] = (schema["description"] + f" (default: {p['default']})").strip()
                props[p["name"]] = schema
                if group == "required_parameters":
                    required.append(p["name"])
            if bad:
                break
        if bad:
            yield bad
            continue
        desc = str(api.get("description") or "").strip() or ""
        if desc and tool_desc:
            desc = f"{desc} (part of {tool_name}: {str(tool_desc).strip()})"
        elif tool_desc:
            desc = f"This is a subfunction of the tool {tool_name}: {str(tool_desc).strip()}"
        params = {"type": "object", "properties": props, "required": required}
        yield _make_tool(lab, name, desc, params)


def _read_json_any(path: Path, max_bytes: int | None = None) -> list[Any]:
    from looptool.shared.config import LimitsSettings
    from looptool.shared.limits import read_text_bounded

    # bounded and decoded before JSON sees it: a 50 MB or non-UTF-8 file is one line, not a hang or a traceback
    cap = LimitsSettings().toolset_bytes if max_bytes is None else max_bytes
    text = read_text_bounded(path, cap, str(path), "toolset_bytes", "toolset file")
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ToolsetError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    return out


def file_candidates(path: str | Path, fmt: str = "auto", max_bytes: int | None = None) -> Iterator[Candidate]:
    p = Path(path)
    if p.is_dir():
        files = sorted(x for x in p.rglob("*") if x.suffix in (".json", ".jsonl"))
        if not files:
            raise ToolsetError(f"{p}: directory holds no .json/.jsonl tool files")
        for f in files:
            yield from file_candidates(f, fmt, max_bytes)
        return
    if not p.exists():
        raise ToolsetError(f"{p}: file not found")
    for j, obj in enumerate(_read_json_any(p, max_bytes)):
        label = f"{p.name}" + (f":{j + 1}" if j else "")
        if fmt == "toolbench" or (fmt == "auto" and (_is_toolbench(obj) or (isinstance(obj, list) and obj and all(_is_toolbench(o) for o in obj)))):
            for k, o in enumerate(obj if isinstance(obj, list) else [obj]):
                if not _is_toolbench(o):
                    yield _bad(f"{label}#{k}", "api_list", "not a ToolBench tool (no api_list)")
                else:
                    yield from toolbench_candidates(o, f"{label}#{k}:")
        else:
            yield from openai_candidates(obj, label)


def bfcl_candidates(spec: str, limit: int = 0, names: Iterable[str] = (), offset: int = 0) -> Iterator[Candidate]:
    """Function docs of a BFCL category (or a multi-turn doc file), unique by name, in order."""
    from looptool.shared import bfcl

    wanted = set(names)
    docs: list[dict[str, Any]] = []
    doc_file = bfcl.data_dir() / "multi_turn_func_doc" / f"{spec}.json"
    if doc_file.exists():
        docs = _read_json_any(doc_file)
    else:
        try:
            category = bfcl.resolve_category(spec)
        except ValueError as exc:
            mt = sorted(x.stem for x in (bfcl.data_dir() / "multi_turn_func_doc").glob("*.json"))
            raise ToolsetError(f"{exc}; multi-turn docs: {', '.join(mt)}") from None
        path = bfcl.data_dir() / f"BFCL_v4_{category}.json"
        names_seen: set[str | None] = set()
        for entry in _read_json_any(path):
            for fn in entry.get("function", []):
                if isinstance(fn, dict) and fn.get("name") not in names_seen:
                    names_seen.add(fn.get("name"))
                    docs.append(fn)
    if wanted:
        docs = [d for d in docs if d.get("name") in wanted]
    docs = docs[offset:]
    if limit:
        docs = docs[:limit]
    for i, fn in enumerate(docs):
        label = f"bfcl:{spec}#{i + offset}"
        try:
            tool = bfcl.bfcl_function_to_tool(fn)
        except (ValueError, TypeError) as exc:
            yield _bad(label, "function", str(exc), str(fn.get("name", "")) if isinstance(fn, dict) else "")
            continue
        yield Candidate(label, tool)


# ---------------------------------------------------------------------------------------------
# MCP
# ---------------------------------------------------------------------------------------------


def _init_request(rid: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "initialize",
        "params": {"protocolVersion": MCP_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
    }


def _rpc_result(resp: Any, method: str, where: str) -> dict[str, Any]:
    if not isinstance(resp, dict):
        raise ToolsetError(f"{where}: {method}: response is not a JSON-RPC object")
    if "error" in resp:
        err = resp["error"] or {}
        raise ToolsetError(f"{where}: {method} failed: {err.get('message', err)} (code {err.get('code')})")
    result = resp.get("result")
    if not isinstance(result, dict):
        raise ToolsetError(f"{where}: {method}: response has no result object")
    return result


def _mcp_tool_candidates(tools: list[Any], where: str) -> Iterator[Candidate]:
    for i, t in enumerate(tools):
        label = f"{where}#{i}"
        if not isinstance(t, dict):
            yield _bad(label, "tool", "must be an object")
            continue
        yield _make_tool(label, t.get("name"), t.get("description"), t.get("inputSchema"))


def mcp_stdio_candidates(command: str | list[str], timeout: float = 20.0, env: dict[str, str] | None = None) -> Iterator[Candidate]:
    """List the tools of an MCP server spoken to over stdio (newline-delimited JSON-RPC 2.0)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    where = f"mcp+stdio:{' '.join(argv)}"
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, **(env or {})},
        )
    except OSError as exc:
        raise ToolsetError(f"{where}: cannot start the server ({exc})") from None
    lines: "queue.Queue[str | None]" = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()

    def send(msg: dict[str, Any]) -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(msg) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ToolsetError(f"{where}: the server closed its input ({_stderr_tail(proc)})") from None

    def call(rid: int, method: str, params: dict[str, Any] | None = None, msg: dict[str, Any] | None = None) -> dict[str, Any]:
        send(msg or {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise ToolsetError(f"{where}: no answer to {method} within {timeout:.0f}s") from None
            if line is None:
                raise ToolsetError(f"{where}: the server exited before answering {method} ({_stderr_tail(proc)})")
            line = line.strip()
            if not line:
                continue
            try:
                resp = json.loads(line)
            except json.JSONDecodeError:
                continue  # servers may log to stdout; skip non-JSON lines
            if isinstance(resp, dict) and resp.get("id") == rid:
                return _rpc_result(resp, method, where)
            # notifications / requests from the server are ignored

    try:
        call(1, "initialize", msg=_init_request(1))
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools: list[Any] = []
        cursor = None
        rid = 2
        while True:
            result = call(rid, "tools/list", {"cursor": cursor} if cursor else {})
            tools.extend(result.get("tools") or [])
            cursor = result.get("nextCursor")
            rid += 1
            if not cursor or rid > 1000:
                break
    finally:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=3)
        except Exception:  # noqa: BLE001
            proc.kill()
            proc.wait()
    yield from _mcp_tool_candidates(tools, where)


def _stderr_tail(proc: subprocess.Popen) -> str:
    try:
        if proc.poll() is None:
            return "still running"
        err = proc.stderr.read() if proc.stderr else ""
        return (err.strip().splitlines() or ["no stderr"])[-1][:300]
    except Exception:  # noqa: BLE001
        return "no stderr"


def _parse_http_rpc(resp: Any, rid: int, where: str, method: str) -> dict[str, Any]:
    ctype = resp.headers.get("content-type", "")
    if "text/event-stream" in ctype:
        for block in resp.text.split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith("data:"))
            if not data:
                continue
            try:
                msg = json.loads(data)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict) and msg.get("id") == rid:
                return _rpc_result(msg, method, where)
        raise ToolsetError(f"{where}: {method}: the event stream carried no answer")
    try:
        msg = resp.json()
    except ValueError:
        raise ToolsetError(f"{where}: {method}: response is not JSON ({ctype or 'no content type'})") from None
    return _rpc_result(msg, method, where)


def mcp_http_candidates(url: str, timeout: float = 20.0, headers: dict[str, str] | None = None) -> Iterator[Candidate]:
    """List the tools of an MCP server over streamable HTTP."""
    import httpx

    url = url[len("mcp+"):] if url.startswith("mcp+") else url
    where = url
    base_headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **(headers or {})}
    tools: list[Any] = []
    try:
        with httpx.Client(timeout=timeout) as client:
            resp = client.post(url, json=_init_request(1), headers=base_headers)
            if resp.status_code >= 400:
                raise ToolsetError(f"{where}: initialize: HTTP {resp.status_code}")
            _parse_http_rpc(resp, 1, where, "initialize")
            session = resp.headers.get("mcp-session-id")
            h = dict(base_headers, **{"MCP-Protocol-Version": MCP_PROTOCOL_VERSION})
            if session:
                h["Mcp-Session-Id"] = session
            client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
            cursor, rid = None, 2
            while True:
                body = {"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": {"cursor": cursor} if cursor else {}}
                resp = client.post(url, json=body, headers=h)
                if resp.status_code >= 400:
                    raise ToolsetError(f"{where}: tools/list: HTTP {resp.status_code}")
                result = _parse_http_rpc(resp, rid, where, "tools/list")
                tools.extend(result.get("tools") or [])
                cursor = result.get("nextCursor")
                rid += 1
                if not cursor or rid > 1000:
                    break
            if session:
                try:
                    client.delete(url, headers=h)
                except httpx.HTTPError:
                    pass
    except httpx.HTTPError as exc:
        raise ToolsetError(f"{where}: cannot reach the MCP server ({exc.__class__.__name__}: {exc})") from None
    yield from _mcp_tool_candidates(tools, where)


# ---------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------

FORMATS = ("auto", "openai", "bfcl", "toolbench", "mcp-stdio", "mcp-http")


def _looks_bfcl(src: str) -> bool:
    if src.startswith("bfcl:"):
        return True
    if os.path.sep in src or src.endswith((".json", ".jsonl")):
        return False
    try:
        from looptool.shared import bfcl

        if (bfcl.data_dir() / "multi_turn_func_doc" / f"{src}.json").exists():
            return True
        bfcl.resolve_category(src)
        return True
    except (ValueError, RuntimeError, ImportError):
        return False


def import_source(
    src: str, fmt: str = "auto", limit: int = 0, names: Iterable[str] = (), offset: int = 0, timeout: float = 20.0,
    max_bytes: int | None = None,
) -> ImportReport:
    """Import tools from ``src`` (see the module doc for the accepted forms), validated. ``max_bytes``:
    the most one file may hold (default ``limits.toolset_bytes``)."""
    from looptool.shared.limits import check_float, check_int

    if fmt not in FORMATS:
        raise ToolsetError(f"unknown toolset format {fmt!r}; use one of {', '.join(FORMATS)}")
    # negative numbers would slice from the end (limit -1 = all but the last): refused, not guessed
    check_int("limit", limit, 0, fix="use 0 (all) or a positive count")
    check_int("offset", offset, 0)
    check_float("timeout", timeout, 0.0, 24 * 3600.0, low_open=True)
    names = list(names)
    if fmt == "mcp-stdio" or src.startswith("mcp+stdio:"):
        cands: Iterable[Candidate] = mcp_stdio_candidates(src.split(":", 1)[1] if src.startswith("mcp+stdio:") else src, timeout)
    elif fmt == "mcp-http" or src.startswith(("http://", "https://", "mcp+http://", "mcp+https://")):
        cands = mcp_http_candidates(src, timeout)
    elif fmt == "bfcl" or (fmt == "auto" and _looks_bfcl(src)):
        cands = bfcl_candidates(src[5:] if src.startswith("bfcl:") else src, limit=limit, names=names, offset=offset)
        limit = 0
        names = []
        offset = 0
    else:
        cands = file_candidates(src, "toolbench" if fmt == "toolbench" else "auto", max_bytes)
    cands = list(cands)
    if names:
        cands = [c for c in cands if c.tool is None or c.tool.name in set(names)]
    cands = cands[offset:]
    if limit:
        cands = cands[:limit]
    return validate_candidates(cands, source=src)


def import_tools(obj: Any, source: str = "<object>") -> ImportReport:
    """Validate tools given as Python objects (OpenAI shapes, ToolBench dicts, Tool records)."""
    cands: list[Candidate] = []
    items = obj if isinstance(obj, list) else [obj]
    for i, item in enumerate(items):
        if isinstance(item, Tool):
            cands.append(Candidate(f"#{i}", item))
        else:
            cands.extend(openai_candidates(item, f"#{i}") if not _is_toolbench(item) else toolbench_candidates(item, f"#{i}:"))
    return validate_candidates(cands, source=source)


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


def toolset_version(tools: list[Tool]) -> str:
    """Content hash of a toolset (the same sha256 the dataset manifest records), 12 hex digits."""
    from looptool.shared.storage import RecordHasher

    h = RecordHasher()
    for t in tools:
        h.update(t.model_dump(mode="json"))
    return h.hexdigest()[:12]


def store_toolset(tools: list[Tool], uri: str, versioned: bool = True, s3: Any = None, meta: dict[str, Any] | None = None) -> DatasetRef:
    """Store ``tools`` as a ``tools`` dataset at ``<uri>/<version>`` (or exactly ``uri``).
    Storing the same toolset again returns the existing dataset."""
    from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri

    if not tools:
        raise ToolsetError(f"{uri}: no valid tools to store")
    version = toolset_version(tools)
    target = f"{uri.rstrip('/')}/{version}" if versioned else uri
    store, key = split_uri(target, s3)
    if dataset_exists(store, key):
        ds = open_dataset(target, s3)
        if ds.manifest.get("meta", {}).get("version") == version or not versioned:
            return ds.ref
    w = writer_for_uri(target, s3, kind="tools", fmt="jsonl", meta={"version": version, "names": [t.name for t in tools], **(meta or {})})
    w.write_many(tools)
    return w.commit()


def list_versions(uri: str, s3: Any = None) -> list[DatasetRef]:
    """Committed toolset versions stored under ``uri`` (or ``uri`` itself when it is one)."""
    from looptool.shared.storage import dataset_exists, open_dataset, split_uri

    store, key = split_uri(uri, s3)
    if dataset_exists(store, key):
        return [open_dataset(uri, s3).ref]
    out = []
    for k in store.list(key.rstrip("/") + "/"):
        if k.endswith("/_manifest.json") and k.count("/") == key.rstrip("/").count("/") + 2:
            out.append(open_dataset(store.uri(k.rsplit("/", 1)[0]), s3).ref)
    return out


def load_toolset(ref: DatasetRef | str, s3: Any = None) -> list[Tool]:
    from looptool.shared.storage import open_dataset

    return list(open_dataset(ref, s3).iter(Tool))


def resolve_toolset(spec: Any, s3: Any = None, max_bytes: int | None = None) -> list[Tool]:
    """A manifest ``ToolsetRef`` (uri | file | bfcl {category, limit, names, offset}) → valid tools.
    A file that defines one tool name twice is refused: which definition a round trains on must not
    depend on order."""
    if getattr(spec, "uri", ""):
        refs = list_versions(spec.uri, s3)
        if not refs:
            raise ToolsetError(f"{spec.uri}: no committed toolset")
        return load_toolset(refs[-1], s3)
    if getattr(spec, "file", ""):
        report = import_source(spec.file, max_bytes=max_bytes)
        dup = next((e for e in report.errors if e.code == "DUPLICATE_TOOL"), None)
        if dup is not None:
            raise InputError("spec.toolset.file", f"{spec.file}: {dup.message.replace('; the first definition is kept', '')}",
                             "rename or remove one of them")
    else:
        b = spec.bfcl
        report = import_source(f"bfcl:{b.category}", limit=b.limit, names=b.names, offset=b.offset)
    if not report.tools:
        raise ToolsetError(f"{report.source}: no valid tools ({len(report.errors)} errors; first: "
                           f"{report.errors[0].message if report.errors else 'none'})")
    return report.tools


def tools_to_json(tools: list[Tool]) -> str:
    return canonical_json([t.model_dump() for t in tools])


__all__ = [
    "Candidate",
    "FORMATS",
    "ImportReport",
    "ToolsetError",
    "bfcl_candidates",
    "file_candidates",
    "import_source",
    "import_tools",
    "list_versions",
    "load_toolset",
    "mcp_http_candidates",
    "mcp_stdio_candidates",
    "openai_candidates",
    "resolve_toolset",
    "store_toolset",
    "toolbench_candidates",
    "toolset_version",
    "validate_candidates",
]
