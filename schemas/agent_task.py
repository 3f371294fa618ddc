"""Payload models of `AgentTaskWorkflow` and its activities. Durable contracts: add fields
only with defaults, never rename."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class TaskStatus(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
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
    notify: bool = Field(
        default=False, description="Notify the user when it ends, even if started interactively."
    )
    start_at: datetime | None = Field(
        default=None, description="Wait durably until then before the first step."
    )
    session_id: str | None = Field(
        default=None, description="The session this task answers a message of, if any."
    )


DEFAULT_APPROVAL_TIMEOUT_SECONDS = 24 * 3600.0


class ToolGrant(BaseModel):
    """A tool this task may ask for, with the policy the workflow enforces (the tool's
    own, adjusted by the user's preferences when the task began)."""

    name: str
    policy: ToolPolicy
    timeout_seconds: float
    max_attempts: int
    approval_timeout_seconds: float = DEFAULT_APPROVAL_TIMEOUT_SECONDS
    local: bool = Field(
        default=False, description="Run as a local activity (quick, database-only tools)."
    )


class TaskPlan(BaseModel):
    """The agent configuration a task runs with, resolved once when it begins."""

    model: str
    system: str
    max_steps: int
    max_tokens: int
    max_output_tokens: int
    tools: list[ToolGrant]
    context_tokens: int | None = Field(
        default=None, description="Token budget of the session context Claude sees."
    )


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
    context_tokens: int | None = Field(
        default=None, description="Bounds what Claude sees of the task's session, if any."
    )


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


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    # Recorded by the store only: the task ended (cancelled, failed) while still waiting.
    CANCELLED = "cancelled"


class ApprovalView(BaseModel):
    """A confirm-tier tool call waiting for (or past) a person's decision."""

    id: str
    tool: str
    tool_use_id: str
    arguments: dict[str, Any]
    requested_at: datetime
    expires_at: datetime
    status: ApprovalStatus = ApprovalStatus.PENDING
    decided_at: datetime | None = None
    decided_by: str | None = None
    decided_via: str | None = Field(default=None, description="The channel of the decision.")
    reason: str | None = None


class DecideApprovalInput(BaseModel):
    """A person's decision, sent as the `decide_approval` update."""

    approval_id: str
    decision: Literal["approve", "reject"]
    reason: str | None = Field(default=None, max_length=2000)
    decided_by: str
    channel: str = "api"


class ApprovalRecord(BaseModel):
    """An approval as the audit table keeps it, written when requested and when decided."""

    task_id: str
    user_id: str
    channel: str
    approval: ApprovalView


class QuestionStatus(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    EXPIRED = "expired"


class QuestionView(BaseModel):
    """A question the agent asked the user with `ask_user`."""

    id: str
    text: str
    asked_at: datetime
    expires_at: datetime
    status: QuestionStatus = QuestionStatus.PENDING
    answer: str | None = None


class QuestionRecord(BaseModel):
    """A question asked or settled, for the task's event stream."""

    task_id: str
    question: QuestionView


class AnswerQuestionInput(BaseModel):
    """The user's answer, sent as the `answer_question` update."""

    question_id: str
    text: str = Field(min_length=1, max_length=20_000)


class NotificationInput(BaseModel):
    """One notification for a user; `dedupe_key` makes a retried send a no-op."""

    user_id: str
    kind: str
    title: str
    body: str
    task_id: str | None = None
    dedupe_key: str
    approval_id: str | None = Field(default=None, description="The approval it asks for.")
    question_id: str | None = Field(default=None, description="The question it asks.")


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
    pending_approvals: list[ApprovalView] = Field(default_factory=list)
    pending_question: QuestionView | None = None


class AgentTaskResult(BaseModel):
    task_id: str
    status: TaskStatus
    stop_reason: str | None = None
    text: str | None = None
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
