"""REST request and response bodies."""

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from schemas.agent_task import (
    ApprovalStatus,
    ApprovalView,
    PlanItem,
    QuestionView,
    Step,
    TaskStatus,
    ToolPolicy,
    Usage,
)
from schemas.tool_preferences import ToolPreferenceValue

PROMPT_MAX_CHARS = 100_000


class CreateTaskRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    agent: str = "assistant"
    max_steps: int | None = Field(default=None, ge=1, le=200)
    max_tokens: int | None = Field(default=None, ge=1)
    notify: bool = Field(default=False, description="Notify me (inbox) when the task ends.")

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
    pending_approvals: list[ApprovalView]
    pending_question: QuestionView | None
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


class ToolPreferenceRequest(BaseModel):
    preference: ToolPreferenceValue = Field(
        description="`always_allow`: no approval needed; `always_ask`: approve every call."
    )


class ToolPreferenceView(BaseModel):
    tool: str
    preference: ToolPreferenceValue
    updated_at: datetime


class ApprovalEntry(BaseModel):
    """One approval from the audit table, as the caller's approvals list shows it."""

    id: str
    task_id: str
    tool: str
    arguments: dict[str, Any]
    status: ApprovalStatus = Field(
        description="`expired` as soon as `expires_at` has passed, even before the task records it."
    )
    channel: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None


class ApprovalPage(BaseModel):
    items: list[ApprovalEntry]
    next_cursor: str | None


class DecisionRequest(BaseModel):
    decision: Literal["approve", "reject"]
    reason: str | None = Field(default=None, max_length=2000)


class AnswerRequest(BaseModel):
    question_id: str
    text: str = Field(min_length=1, max_length=20_000)


class NotificationView(BaseModel):
    id: str
    kind: str = Field(description="What it is about, e.g. `agent_message`.")
    title: str
    body: str
    task_id: str | None = Field(description="The task it came from, if any.")
    created_at: datetime
    read_at: datetime | None = Field(description="When it was first marked read; null if unread.")


class NotificationPage(BaseModel):
    items: list[NotificationView]
    next_cursor: str | None


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    postgres: str = Field(description="`ok`, or `down: ` and why.")
    temporal: str = Field(description="`ok`, or `down: ` and why.")


class ToolCallStats(BaseModel):
    tool: str
    calls: int = Field(description="Tool calls Claude asked for, whatever became of them.")
    succeeded: int = Field(description="Calls that ran and returned a result (`ok`, `answered`).")
    success_rate: float
    mean_latency_ms: float | None = Field(
        description="From the tool's start to its result, over the calls that ran."
    )
    outcomes: dict[str, int] = Field(
        description="Calls by outcome: `ok`, `error`, `failed`, `refused`, `rejected`, `expired`..."
    )


class TokensOnDay(BaseModel):
    day: date
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class RouteStats(BaseModel):
    method: str
    route: str | None = Field(description="The route template; null for paths no route matched.")
    requests: int
    client_errors: int = Field(description="Answered 4xx.")
    server_errors: int = Field(description="Answered 5xx.")
    mean_latency_ms: float


class Analytics(BaseModel):
    scope: Literal["user", "all_users"]
    days: int
    since: datetime = Field(description="Start of the window: midnight UTC, `days` days back.")
    tasks_by_status: dict[str, int] = Field(description="Tasks created in the window.")
    tool_calls: list[ToolCallStats]
    tokens_by_day: list[TokensOnDay] = Field(description="Every day of the window, oldest first.")
    requests: list[RouteStats] = Field(description="API requests from the request log.")
