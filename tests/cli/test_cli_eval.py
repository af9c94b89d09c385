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


# ----------------------------------------------------------------------------- scorecard, resume, bad input


def test_eval_writes_the_scorecard_with_leaderboard_columns_and_na_groups(tiny_model, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["eval", "--model", str(tiny_model), "--bfcl", "simple_python,irrelevance", "--limit", "3",
                 "--max-tokens", "8", "--out", str(out), "--exclude-functions", "calculate_triangle_area"])
    assert code == 0
    card = json.loads((out / "scorecard.json").read_text())
    assert str(tiny_model) in card["header"] and "overlap: none" in card["header"]
    assert card["categories"]["simple_python"]["total"] == 3
    assert set(card["categories"]["simple_python"]) >= {"correct", "total", "undecodable", "accuracy"}
    overall = card["tables"]["overall"]
    assert overall["Model"] == str(tiny_model)
    # groups not run are N/A, never 0; their tables are left out
    assert overall["Live Acc"] == "N/A" and overall["Multi Turn Acc"] == "N/A" and overall["Memory Acc"] == "N/A"
    assert set(card["tables"]) == {"overall", "non_live"}
    assert card["groups_run"] == ["non_live", "irrelevance_total"]
    sp, irr = card["categories"]["simple_python"]["accuracy"], card["categories"]["irrelevance"]["accuracy"]
    assert overall["Overall Acc"] == pytest.approx((sp + irr) / 2, abs=1e-6)  # weights 10/10 of the groups run
    assert card["tables"]["non_live"]["Python Simple AST"] == pytest.approx(sp, abs=1e-6)
    md = (out / "scorecard.md").read_text()
    assert md.splitlines()[0] == f"# {card['header']}"
    assert "Non-Live AST Acc" in md and "Irrelevance Detection" in md and "| N/A" in md
    assert "scorecard:" in capsys.readouterr().out


def test_eval_scorecard_says_when_overlap_is_unknown(tiny_model, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model), "--bfcl", "irrelevance", "--limit", "1", "--max-tokens", "4", "--out", str(out)]) == 0
    assert "overlap: unknown" in json.loads((out / "scorecard.json").read_text())["header"]


def test_eval_rerun_resumes_from_finished_categories(tiny_model, tmp_path, capsys):
    out = tmp_path / "ev"
    base = ["eval", "--model", str(tiny_model), "--limit", "2", "--max-tokens", "8", "--out", str(out)]
    assert main(base + ["--bfcl", "simple_python"]) == 0
    done = out / "categories" / "bfcl_simple_python.json"
    first = done.read_text()
    capsys.readouterr()
    assert main(base + ["--bfcl", "simple_python,irrelevance"]) == 0
    text = capsys.readouterr().out
    assert "bfcl_simple_python: kept from an earlier run" in text and "bfcl_irrelevance: kept" not in text
    assert done.read_text() == first
    assert set(json.loads((out / "scorecard.json").read_text())["categories"]) == {"simple_python", "irrelevance"}
    # other settings: scored again, not reused
    assert main(base[:-4] + ["--max-tokens", "6", "--out", str(out), "--bfcl", "simple_python"]) == 0
    assert "kept from an earlier run" not in capsys.readouterr().out


def test_eval_negative_limit_is_one_line_error(tiny_model, capsys):
    assert main(["eval", "--model", str(tiny_model), "--bfcl", "simple_python", "--limit", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--limit" in err[0]


def test_eval_endpoint_down_is_one_line_error(tmp_path, capsys):
    from support.net import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"inference:\n  backend: openai\n  base_url: {url}\n  model: m\n")
    assert main(["-c", str(cfg), "eval", "--model", "m", "--bfcl", "simple_python"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "inference.base_url" in err[0]


class ScriptedGenerator:
    """A model that answers every prompt with ``answer`` while ``up``, then stops answering the
    way a backend reports a dead endpoint (UNAVAILABLE per request)."""

    def __init__(self, answer: str, up_batches: int = 10**6):
        self.answer, self.up_batches, self.calls = answer, up_batches, 0

    def generate(self, requests):
        from looptool.shared.generation import Completion, GenResult

        self.calls += 1
        if self.calls > self.up_batches:
            return [GenResult(error="UNAVAILABLE: http://x/v1 failed after 3 attempts: connection refused") for _ in requests]
        return [GenResult(completions=[Completion(text=self.answer)]) for _ in requests]


def test_undecodable_answers_count_as_wrong_and_are_reported():
    from looptool.shared.evaluation import evaluate

    broken = '<tool_call>\n{"name": "calculate_triangle_area", "arguments": 5}\n</tool_call>'
    report = evaluate(ScriptedGenerator(broken), bfcl_categories=["simple_python", "irrelevance"], bfcl_limit=5)
    assert report.bfcl["simple_python"].undecodable == 5 and report.accuracy["bfcl_simple_python"] == 0.0
    assert report.undecodable["bfcl_simple_python"] == 5
    # BFCL scores "no decodable call" as right on irrelevance; still counted as undecodable
    assert report.undecodable["bfcl_irrelevance"] == 5 and report.accuracy["bfcl_irrelevance"] == 1.0
    skipped = '<tool_call>\n{"name": oops}\n</tool_call>'  # a block BFCL skips silently
    assert evaluate(ScriptedGenerator(skipped), bfcl_categories=["simple_python"], bfcl_limit=2).undecodable["bfcl_simple_python"] == 2


def test_endpoint_down_mid_run_keeps_finished_categories_and_a_rerun_resumes(tmp_path):
    from looptool.shared.evaluation import EndpointDown, ResultStore, evaluate

    store = ResultStore(tmp_path / "categories", {"model": "m"})
    cats = ["simple_python", "irrelevance"]
    with pytest.raises(EndpointDown, match="stopped answering during BFCL irrelevance"):
        evaluate(ScriptedGenerator("no call", up_batches=1), bfcl_categories=cats, bfcl_limit=4, store=store)
    assert [p.name for p in (tmp_path / "categories").iterdir()] == ["bfcl_simple_python.json"]
    gen = ScriptedGenerator("no call")
    report = evaluate(gen, bfcl_categories=cats, bfcl_limit=4, store=store)
    assert gen.calls == 1  # only irrelevance was asked for again
    assert report.counts == {"bfcl_simple_python": 4, "bfcl_irrelevance": 4}
    # another fingerprint does not reuse them
    gen2 = ScriptedGenerator("no call")
    evaluate(gen2, bfcl_categories=cats, bfcl_limit=4, store=ResultStore(tmp_path / "categories", {"model": "other"}))
    assert gen2.calls == 2


def test_unknown_category_fails_before_any_request():
    from looptool.shared.evaluation import evaluate

    gen = ScriptedGenerator("x")
    with pytest.raises(ValueError, match="no_such"):
        evaluate(gen, bfcl_categories=["simple_python", "no_such"])
    assert gen.calls == 0


def test_limit_is_a_seeded_sample_not_the_first_entries():
    from looptool.shared.evaluation import select_entries

    a = [e.id for e in select_entries("simple_python", 10)]
    assert a == [e.id for e in select_entries("simple_python", 10)]
    assert len(a) == 10 and a != [e.id for e in select_entries("simple_python")][:10]
    assert len(select_entries("simple_python")) == len(select_entries("simple_python", 0))
