"""Agent profiles: configuration, loaded from a TOML file."""

from pydantic import BaseModel, Field


class AgentProfile(BaseModel):
    name: str
    description: str = ""
    model: str | None = Field(default=None, description="Unset means KEEL_DEFAULT_MODEL.")
    system_prompt: str
    tools: list[str]
    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    context_tokens: int | None = Field(
        default=None,
        ge=256,
        description="Token budget of a session's transcript per Claude call; unset means "
        "KEEL_DEFAULT_CONTEXT_TOKENS.",
    )
