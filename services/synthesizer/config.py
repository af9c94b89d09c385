"""Synthesis configuration (``SynthesizeRequest.config_json``).

The fields the manifest's ``spec.synthesis`` also has (``agents``, ``toolsPerSample``, ``maxNeeds``)
take their type bounds, default and description from ``SynthesisSpec``; ``mix`` is the service's
own default (the spec's empty mix means "the synthesizer's default"). Keys are camelCase (the
manifest's spelling, derived from each field name by one rule) or the snake_case field names;
the only name the rule does not give is ``toolsPerSample`` (the manifest's name for
``tools_per_dialog``). The field names stay snake_case: ``model_dump`` of this model is stored
in each dialogue dataset's metadata and in the synthesizer's output key.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from looptool.shared.loop.manifest import SynthesisSpec

NEED_KINDS = ("single", "parallel", "sequential", "clarification", "no_tool")

_SPEC = SynthesisSpec.model_fields


class SynthesisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    agents: Annotated[Literal["programmatic", "llm"], _SPEC["agents"]]
    tools_per_dialog: Annotated[int, _SPEC["toolsPerSample"], Field(alias="toolsPerSample")]
    max_needs: Annotated[int, _SPEC["maxNeeds"]]
    mix: dict[str, float] = Field(
        default_factory=lambda: {"single": 0.35, "parallel": 0.2, "sequential": 0.2, "clarification": 0.15, "no_tool": 0.1}
    )
    include_optional: float = Field(0.5, ge=0, le=1)
    styles: list[str] = Field(default_factory=lambda: ["terse", "polite", "verbose", "casual"])
    # tool agent (the simulator service)
    tool_mode: str = "auto"
    environment: str = ""
    initial_state: dict[str, Any] = Field(default_factory=dict)
    tool_error_rate: float = Field(0.0, ge=0, le=1)
    toolsim_address: str = Field("", description="host:port of the tool simulator; 'embedded' = in-process; '' = from the service config")
    # llm agents
    votes: int = Field(3, ge=1, le=5, description="assistant samples per turn: 2 first, a 3rd when they disagree")
    temperature: float = Field(0.8, ge=0)
    max_tokens: int = Field(256, ge=8)
    max_turn_retries: int = Field(2, ge=0)
    max_steps: int = Field(6, ge=1, description="assistant turns per need")
    # filters / output
    dedup_jaccard: float = Field(0.9, ge=0, le=1,
                                 description="token-set Jaccard at or above which two user queries are duplicates (0 = exact only)")
    part_size: int = Field(25, ge=1)
    date: str = ""

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in NEED_KINDS]
        if bad:
            raise ValueError(f"unknown need kinds {bad}; use {list(NEED_KINDS)}")
        if not any(w > 0 for w in v.values()):
            raise ValueError("mix needs at least one positive weight")
        return v


def parse_config(text: str | dict[str, Any] | None) -> SynthesisConfig:
    if isinstance(text, SynthesisConfig):
        return text
    if not text:
        return SynthesisConfig()
    data = json.loads(text) if isinstance(text, str) else dict(text)
    return SynthesisConfig.model_validate(data)
