"""Our BFCL aggregates (shared/bfcl_scores.py) against bfcl-eval's own leaderboard code.

The same per-category results go to bfcl-eval's ``generate_leaderboard_csv`` (the function its
``bfcl evaluate`` ends with; it writes the leaderboard CSVs) and to ``bfcl_scores.scorecard``;
every column both compute must match to the CSV's precision (two decimals of a percent).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from looptool.shared import bfcl_scores
from looptool.shared.bfcl_scores import CategoryResult

# bfcl-eval's leaderboard keys a model by its name with "/" written "_"; this one is in its registry.
BFCL_MODEL_KEY = "Qwen_Qwen3-8B-FC"
ALL = bfcl_scores.leaf_categories()
CSV_OF = {"overall": "data_overall.csv", "non_live": "data_non_live.csv", "live": "data_live.csv",
          "multi_turn": "data_multi_turn.csv", "agentic": "data_agentic.csv"}


def random_results(seed: int, categories: list[str]) -> dict[str, CategoryResult]:
    rng = random.Random(seed)
    out = {}
    for c in categories:
        n = rng.randint(1, 400)
        out[c] = CategoryResult(correct=rng.randint(0, n), total=n)
    return out


def official_tables(results: dict[str, CategoryResult], tmp_path: Path) -> dict[str, dict[str, str]]:
    """bfcl-eval's leaderboard rows for these results: table → {column: cell text}."""
    from bfcl_eval.eval_checker.eval_runner_helper import generate_leaderboard_csv

    table = {BFCL_MODEL_KEY: {c: {"accuracy": r.accuracy, "total_count": r.total} for c, r in results.items()}}
    generate_leaderboard_csv(table, tmp_path)
    out = {}
    for name, file in CSV_OF.items():
        with open(tmp_path / file, newline="") as fh:
            header, row = list(csv.reader(fh))
        out[name] = dict(zip(header, row))
    return out


def percent(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell[:-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_column_matches_bfcl_eval_when_every_category_is_run(seed, tmp_path):
    results = random_results(seed, ALL)
    official = official_tables(results, tmp_path)
    card = bfcl_scores.scorecard(results, model="m", overlap="overlap: none")
    assert card["partial"] == {}
    compared = 0
    for table, row in card["tables"].items():
        for column, ours in row.items():
            if column == "Model":
                continue
            theirs = official[table][column]
            assert theirs != "N/A", (table, column)
            assert abs(100 * ours - percent(theirs)) <= 0.0051, (table, column, ours, theirs)
            compared += 1
    # every aggregate and category column of the five tables (not cost/latency/rank/model link)
    assert compared == sum(len(cols) - 1 for cols in bfcl_scores.table_columns().values())


def test_groups_not_run_are_na_and_excluded_from_the_overall(tmp_path):
    single_turn = [c for g in ("non_live", "live", "irrelevance_total", "relevance_total") for c in bfcl_scores.leaf_categories(g)]
    results = random_results(7, single_turn)
    official = official_tables(results, tmp_path)
    card = bfcl_scores.scorecard(results, model="m", overlap="overlap: none")
    overall = card["tables"]["overall"]
    # bfcl-eval counts the absent multi-turn/agentic groups as 0 (weights 30 + 40 of 100) ...
    assert percent(official["overall"]["Multi Turn Acc"]) == 0.0
    # ... ours says N/A and renormalises the 10/10/10 weights of the groups present.
    for column in ("Multi Turn Acc", "Web Search Acc", "Memory Acc", "Multi Turn Base"):
        assert overall[column] == "N/A"
    assert "multi_turn" not in card["tables"] and "agentic" not in card["tables"]
    assert card["groups_run"] == ["non_live", "live", "irrelevance_total"]
    assert abs(100 * overall["Overall Acc"] * 0.3 - percent(official["overall"]["Overall Acc"])) <= 0.0051
    for column in ("Non-Live AST Acc", "Live Acc", "Irrelevance Detection", "Relevance Detection"):
        assert abs(100 * overall[column] - percent(official["overall"][column])) <= 0.0051, column


def test_a_group_run_in_part_is_averaged_over_its_parts_and_marked_partial(tmp_path):
    results = random_results(3, ["simple_python", "multiple", "live_simple", "live_multiple"])
    official = official_tables(results, tmp_path)
    card = bfcl_scores.scorecard(results, model="m", overlap="overlap: none")
    overall = card["tables"]["overall"]
    sp, mu = results["simple_python"].accuracy, results["multiple"].accuracy
    assert overall["Non-Live Simple AST"] == pytest.approx(sp, abs=1e-6)  # not sp/3: Java/JS were not run
    assert overall["Non-Live AST Acc"] == pytest.approx((sp + mu) / 2, abs=1e-6)
    ls, lm = results["live_simple"], results["live_multiple"]
    assert overall["Live Acc"] == pytest.approx((ls.correct + lm.correct) / (ls.total + lm.total), abs=1e-6)
    assert {"Non-Live AST Acc", "Non-Live Simple AST", "Live Acc", "Overall Acc"} <= set(card["partial"]["overall"])
    # per table: the live table's "Irrelevance Detection" (live_irrelevance, not run) is N/A, not partial
    assert card["tables"]["live"]["Irrelevance Detection"] == "N/A"
    assert "Irrelevance Detection" not in card["partial"].get("live", [])
    assert card["partial"]["non_live"] == ["Non-Live Overall Acc", "AST Summary", "Simple AST"]
    # bfcl-eval shows the non-live summary as N/A, and its live figure counts the live categories
    # not run as 0 (weighted by their full entry counts): lower than ours
    assert official["overall"]["Non-Live AST Acc"] == "N/A"
    assert percent(official["overall"]["Live Acc"]) < 100 * overall["Live Acc"]
    assert overall["Irrelevance Detection"] == "N/A"
    md = bfcl_scores.render_markdown(card)
    assert "N/A" in md and "*" in md and md.splitlines()[0].startswith("# BFCL scorecard — model: m")


def test_categories_outside_bfcl_and_empty_ones_are_left_out():
    results = {"simple_python": CategoryResult(3, 4), "multiple": CategoryResult(0, 0), "heldout": CategoryResult(1, 2)}
    scores = bfcl_scores.aggregate(results)
    assert scores["multiple"] is None  # no entry scored is "not run", not 0%
    assert scores["non_live"].accuracy == pytest.approx(0.75)
    assert "heldout" not in scores
    assert bfcl_scores.aggregate({})["overall"] is None


def test_multi_turn_plugs_in_as_a_group(tmp_path):
    """A group scored elsewhere only has to produce results under BFCL's category names."""
    mt = bfcl_scores.leaf_categories("multi_turn")
    results = random_results(11, mt + ["simple_python"])
    card = bfcl_scores.scorecard(results, model="m", overlap="overlap: none")
    expected = sum(results[c].accuracy for c in mt) / 4
    assert card["tables"]["multi_turn"]["Multi Turn Overall Acc"] == pytest.approx(expected, abs=1e-6)
    # overall: non-live (weight 10) and multi-turn (30), renormalised
    assert card["tables"]["overall"]["Overall Acc"] == pytest.approx(
        (10 * results["simple_python"].accuracy + 30 * expected) / 40, abs=1e-6)
