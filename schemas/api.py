"""REST request and response bodies."""

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, field_validator

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


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain some text, not only spaces")
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return text


# A prompt or message: some text (the API caps its length at KEEL_MAX_PROMPT_CHARS).
Text = Annotated[
    str,
    Field(min_length=1, description="At most KEEL_MAX_PROMPT_CHARS characters."),
    AfterValidator(_not_blank),
]


class CreateTaskRequest(BaseModel):
    prompt: Text
    agent: str = "assistant"
    max_steps: int | None = Field(default=None, ge=1, le=200)
    max_tokens: int | None = Field(default=None, ge=1)
    notify: bool = Field(default=False, description="Notify me (inbox) when the task ends.")
    start_at: AwareDatetime | None = Field(
        default=None,
        description="Start then rather than now: a future time with its UTC offset, e.g. "
        "`2026-12-01T09:00:00+01:00`. Until then the task is `scheduled`.",
    )
    priority: int | None = Field(
        default=None, ge=1, le=5, description="1 (highest) to 5 (lowest); unset: 3."
    )

    @field_validator("start_at")
    @classmethod
    def start_at_in_future(cls, start_at: datetime | None) -> datetime | None:
        if start_at is not None and start_at <= datetime.now(UTC):
            raise ValueError("start_at must be in the future")
        return start_at

    session_id: str | None = Field(
        default=None,
        description="Post the prompt into this session of yours: its agent and earlier turns "
        "apply, and its turns run one at a time.",
    )


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
    start_at: datetime | None = Field(description="When a `scheduled` task starts.")
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
    context_tokens: int


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


class CreateSessionRequest(BaseModel):
    agent: str = "assistant"
    title: str | None = Field(default=None, max_length=200)


class SessionView(BaseModel):
    id: str
    agent: str
    channel: str
    title: str | None = Field(description="Given at creation, else the start of the first message.")
    summary: str | None = Field(
        description="The running summary of the turns too old to give Claude verbatim."
    )
    summary_through_turn: int = Field(description="The summary covers the turns up to this one.")
    created_at: datetime
    updated_at: datetime


class SessionPage(BaseModel):
    items: list[SessionView]
    next_cursor: str | None


class PostMessageRequest(BaseModel):
    text: Text


class MessagePosted(BaseModel):
    task_id: str = Field(description="The task that will answer the message.")


TurnState = Literal["queued", "running", "answered", "failed", "cancelled"]


class TurnView(BaseModel):
    """One message of a session and its answer."""

    turn: int = Field(description="Its place in the session, from 1.")
    task_id: str
    state: TurnState
    task_status: TaskStatus = Field(description="The answering task's own status.")
    text: str = Field(description="The user's message.")
    answer: str | None = Field(description="The answer, once there is one.")
    error: str | None
    fresh_context: bool = Field(description="Claude saw no turn before this one.")
    created_at: datetime


class TurnPage(BaseModel):
    items: list[TurnView]
    next_after: int | None = Field(description="Pass as `after` for the next page.")


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


class TelegramLinkCode(BaseModel):
    """A one-time code linking a Telegram chat to the caller: `/link <code>` in the chat."""

    code: str
    expires_at: datetime
