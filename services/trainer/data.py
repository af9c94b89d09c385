"""Training data: verl GRPO rows (``shared/verl_format.py``) → validated examples → token ids.

The trainer's input is a committed dataset (Parquet or JSONL parts) of rows with the columns verl
reads: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model{style,
ground_truth}`` and ``extra_info{sample_id, tools, target, split}``. Every row is checked before
any compute; a bad row is a one-line error naming the row and the field.

Rows whose ``extra_info.split`` is neither empty nor ``train`` (held-out rows that travel in the
same file) are not trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from looptool.shared.errors import InputError
from looptool.shared.records import ToolCall
from looptool.shared.reward import parse_ground_truth
from looptool.shared.toolcall_format import render_tool_calls
from looptool.shared.verl_format import VERL_COLUMNS

TRAIN_SPLITS = {"", "train"}
ROLES = {"system", "user", "assistant", "tool"}
_FIX = "the trainer reads verl GRPO rows (see shared/verl_format.py: data_source, prompt, ability, reward_model, extra_info)"


@dataclass
class Example:
    row: int
    sample_id: str
    messages: list[dict[str, str]]
    reference: list[ToolCall]
    tools: list[dict[str, Any]] | None
    target: str
    prompt_ids: list[int] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)


def _tolist(v: Any) -> Any:
    return v.tolist() if hasattr(v, "tolist") else v


def row_to_example(row: Any, i: int) -> Example:
    """One row → Example; raises InputError naming ``dataset[i].<field>``."""
    where = f"dataset[{i}]"
    if not isinstance(row, dict):
        raise InputError(where, f"expected an object row, got {type(row).__name__}", _FIX)
    missing = [c for c in VERL_COLUMNS if c not in row]
    if missing:
        raise InputError(where, f"missing column(s) {', '.join(missing)}", _FIX)
    prompt = _tolist(row["prompt"])
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError:
            raise InputError(f"{where}.prompt", "not a list of chat messages", _FIX) from None
    if not isinstance(prompt, list) or not prompt:
        raise InputError(f"{where}.prompt", "must be a non-empty list of chat messages {role, content}", _FIX)
    messages: list[dict[str, str]] = []
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(
                f"{where}.prompt[{j}]", "each message needs a role (system|user|assistant|tool) and string content", _FIX
            )
        messages.append({"role": m["role"], "content": m["content"]})
    rm = row["reward_model"]
    if not isinstance(rm, dict) or "ground_truth" not in rm:
        raise InputError(f"{where}.reward_model", "must be an object with ground_truth (JSON list of reference calls)", _FIX)
    try:
        reference, gt_tools = parse_ground_truth(rm["ground_truth"])
    except ValueError as exc:
        raise InputError(f"{where}.reward_model.ground_truth", str(exc).splitlines()[0], _FIX) from None
    extra = row["extra_info"] if isinstance(row["extra_info"], dict) else {}
    if row["extra_info"] is not None and not isinstance(row["extra_info"], dict):
        raise InputError(f"{where}.extra_info", "must be an object (sample_id, tools, target, split)", _FIX)
    tools = gt_tools
    raw_tools = _tolist(extra.get("tools"))
    if tools is None and raw_tools not in (None, "", []):
        try:
            tools = json.loads(raw_tools) if isinstance(raw_tools, str) else raw_tools
        except json.JSONDecodeError:
            raise InputError(f"{where}.extra_info.tools", "not valid JSON", _FIX) from None
        if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
            raise InputError(f"{where}.extra_info.tools", "must be a JSON list of tools with a 'name'", _FIX)
    target = extra.get("target")
    if not isinstance(target, str) or (not target and reference):
        target = render_tool_calls(reference) if reference else str(extra.get("reference_text") or "")
    return Example(
        row=i,
        sample_id=str(extra.get("sample_id") or f"row-{i}"),
        messages=messages,
        reference=reference,
        tools=tools or None,
        target=target,
    )


def load_examples(rows: Iterable[Any]) -> list[Example]:
    """Validate every row; keep the training split. Raises InputError for a bad or empty dataset."""
    out: list[Example] = []
    n = 0
    for i, row in enumerate(rows):
        n += 1
        ex = row_to_example(row, i)
        split = str(((row.get("extra_info") or {}).get("split")) or "")
        if split in TRAIN_SPLITS:
            out.append(ex)
    if n == 0:
        raise InputError("dataset", "is empty (0 rows)", "commit a dataset with at least one GRPO row")
    if not out:
        raise InputError("dataset", f"has {n} rows but none in the training split (extra_info.split '' or 'train')")
    return out


# --------------------------------------------------------------------------------------------- tokens


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Chat template with the generation prompt, as token ids (what verl and the inference server feed)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids(tokenizer, model=None) -> list[int]:
    ids: list[int] = []
    gc = getattr(model, "generation_config", None) if model is not None else None
    for v in (getattr(gc, "eos_token_id", None), tokenizer.eos_token_id):
        for x in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(x, int) and x not in ids:
                ids.append(x)
    if not ids:
        raise InputError("base model", "tokenizer has no eos token; set eos_token in tokenizer_config.json")
    return ids


def tokenize_examples(examples: list[Example], tokenizer, eos_id: int) -> None:
    """Fill ``prompt_ids`` and ``target_ids`` (target + eos, the turn end the model must learn)."""
    for ex in examples:
        ex.prompt_ids = encode_prompt(tokenizer, ex.messages)
        ex.target_ids = list(tokenizer(ex.target, add_special_tokens=False)["input_ids"]) + [eos_id]


def corpus_texts(examples: list[Example]) -> list[str]:
    """Texts the builtin tiny model's tokenizer is trained on: every prompt message and target."""
    texts: list[str] = []
    for ex in examples:
        texts.extend(m["content"] for m in ex.messages)
        texts.append(ex.target)
    return texts
