"""REST request and response bodies."""

from datetime import datetime
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


class CreateTaskRequest(BaseModel):
    prompt: str = Field(min_length=1, description="At most KEEL_MAX_PROMPT_CHARS characters.")
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
    user_id: str
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
    user_id: str
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


class ApiKeyView(BaseModel):
    """An API key as its owner sees it: never the secret, only enough to tell keys apart."""

    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class CreateApiKeyRequest(BaseModel):
    name: str = Field(default="", max_length=100, description="A label, e.g. `laptop`.")


class ApiKeyCreated(ApiKeyView):
    key: str = Field(description="The secret: shown this once, stored only as a hash.")


class ApiKeyRevoked(ApiKeyView):
    revoked_current_key: bool = Field(
        description="True when the request itself used this key: it gets 401 from now on."
    )
    detail: str


class CodecPayload(BaseModel):
    """A Temporal payload in protobuf JSON: base64 metadata values and data."""

    metadata: dict[str, str] = Field(default_factory=dict)
    data: str = ""


class CodecPayloads(BaseModel):
    payloads: list[CodecPayload]
