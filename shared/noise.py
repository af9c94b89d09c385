"""Label noise on purpose (the JGLV demo) and how much of it the judge recovered.

``inject_label_noise`` corrupts the reference calls of a ``rate`` fraction of the samples that have
calls, in ways a careful judge can detect from the context alone:

- **value**: one argument value becomes a different plausible value that does *not* occur in the
  context: numbers are perturbed (±1, ±2, ±5, ×2, ±10 %, … within the schema's bounds), strings are
  replaced by another value of the same kind (another enum member; another entry of the
  ``scenarios`` word list that holds the value: SFO → another airport, AAPL → another ticker; else
  a value drawn for the same parameter name and schema by ``scenarios.sample_value``, preferring the
  same shape: another city for ``city``, another date for a date), one element of a list of
  scalars likewise. The corrupted call still validates
  against the schema, so only the context gives it away.
- **drop**: a required argument is removed (the label no longer carries a value the user gave).

Arguments whose value the context states are corrupted first (a change there is detectable from the
context); others (defaults the user never mentioned) only when a sample has no such argument.

Each corrupted sample gets a lineage event (stage ``noise``, action ``corrupted``, reason what
changed), ``meta["noise"]`` (the same text) and ``meta["clean_reference"]`` (the original calls as
JSON), so JGLV's corrections can be scored later. Sample ids are kept. The input samples are not
modified; the returned list holds copies of the corrupted ones.

``noise_recovery`` scores the judge's relabels against the injected noise. Two levels of credit:

- **detected**: the judge said ``label_wrong`` on a corrupted sample (whatever it proposed);
- **fixed exactly**: detected, and the corrected label equals the clean one under the reward's
  equivalence (``reward.calls_match``: order-independent, type-aware, normalised strings).

``precision``/``recall``/``f1`` use *fixed exactly* as the true positives (a relabel that is wrong or
lands on a clean sample is a false positive; a corrupted sample not fixed is a false negative);
``detection_precision``/``detection_recall``/``detection_f1`` use *detected*. With ``judged_ids``
(the samples that reached the judge), ``recall_judged`` is the recall over corrupted samples the
judge actually saw (a corrupted sample the model reproduces is mastered and never judged).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Iterable

from looptool.shared.records import Sample, Stage, Tool, ToolCall
from looptool.shared.scenarios.values import sample_value
from looptool.shared.scenarios.vocab import VOCABULARIES
from looptool.shared.schema import normalize_schema, validate_call

STAGE = Stage.NOISE.value


def _context_text(sample: Sample) -> str:
    parts = []
    for m in sample.context:
        parts.append(m.content)
        for c in m.tool_calls:
            parts.append(json.dumps(c.arguments, ensure_ascii=False))
    return "\n".join(parts).lower()


def _number_in(text: str, value: int | float) -> bool:
    forms = {json.dumps(value), str(value)}
    if isinstance(value, float) and value.is_integer():
        forms.add(str(int(value)))
    return any(re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", text) for f in forms)


def _decimals(v: float) -> int:
    text = repr(v)
    return len(text.split(".", 1)[1]) if "." in text and "e" not in text else 2


def _prop_schema(tool: Tool | None, arg: str) -> dict[str, Any]:
    if tool is None:
        return {}
    params = normalize_schema(tool.parameters) if isinstance(tool.parameters, dict) else {}
    props = params.get("properties") or {}
    s = props.get(arg)
    return s if isinstance(s, dict) else {}


def _in_bounds(v: float, schema: dict[str, Any]) -> bool:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(lo, (int, float)) and v < lo:
        return False
    if isinstance(hi, (int, float)) and v > hi:
        return False
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and v <= xlo:
        return False
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and v >= xhi:
        return False
    return True


def _other_number(v: int | float, schema: dict[str, Any], text: str, rng: random.Random) -> int | float | None:
    if isinstance(v, int):
        cands: list[int | float] = [v + 1, v - 1, v + 2, v - 2, v + 5, v - 5, v * 2, v + 10, v - 10]
        if abs(v) > 20:
            cands += [int(v * 1.5), int(v * 0.5), v + 100]
    else:
        d = min(_decimals(v), 4)
        cands = [round(v * f, d) for f in (1.1, 0.9, 1.25, 0.8, 1.5, 2.0)] + [round(v + 1, d), round(v - 1, d)]
        cands = [float(c) for c in cands]
    enum = schema.get("enum")
    if isinstance(enum, list):
        cands = [e for e in enum if type(e) is type(v)]
    # keep the sign (a distance stays positive) unless the schema's bounds say otherwise
    same_sign = [x for x in cands if (x > 0) == (v > 0) and (x < 0) == (v < 0)] if not isinstance(enum, list) else cands
    ok = [c for c in dict.fromkeys(same_sign) if c != v and _in_bounds(c, schema) and not _number_in(text, c)]
    return rng.choice(ok) if ok else None


_CODE = re.compile(r"[A-Z0-9]{2,6}")


def _shape(v: str) -> tuple[bool, bool, bool]:
    """A coarse "kind" of a string: (looks like a code such as SFO/AAPL, has digits, has several words)."""
    return bool(_CODE.fullmatch(v)), any(ch.isdigit() for ch in v), len(v.split()) > 1


def _other_string(name: str, v: str, schema: dict[str, Any], text: str, rng: random.Random, hint: str) -> str | None:
    """Another value of the same kind: another enum member; another member of a vocabulary list that
    holds ``v`` (SFO → another airport); else a value drawn for the same parameter, preferring one
    of the same shape (a code for a code)."""

    def fresh(c: Any) -> bool:
        return isinstance(c, str) and c.strip() != "" and c.strip().lower() != v.strip().lower() and c.lower() not in text

    enum = schema.get("enum")
    if isinstance(enum, list):
        ok = [e for e in enum if fresh(e)]
        return rng.choice(ok) if ok else None
    for vocab in VOCABULARIES:  # the scenarios' word lists: same-kind values
        if any(x.lower() == v.strip().lower() for x in vocab):
            ok = [x for x in vocab if fresh(x)]
            if ok:
                return rng.choice(ok)
    value_schema = schema if schema else {"type": "string"}
    fallback = None
    for _ in range(16):
        try:
            c = sample_value(name, value_schema, rng, hint)
        except Exception:  # noqa: BLE001 - an odd schema: no corruption of this argument
            return None
        if fresh(c):
            if _shape(c) == _shape(v):
                return c
            fallback = fallback or c
    return fallback


def _grounded(value: Any, text: str) -> bool:
    """Is the value stated in the context? Only then can a judge see that a change is wrong."""
    if isinstance(value, list):
        return bool(value) and all(_grounded(v, text) for v in value)
    if isinstance(value, str):
        return bool(value.strip()) and value.strip().lower() in text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number_in(text, value)
    return False


def _options(sample: Sample) -> list[tuple[str, int, str, int]]:
    """(kind, call index, argument, list index or -1) corruptions this sample allows."""
    tools = {t.name: t for t in sample.tools}
    out: list[tuple[str, int, str, int]] = []
    for ci, call in enumerate(sample.reference):
        tool = tools.get(call.name)
        required = (tool.parameters.get("required") or []) if tool is not None and isinstance(tool.parameters, dict) else []
        for arg, val in call.arguments.items():
            if isinstance(val, bool) or val is None:
                pass
            elif isinstance(val, (int, float, str)):
                out.append(("value", ci, arg, -1))
            elif isinstance(val, list):
                for li, item in enumerate(val):
                    if isinstance(item, (int, float, str)) and not isinstance(item, bool):
                        out.append(("value", ci, arg, li))
            if arg in required:
                out.append(("drop", ci, arg, -1))
    return out


def _show(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


def corrupt_sample(sample: Sample, rng: random.Random, drop_weight: float = 0.25) -> tuple[list[ToolCall], str] | None:
    """A detectably wrong version of ``sample.reference`` and what changed, or None if impossible."""
    text = _context_text(sample)
    options = _options(sample)

    def value_at(o: tuple[str, int, str, int]) -> Any:
        v = sample.reference[o[1]].arguments[o[2]]
        return v[o[3]] if o[3] >= 0 else v

    # arguments whose value the context states first: changing those is detectable
    grounded = [o for o in options if _grounded(value_at(o), text)]
    rest = [o for o in options if o not in grounded]
    ordered: list[tuple[str, int, str, int]] = []
    for group in (grounded, rest):
        values = [o for o in group if o[0] == "value"]
        drops = [o for o in group if o[0] == "drop"]
        rng.shuffle(values)
        rng.shuffle(drops)
        ordered += (drops + values) if drops and rng.random() < drop_weight else (values + drops)
    tools = {t.name: t for t in sample.tools}
    for kind, ci, arg, li in ordered:
        calls = [ToolCall(name=c.name, arguments=json.loads(json.dumps(c.arguments))) for c in sample.reference]
        call = calls[ci]
        old = call.arguments[arg]
        if kind == "drop":
            del call.arguments[arg]
            return calls, f"{call.name}.{arg}: required argument dropped (was {_show(old)})"
        tool = tools.get(call.name)
        schema = _prop_schema(tool, arg)
        target = old[li] if li >= 0 else old
        if li >= 0:
            items = schema.get("items")
            schema = items if isinstance(items, dict) else {}
        hint = tool.description if tool is not None else ""
        new: str | int | float | None
        if isinstance(target, str):
            new = _other_string(arg, target, schema, text, rng, hint)
        else:
            new = _other_number(target, schema, text, rng)
        if new is None:
            continue
        if li >= 0:
            call.arguments[arg] = [*old[:li], new, *old[li + 1 :]]
        else:
            call.arguments[arg] = new
        if tool is not None and validate_call(call, [tool]):
            continue  # keep value corruptions schema-valid: only the context reveals them
        where = f"{call.name}.{arg}" + (f"[{li}]" if li >= 0 else "")
        return calls, f"{where}: {_show(target)} -> {_show(new)}"
    return None


def inject_label_noise(
    samples: list[Sample], rate: float, rng: random.Random, round: int = 0
) -> tuple[list[Sample], list[str]]:
    """Corrupt ``round(rate × |samples with calls|)`` labels; returns (samples, corrupted ids).

    The returned list has the same order and length; corrupted samples are copies with the lineage
    event and meta described in the module docstring. Deterministic given ``rng``'s state.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be within [0, 1], got {rate}")
    out = list(samples)
    eligible = [i for i, s in enumerate(samples) if s.reference]
    want = min(len(eligible), int(rate * len(eligible) + 0.5))
    if want == 0:
        return out, []
    order = list(eligible)
    rng.shuffle(order)
    corrupted: list[str] = []
    for i in order:
        if len(corrupted) >= want:
            break
        s = samples[i].model_copy(deep=True)
        s.with_id()
        result = corrupt_sample(s, rng)
        if result is None:
            continue
        calls, what = result
        s.meta["clean_reference"] = json.dumps([c.model_dump(exclude={"id"}) for c in s.reference], ensure_ascii=False)
        s.meta["noise"] = what
        s.reference = calls
        s.add_lineage(round, STAGE, "corrupted", reason=what)
        out[i] = s
        corrupted.append(s.id)
    return out, corrupted


