"""`looptool eval`: BFCL categories through the in-process transformers backend on a tiny local model."""

from __future__ import annotations

import json

import pytest

from looptool.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    corpus = ['<tool_call>\n{"name": "math.factorial", "arguments": {"number": 5}}\n</tool_call>'] * 20
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", corpus, TinyModelSpec(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1))


def test_eval_bfcl_prints_per_category_accuracy(tiny_model, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["eval", "--model", str(tiny_model), "--bfcl", "simple_python,irrelevance", "--limit", "2",
                 "--max-tokens", "8", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "bfcl_simple_python" in text and "bfcl_irrelevance" in text
    report = json.loads(out.read_text())
    assert report["counts"] == {"bfcl_simple_python": 2, "bfcl_irrelevance": 2}
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())


def test_eval_unknown_category_is_one_line_error(tiny_model, capsys):
    code = main(["eval", "--model", str(tiny_model), "--bfcl", "no_such_category"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_category" in err[0]


def test_eval_needs_something_to_evaluate(tiny_model, capsys):
    assert main(["eval", "--model", str(tiny_model)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
