"""Payload models of `AgentTaskWorkflow` and its activities. Durable contracts: add fields
only with defaults, never rename."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class TaskStatus(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_ANSWER = "awaiting_answer"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ToolPolicy(StrEnum):
    AUTO = "auto"
    CONFIRM = "confirm"
    NEVER = "never"


class Usage(BaseModel):
    """Tokens spent, as the Messages API counts them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens
            + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


class StartAgentTaskInput(BaseModel):
    """What starts a task: who asks, what, and within which budgets."""

    task_id: str
    user_id: str
    prompt: str
    agent: str = "assistant"
    channel: str = "api"
    max_steps: int | None = None
    max_tokens: int | None = None


class ToolGrant(BaseModel):
    """A tool this task may ask for, with the policy the workflow enforces."""

    name: str
    policy: ToolPolicy
    timeout_seconds: float
    max_attempts: int


class TaskPlan(BaseModel):
    """The agent configuration a task runs with, resolved once when it begins."""

    model: str
    system: str
    max_steps: int
    max_tokens: int
    max_output_tokens: int
    tools: list[ToolGrant]


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]


class LlmCallInput(BaseModel):
    """One model call. The transcript is read from Postgres, not carried in history."""

    task_id: str
    model: str
    system: str
    tool_names: list[str]
    max_output_tokens: int
    assistant_seq: int


class LlmCallResult(BaseModel):
    stop_reason: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    text: str | None = Field(default=None, description="The reply's text, on a final turn only.")
    usage: Usage = Field(default_factory=Usage)


class ToolCallInput(BaseModel):
    task_id: str
    user_id: str
    call: ToolCall
    result_seq: int


class ToolCallResult(BaseModel):
    is_error: bool
    preview: str = Field(description="The start of the result, for progress views.")


class RecordToolResultInput(BaseModel):
    """A tool result the workflow decided itself (refused, unknown tool, failed)."""

    task_id: str
    tool_use_id: str
    result_seq: int
    text: str
    is_error: bool = True
    tool_name: str = ""
    outcome: str = "refused"


class PlanItem(BaseModel):
    """One step of the agent's plan, as `update_plan` sets it."""

    title: str = Field(min_length=1, max_length=200)
    status: Literal["pending", "in_progress", "done"] = "pending"


class PlanUpdate(BaseModel):
    """Arguments of the `update_plan` tool: the whole plan, replacing the previous one."""

    steps: list[PlanItem] = Field(max_length=30)


class Step(BaseModel):
    """One LLM call or tool call, as progress shows it."""

    kind: Literal["llm", "tool"]
    name: str
    started_at: datetime
    finished_at: datetime | None = None
    duration_ms: int | None = None
    outcome: str = "running"
    arguments: dict[str, Any] | None = None
    detail: str | None = None


class TaskProgress(BaseModel):
    """What the `progress` query answers and what the tasks projection stores at the end."""

    task_id: str
    status: TaskStatus
    phase: str
    steps: list[Step] = Field(default_factory=list)
    plan: list[PlanItem] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    stop_reason: str | None = None
    result_text: str | None = None
    error: str | None = None


class AgentTaskResult(BaseModel):
    task_id: str
    status: TaskStatus
    stop_reason: str | None = None
    text: str | None = None
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