def clean_reference(sample: Sample) -> list[ToolCall] | None:
    """The original calls of a sample ``inject_label_noise`` corrupted; None for any other sample."""
    raw = sample.meta.get("clean_reference")
    return None if raw is None else [ToolCall.model_validate(c) for c in json.loads(raw)]


def clean_references(samples: Iterable[Sample]) -> dict[str, list[ToolCall]]:
    """id → original calls, for the samples ``inject_label_noise`` corrupted."""
    return {s.id: clean for s in samples if (clean := clean_reference(s)) is not None}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def noise_recovery(
    corrupted_ids: Iterable[str],
    clean_refs: dict[str, list[ToolCall]],
    relabelled: dict[str, list[ToolCall]],
    judged_ids: Iterable[str] | None = None,
) -> dict[str, float]:
    """Score label corrections against the injected noise (definitions in the module docstring).

    Returns ratios (``precision``, ``recall``, ``f1``, ``detection_*``, ``recall_judged``; 0.0 when
    undefined) and counts (``corrupted``, ``relabelled``, ``detected``, ``fixed_exactly``,
    ``wrong_fix``, ``false_relabels``, ``missed``), all as numbers.
    """
    from looptool.shared.reward import calls_match

    corrupted = set(corrupted_ids)
    relabels = dict(relabelled)
    detected = corrupted & set(relabels)
    fixed = {i for i in detected if i in clean_refs and calls_match(list(relabels[i]), list(clean_refs[i]))[0]}
    p, r = _ratio(len(fixed), len(relabels)), _ratio(len(fixed), len(corrupted))
    dp, dr = _ratio(len(detected), len(relabels)), _ratio(len(detected), len(corrupted))
    out: dict[str, float] = {
        "precision": p,
        "recall": r,
        "f1": _f1(p, r),
        "detection_precision": dp,
        "detection_recall": dr,
        "detection_f1": _f1(dp, dr),
        "corrupted": len(corrupted),
        "relabelled": len(relabels),
        "detected": len(detected),
        "fixed_exactly": len(fixed),
        "wrong_fix": len(detected) - len(fixed),
        "false_relabels": len(set(relabels) - corrupted),
        "missed": len(corrupted - set(relabels)),
    }
    if judged_ids is not None:
        reached = corrupted & set(judged_ids)
        out["corrupted_judged"] = len(reached)
        out["recall_judged"] = _ratio(len(fixed & reached), len(reached))
    return out


