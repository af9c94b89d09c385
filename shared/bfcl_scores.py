"""BFCL leaderboard aggregates and the scorecard, from per-category results.

The formulas are bfcl-eval's (``eval_checker/eval_runner_helper.generate_leaderboard_csv``):

- non-live: *Simple* is the plain average of ``simple_python``, ``simple_java``,
  ``simple_javascript``; the non-live AST figure is the plain average of Simple, ``multiple``,
  ``parallel``, ``parallel_multiple``;
- live: the four live AST categories averaged weighted by entry count;
- irrelevance: plain average of ``irrelevance`` and ``live_irrelevance``; relevance:
  ``live_relevance`` (shown, not part of the overall);
- multi-turn: plain average of its four categories; agentic: plain average of the web-search and
  memory summaries, each a plain average of its categories;
- overall: non-live, live, irrelevance, multi-turn, agentic weighted 10/10/10/30/40.

One deliberate difference: bfcl-eval counts a category that was not run as 0 in these averages
(and shows N/A only in some columns). Here an aggregate is taken over the parts that were run;
one with no part run is ``None`` (N/A) and left out of the aggregates above it, with weights
renormalised over what is present. A figure over only some of its parts is marked partial. When
every category was run the two agree exactly (``tests/shared/test_bfcl_aggregates.py`` feeds the
same results to bfcl-eval's own function).

The tree is generic over category names: another category group (e.g. multi-turn, scored by its
own module) plugs in by producing :class:`CategoryResult` values under BFCL's category names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

Method = Literal["unweighted", "weighted", "percentage"]


@dataclass(frozen=True)
class CategoryResult:
    """One category's outcome: entries right out of entries scored; ``undecodable`` answers
    (counted as the checker scores them, i.e. wrong wherever a call was expected)."""

    correct: int
    total: int
    undecodable: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "undecodable": self.undecodable, "accuracy": self.accuracy}


@dataclass(frozen=True)
class Node:
    """An aggregate of categories (leaf names) or other nodes (their keys)."""

    key: str
    method: Method
    parts: tuple[str, ...]
    weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class Score:
    accuracy: float
    total_count: int
    complete: bool  # every category below it was run


NODES: tuple[Node, ...] = (
    Node("simple", "unweighted", ("simple_python", "simple_java", "simple_javascript")),
    Node("non_live", "unweighted", ("simple", "multiple", "parallel", "parallel_multiple")),
    Node("live", "weighted", ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")),
    Node("irrelevance_total", "unweighted", ("irrelevance", "live_irrelevance")),
    Node("relevance_total", "unweighted", ("live_relevance",)),
    Node("multi_turn", "unweighted",
         ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")),
    Node("web_search", "unweighted", ("web_search_base", "web_search_no_snippet")),
    Node("memory", "unweighted", ("memory_kv", "memory_vector", "memory_rec_sum")),
    Node("agentic", "unweighted", ("web_search", "memory")),
    Node("overall", "percentage", ("non_live", "live", "irrelevance_total", "multi_turn", "agentic"), (10, 10, 10, 30, 40)),
)
_BY_KEY = {n.key: n for n in NODES}

#: The leaderboard's groups, in the order of its overall figure.
GROUPS = ("non_live", "live", "irrelevance_total", "multi_turn", "agentic")


def leaf_categories(key: str = "") -> list[str]:
    """The BFCL categories under an aggregate; every scoring category when ``key`` is empty."""
    if not key:
        return list(dict.fromkeys(c for n in NODES for c in leaf_categories(n.key)))
    node = _BY_KEY.get(key)
    if node is None:
        return [key]
    return [c for p in node.parts for c in leaf_categories(p)]


def _combine(node: Node, scores: list[tuple[Score | None, float]]) -> Score | None:
    present = [(s, w) for s, w in scores if s is not None]
    if not present:
        return None
    total = sum(s.total_count for s, _ in present)
    if node.method == "unweighted":
        acc = sum(s.accuracy for s, _ in present) / len(present)
    elif node.method == "weighted":
        acc = sum(s.accuracy * s.total_count for s, _ in present) / total if total else 0.0
    else:  # fixed percentages, renormalised over the groups present
        wsum = sum(w for _, w in present)
        acc = sum(s.accuracy * w for s, w in present) / wsum
    complete = len(present) == len(scores) and all(s.complete for s, _ in present)
    return Score(acc, total, complete)


def aggregate(results: Mapping[str, CategoryResult]) -> dict[str, Score | None]:
    """Every category and aggregate → its score, ``None`` where nothing below it was run.
    Names outside BFCL's tree (held-out sets, unknown categories) are ignored here."""
    out: dict[str, Score | None] = {}

    def score(key: str) -> Score | None:
        if key in out:
            return out[key]
        node = _BY_KEY.get(key)
        if node is None:
            r = results.get(key)
            s = Score(r.accuracy, r.total, True) if r is not None and r.total > 0 else None
        else:
            weights = node.weights or (1.0,) * len(node.parts)
            s = _combine(node, [(score(p), w) for p, w in zip(node.parts, weights)])
        out[key] = s
        return s

    for node in NODES:
        score(node.key)
    return out


# ----------------------------------------------------------------------------- the scorecard

