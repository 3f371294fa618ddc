"""REST request and response bodies."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from schemas.agent_task import PlanItem, Step, TaskStatus, ToolPolicy, Usage

PROMPT_MAX_CHARS = 100_000


class CreateTaskRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    agent: str = "assistant"
    max_steps: int | None = Field(default=None, ge=1, le=200)
    max_tokens: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def prompt_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt must contain some text")
        return prompt


class TaskCreated(BaseModel):
    id: str
    status: TaskStatus


class TaskResultBody(BaseModel):
    text: str | None


class TaskView(BaseModel):
    id: str
    status: TaskStatus
    phase: str
    agent: str
    channel: str
    prompt: str
    created_at: datetime
    steps: list[Step]
    plan: list[PlanItem]
    usage: Usage
    stop_reason: str | None
    result: TaskResultBody | None
    error: str | None


class TaskPage(BaseModel):
    items: list[TaskView]
    next_cursor: str | None


class TaskCancelled(BaseModel):
    id: str
    status: str = Field(description="`cancelling` until the task has stopped.")


class ToolView(BaseModel):
    name: str
    description: str
    policy: ToolPolicy
    timeout_seconds: float
    input_schema: dict[str, Any]


class AgentView(BaseModel):
    name: str
    description: str
    model: str
    tools: list[str]
    max_steps: int
    max_tokens: int