# --------------------------------------------------------------------------------------------- over rounds

LOOP_COUNTS = ("corrupted", "relabelled", "detected", "fixed_exactly", "false_relabels", "removed")


def label_noise_state(samples: Iterable[Sample]) -> dict[str, int]:
    """Where injected noise stands in a set of samples, from their meta, lineage and current label.

    For every sample that carries ``meta["clean_reference"]`` (corrupted in any round): was it ever
    relabelled by the judge (``detected``), does its label now equal the clean one
    (``fixed_exactly``, under ``reward.calls_match``), or did it leave the data unfixed (``removed``:
    its last lineage event is ``dropped``). ``relabelled`` counts every sample the judge ever relabelled and
    ``false_relabels`` those that were never corrupted. Counts add up over disjoint sample sets,
    which is how the runner carries them from round to round.
    """
    from looptool.shared.reward import calls_match

    out = dict.fromkeys(LOOP_COUNTS, 0)
    for s in samples:
        relabelled = any(e.stage == "judge" and e.action == "relabelled" for e in s.lineage)
        out["relabelled"] += relabelled
        clean = clean_reference(s)
        if clean is None:
            out["false_relabels"] += relabelled
            continue
        out["corrupted"] += 1
        out["detected"] += relabelled
        fixed = relabelled and calls_match(list(s.reference), clean)[0]
        out["fixed_exactly"] += fixed
        out["removed"] += not fixed and bool(s.lineage) and s.lineage[-1].action == "dropped"
    return out


def loop_noise_summary(counts: dict[str, int]) -> dict[str, float]:
    """Counts of ``label_noise_state`` (summed over sets) plus recall/precision and what is left."""
    c = {k: int(counts.get(k, 0)) for k in LOOP_COUNTS}
    return {
        **{k: float(v) for k, v in c.items()},
        "still_wrong": float(c["corrupted"] - c["fixed_exactly"] - c["removed"]),  # still in the data
        "recall": _ratio(c["fixed_exactly"], c["corrupted"]),
        "precision": _ratio(c["fixed_exactly"], c["relabelled"]),
        "detection_recall": _ratio(c["detected"], c["corrupted"]),
        "detection_precision": _ratio(c["detected"], c["relabelled"]),
    }
