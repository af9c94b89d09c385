"""Toolset import: OpenAI JSON, BFCL docs, ToolBench files, MCP (stdio + HTTP); validation; versioned storage; CLI."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from looptool.shared.records import Tool
from looptool.shared.toolsets import (
    ToolsetError,
    import_source,
    import_tools,
    list_versions,
    load_toolset,
    store_toolset,
    toolset_version,
)

GOOD = {"name": "get_weather", "description": "Get the weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SEARCH = {"name": "search_web", "description": "Search the web.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def test_openai_shapes(tmp_path):
    shapes = [
        [GOOD, SEARCH],
        {"tools": [{"type": "function", "function": GOOD}, {"type": "function", "function": SEARCH}]},
        [{"type": "function", "function": GOOD}, SEARCH],
    ]
    for i, obj in enumerate(shapes):
        p = tmp_path / f"t{i}.json"
        p.write_text(json.dumps(obj))
        rep = import_source(str(p))
        assert [t.name for t in rep.tools] == ["get_weather", "search_web"], obj
        assert rep.counts == {"seen": 2, "imported": 2, "invalid": 0, "duplicate": 0}
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"type": "function", "function": GOOD}))
    assert [t.name for t in import_source(str(single)).tools] == ["get_weather"]


def test_bad_items_are_reported_per_item_and_import_continues(tmp_path):
    bad = [
        GOOD,
        dict(GOOD),  # duplicate name
        {"name": "no_desc", "parameters": {"type": "object", "properties": {}}},
        {"name": "list_params", "description": "x", "parameters": ["a", "b"]},
        {"name": "string_params", "description": "x", "parameters": {"type": "string"}},
        {"name": "bad_required", "description": "x", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}},
        {"name": "bad_type", "description": "x", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}},
        {"description": "nameless"},
        "not an object",
        SEARCH,
    ]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    rep = import_source(str(p))
    assert [t.name for t in rep.tools] == ["get_weather", "search_web"]
    assert rep.counts == {"seen": 10, "imported": 2, "invalid": 7, "duplicate": 1}
    by_item = {(e.item_id, e.field) for e in rep.errors}
    assert ("get_weather", "name") in by_item  # duplicate
    assert ("no_desc", "description") in by_item
    assert ("list_params", "parameters") in by_item
    assert ("string_params", "parameters.type") in by_item
    assert ("bad_required", "parameters.required") in by_item
    assert any(e.item_id == "bad_type" and e.field.startswith("parameters") for e in rep.errors)
    for e in rep.errors:
        assert "field" in e.message and "tool" in e.message
    assert "10 seen, 2 imported, 7 invalid, 1 duplicate" in rep.summary()


def test_bfcl_category_and_files(tmp_path):
    rep = import_source("bfcl:simple_python", limit=10)
    assert rep.counts["imported"] == 10 and not rep.errors
    names = [t.name for t in rep.tools]
    assert names[:2] == ["calculate_triangle_area", "math.factorial"]
    assert all(t.parameters["type"] == "object" for t in rep.tools)  # BFCL "dict" normalised
    assert import_source("simple_python", offset=2, limit=3).tools[0].name == names[2]
    assert [t.name for t in import_source("bfcl:simple_python", names=["math.factorial"]).tools] == ["math.factorial"]
    mt = import_source("bfcl:math_api")
    assert "add" in {t.name for t in mt.tools} and mt.counts["invalid"] == 0
    # a BFCL JSONL file (entries with "question" + "function")
    from looptool.shared.bfcl import data_dir

    lines = (data_dir() / "BFCL_v4_parallel_multiple.json").read_text().splitlines()[:3]
    f = tmp_path / "bfcl.jsonl"
    f.write_text("\n".join(lines))
    rep = import_source(str(f))
    assert rep.counts["imported"] >= 3 and not rep.errors
    with pytest.raises(ToolsetError, match="unknown or unshipped BFCL category"):
        import_source("bfcl:nope")


def test_toolbench_file(tmp_path):
    tb = {
        "tool_name": "Weather API",
        "tool_description": "Weather forecasts worldwide.",
        "api_list": [
            {"name": "Current Weather", "description": "Current conditions for a city.", "method": "GET",
             "required_parameters": [{"name": "city", "type": "STRING", "description": "City name", "default": "Paris"}],
             "optional_parameters": [{"name": "days", "type": "NUMBER", "description": "Forecast days"},
                                     {"name": "metric", "type": "BOOLEAN", "description": ""}]},
            {"name": "Alerts", "description": "", "required_parameters": [], "optional_parameters": []},
            {"description": "no name"},
        ],
    }
    p = tmp_path / "weather.json"
    p.write_text(json.dumps(tb))
    rep = import_source(str(p))
    t = rep.tools[0]
    assert t.name == "current_weather_for_weather_api"
    assert t.parameters["required"] == ["city"]
    assert t.parameters["properties"]["days"]["type"] == "integer"
    assert t.parameters["properties"]["metric"]["type"] == "boolean"
    assert [x.name for x in rep.tools] == ["current_weather_for_weather_api", "alerts_for_weather_api"]
    assert rep.counts["invalid"] == 1 and rep.errors[0].field == "api_list.name"


MCP_STDIO = textwrap.dedent(
    '''
    import json, sys
    TOOLS = [
        {"name": "read_file", "description": "Read a file.", "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
        {"name": "list_dir", "description": "List a directory.", "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}},
        {"name": "broken", "inputSchema": {"type": "object"}},
    ]
    initialized = False
    print("server starting (a log line on stdout)", flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue  # notification
        if msg["method"] == "initialize":
            initialized = True
            res = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "t", "version": "1"}}
        elif msg["method"] == "tools/list":
            assert initialized
            if msg["params"].get("cursor") == "p2":
                res = {"tools": TOOLS[2:]}
            else:
                res = {"tools": TOOLS[:2], "nextCursor": "p2"}
        else:
            print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}}), flush=True)
            continue
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": res}), flush=True)
    '''
)


def test_mcp_stdio(tmp_path):
    script = tmp_path / "mcp_server.py"
    script.write_text(MCP_STDIO)
    rep = import_source(f"mcp+stdio:{sys.executable} {script}", timeout=20)
    assert [t.name for t in rep.tools] == ["read_file", "list_dir"]
    assert rep.counts == {"seen": 3, "imported": 2, "invalid": 1, "duplicate": 0}
    assert rep.errors[0].item_id == "broken" and rep.errors[0].field == "description"
    with pytest.raises(ToolsetError, match="exited before answering|cannot start"):
        import_source(f"mcp+stdio:{sys.executable} -c pass", timeout=10)


class _McpHttp(BaseHTTPRequestHandler):
    sessions: set[str] = set()

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "id" not in msg:
            self.send_response(202)
            self.end_headers()
            return
        if msg["method"] == "initialize":
            body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "2025-06-18", "capabilities": {}}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Mcp-Session-Id", "sess-1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            return
        if self.headers.get("Mcp-Session-Id") != "sess-1":
            self.send_response(400)
            self.end_headers()
            return
        tools = [{"name": "create_issue", "description": "Create an issue.",
                  "inputSchema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}},
                 {"name": "create_issue", "description": "dup", "inputSchema": {"type": "object"}}]
        body = "event: message\ndata: " + json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": tools}}) + "\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_DELETE(self):
        self.send_response(204)
        self.end_headers()


def test_mcp_http_streamable():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _McpHttp)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        rep = import_source(f"http://127.0.0.1:{server.server_port}/mcp")
        assert [x.name for x in rep.tools] == ["create_issue"]
        assert rep.counts["duplicate"] == 1
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ToolsetError, match="cannot reach"):
        import_source(f"http://127.0.0.1:{server.server_port}/mcp", timeout=2)


def test_versioned_storage(tmp_path):
    base = (tmp_path / "store" / "toolsets" / "demo").as_uri()
    tools = import_tools([GOOD, SEARCH]).tools
    ref1 = store_toolset(tools, base)
    assert ref1.kind == "tools" and ref1.uri.endswith(toolset_version(tools))
    assert ref1.content_hash.startswith(toolset_version(tools))
    assert store_toolset(tools, base).uri == ref1.uri  # same content → same version, no rewrite
    ref2 = store_toolset(tools[:1], base)
    assert ref2.uri != ref1.uri
    assert sorted(r.uri for r in list_versions(base)) == sorted([ref1.uri, ref2.uri])
    assert load_toolset(ref1) == tools
    assert isinstance(load_toolset(ref1.uri)[0], Tool)


def test_cli_import_list_validate(tmp_path, capsys):
    from looptool.cli import main

    out = (tmp_path / "ts").as_uri()
    assert main(["tools", "import", "bfcl:simple_python", "--limit", "10", "--out", out]) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ref["record_count"] == 10 and ref["kind"] == "tools"
    assert main(["tools", "list", out]) == 0
    listing = capsys.readouterr().out
    assert "calculate_triangle_area(base*, height*, unit)" in listing
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([GOOD, {"name": "x"}]))
    assert main(["tools", "validate", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "tool 'x': field 'description'" in captured.err and "1 invalid" in captured.out
    assert main(["tools", "import", str(bad), "--out", out, "--strict"]) == 1
    assert main(["tools", "import", str(bad), "--out", (tmp_path / "ts2").as_uri(), "--json"]) == 0
    assert main(["tools", "import", str(tmp_path / "missing.json")]) == 2