# Each leaderboard table: the bfcl-eval column list it takes its names from, and what fills each
# column in order ("@model" = the model; None = a column we do not compute, left out).
_TABLES: dict[str, tuple[str, tuple[str | None, ...]]] = {
    "overall": ("COLUMNS_OVERALL", (
        None, "overall", "@model", None, None, None, None, None,
        "non_live", "simple", "multiple", "parallel", "parallel_multiple",
        "live", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
        "multi_turn", "multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context",
        "web_search", "web_search_base", "web_search_no_snippet",
        "memory", "memory_kv", "memory_vector", "memory_rec_sum",
        "relevance_total", "irrelevance_total", None, None, None, None,
    )),
    "non_live": ("COLUMNS_NON_LIVE", (
        None, "@model", "non_live", "non_live", "simple", "simple_python", "simple_java", "simple_javascript",
        "multiple", "parallel", "parallel_multiple", "irrelevance",
    )),
    "live": ("COLUMNS_LIVE", (
        None, "@model", "live", "live", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
        "live_irrelevance", "live_relevance",
    )),
    "multi_turn": ("COLUMNS_MULTI_TURN", (
        None, "@model", "multi_turn", "multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
        "multi_turn_long_context",
    )),
    "agentic": ("COLUMNS_AGENTIC", (
        None, "@model", "agentic", "web_search", "web_search_base", "web_search_no_snippet",
        "memory", "memory_kv", "memory_vector", "memory_rec_sum",
    )),
}


def table_columns() -> dict[str, list[tuple[str, str]]]:
    """table → [(bfcl-eval's column name, the category/aggregate key that fills it)]."""
    from bfcl_eval.constants import column_headers

    out = {}
    for table, (attr, keys) in _TABLES.items():
        names = getattr(column_headers, attr)
        if len(names) != len(keys):  # a bfcl-eval with other columns: fail loudly, not misalign
            raise RuntimeError(f"bfcl-eval's {attr} has {len(names)} columns, this code maps {len(keys)}; update shared/bfcl_scores.py")
        out[table] = [(name, key) for name, key in zip(names, keys) if key is not None]
    return out


def overlap_line(allow_overlap: bool, excluded_functions: int | None) -> str:
    """The scorecard's statement on train/test overlap."""
    if allow_overlap:
        return "overlap: ALLOWED — BFCL entries may use functions the model trained on (eval.allowOverlap)"
    if excluded_functions:
        return f"overlap: none — BFCL entries using any of the {excluded_functions} trained functions are excluded"
    return "overlap: none — the model's toolset is not drawn from BFCL; whole categories are scored"


def scorecard(results: Mapping[str, CategoryResult], model: str, overlap: str, extra: Mapping[str, CategoryResult] | None = None) -> dict[str, Any]:
    """The scorecard as JSON: header, per-category results, and the leaderboard tables (values in
    [0, 1]; ``"N/A"`` where nothing was run; ``partial``: table → the columns over only some of
    their categories)."""
    scores = aggregate(results)
    tables: dict[str, dict[str, Any]] = {}
    partial: dict[str, list[str]] = {}
    for table, cols in table_columns().items():
        if table != "overall" and all(scores.get(k) is None for _, k in cols if k != "@model"):
            continue  # nothing of this table was run: left out (its figures are N/A in "overall")
        row: dict[str, Any] = {}
        for name, key in cols:
            if key == "@model":
                row[name] = model
                continue
            s = scores.get(key)
            row[name] = "N/A" if s is None else round(s.accuracy, 6)
            if s is not None and not s.complete:
                partial.setdefault(table, []).append(name)
        tables[table] = row
    header = f"BFCL scorecard — model: {model}; {overlap}"
    return {
        "header": header,
        "model": model,
        "overlap": overlap,
        "categories": {k: v.to_json() for k, v in results.items()},
        "other": {k: v.to_json() for k, v in (extra or {}).items()},
        "groups_run": [g for g in GROUPS if scores.get(g) is not None],
        "tables": tables,
        "partial": partial,
    }


def _pct(v: Any) -> str:
    return v if isinstance(v, str) else f"{100 * v:.2f}%"


def render_markdown(card: Mapping[str, Any]) -> str:
    lines = [f"# {card['header']}", ""]
    for table, row in card["tables"].items():
        cols = [c for c in row if c != "Model"]
        lines += [f"## {table.replace('_', '-')}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        marked = card["partial"].get(table, [])
        lines.append("| " + " | ".join(_pct(row[c]) + ("*" if c in marked else "") for c in cols) + " |")
        lines.append("")
    if card["partial"]:
        lines += ["\\* over the categories run only (bfcl-eval's leaderboard would count a category not run as 0).", ""]
    rows = {**card["categories"], **card.get("other", {})}
    if rows:
        lines += ["## Categories", "", "| category | n | correct | undecodable | accuracy |", "|---|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['total']} | {r['correct']} | {r.get('undecodable', 0)} | {_pct(r['accuracy'])} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "GROUPS",
    "NODES",
    "CategoryResult",
    "Node",
    "Score",
    "aggregate",
    "leaf_categories",
    "overlap_line",
    "render_markdown",
    "scorecard",
    "table_columns",
]
