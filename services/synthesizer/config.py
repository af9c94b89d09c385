"""Synthesis configuration (``SynthesizeRequest.config_json``). camelCase (manifest) or snake_case keys."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

NEED_KINDS = ("single", "parallel", "sequential", "clarification", "no_tool")


def _alias(snake: str, camel: str) -> Any:
    return Field(validation_alias=AliasChoices(snake, camel))


class SynthesisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    agents: Literal["programmatic", "llm"] = "programmatic"
    tools_per_dialog: int = Field(3, ge=1, validation_alias=AliasChoices("tools_per_dialog", "toolsPerSample", "toolsPerDialog"))
    max_needs: int = Field(2, ge=1, le=8, validation_alias=AliasChoices("max_needs", "maxNeeds"))
    mix: dict[str, float] = Field(
        default_factory=lambda: {"single": 0.35, "parallel": 0.2, "sequential": 0.2, "clarification": 0.15, "no_tool": 0.1}
    )
    include_optional: float = Field(0.5, ge=0, le=1, validation_alias=AliasChoices("include_optional", "includeOptional"))
    styles: list[str] = Field(default_factory=lambda: ["terse", "polite", "verbose", "casual"])
    # tool agent (the simulator service)
    tool_mode: str = Field("auto", validation_alias=AliasChoices("tool_mode", "toolMode"))
    environment: str = ""
    initial_state: dict[str, Any] = Field(default_factory=dict, validation_alias=AliasChoices("initial_state", "initialState"))
    tool_error_rate: float = Field(0.0, ge=0, le=1, validation_alias=AliasChoices("tool_error_rate", "toolErrorRate"))
    toolsim_address: str = Field("", validation_alias=AliasChoices("toolsim_address", "toolsimAddress"),
                                 description="host:port of the tool simulator; 'embedded' = in-process; '' = from the service config")
    # llm agents
    votes: int = Field(3, ge=1, le=5, description="assistant samples per turn: 2 first, a 3rd when they disagree")
    temperature: float = Field(0.8, ge=0)
    max_tokens: int = Field(256, ge=8, validation_alias=AliasChoices("max_tokens", "maxTokens"))
    max_turn_retries: int = Field(2, ge=0, validation_alias=AliasChoices("max_turn_retries", "maxTurnRetries"))
    max_steps: int = Field(6, ge=1, validation_alias=AliasChoices("max_steps", "maxSteps"), description="assistant turns per need")
    # filters / output
    dedup_jaccard: float = Field(0.9, ge=0, le=1, validation_alias=AliasChoices("dedup_jaccard", "dedupJaccard"),
                                 description="token-set Jaccard at or above which two user queries are duplicates (0 = exact only)")
    part_size: int = Field(25, ge=1, validation_alias=AliasChoices("part_size", "partSize"))
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
    import json

    if isinstance(text, SynthesisConfig):
        return text
    if not text:
        return SynthesisConfig()
    data = json.loads(text) if isinstance(text, str) else dict(text)
    return SynthesisConfig.model_validate(data)
