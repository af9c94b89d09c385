"""Samples ⇄ the GRPO Parquet rows verl's trainer reads (and the CPU trainer reads too).

Row layout (verl's RLHF dataset): ``data_source``, ``prompt`` (chat messages), ``ability``,
``reward_model: {style: "rule", ground_truth}``, ``extra_info``. ``ground_truth`` is JSON text of
the reference calls (``[]`` = the right answer is no call); ``extra_info`` carries the sample id,
the tools (JSON text, for schema-aware reward checks) and the split.
"""

from __future__ import annotations

import json
from typing import Any

from looptool.shared.prompt import sample_chat, target_text
from looptool.shared.records import Sample, ToolCall

DATA_SOURCE = "looptool"
ABILITY = "tool_calling"


def sample_to_verl_row(sample: Sample, split: str = "train", index: int = 0) -> dict[str, Any]:
    return {
        "data_source": DATA_SOURCE,
        "prompt": sample_chat(sample),
        "ability": ABILITY,
        "reward_model": {
            "style": "rule",
            "ground_truth": json.dumps([c.model_dump(exclude={"id"}) for c in sample.reference], ensure_ascii=False),
        },
        "extra_info": {
            "split": split,
            "index": index,
            "sample_id": sample.id,
            "tools": json.dumps([t.model_dump() for t in sample.tools], ensure_ascii=False),
            "target": target_text(sample),
            "reference_text": sample.reference_text,
        },
    }


def ground_truth_calls(ground_truth: str | list[Any]) -> list[ToolCall]:
    data = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    return [ToolCall.model_validate(c) for c in data]


VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
