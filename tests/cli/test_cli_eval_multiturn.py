"""`looptool eval` on BFCL multi-turn categories: an embedded tool simulator by default, one line
for a dead --toolsim."""

from __future__ import annotations

import json

import pytest

from looptool.cli import main
from support.net import free_port


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    corpus = ['<tool_call>\n{"name": "ls", "arguments": {"a": true}}\n</tool_call>'] * 20
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", corpus, TinyModelSpec(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1))


def test_eval_multi_turn_with_an_embedded_tool_simulator(tiny_model, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["eval", "--model", str(tiny_model), "--bfcl", "multi_turn_base,simple_python", "--limit", "1",
                 "--max-tokens", "8", "--json", str(out)])
    assert code == 0
    assert "bfcl_multi_turn_base" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["counts"] == {"bfcl_multi_turn_base": 1, "bfcl_simple_python": 1}


def test_eval_dead_toolsim_is_one_line_error(tiny_model, capsys):
    port = free_port()
    assert main(["eval", "--model", str(tiny_model), "--bfcl", "multi_turn_base", "--toolsim", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--toolsim" in err[0]


def test_eval_unknown_multi_turn_category_is_one_line_error(tiny_model, capsys):
    assert main(["eval", "--model", str(tiny_model), "--bfcl", "multi_turn_nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multi_turn_nope" in err[0]
