"""Payload models of `SessionWorkflow` and its activities. Durable contracts: add fields
only with defaults, never rename."""

from pydantic import BaseModel, Field

from schemas.agent_task import StartAgentTaskInput

MESSAGE_MAX_CHARS = 100_000


class SessionMessage(BaseModel):
    """A user's message, sent as the `post_message` update. `task_id` names the task that
    will answer it; the sender picks it, so a retried send is recognised, not queued twice."""

    task_id: str
    text: str = Field(max_length=MESSAGE_MAX_CHARS)
    channel: str = "api"


class QueuedMessage(SessionMessage):
    """A message waiting for its turn; `seq` is its place in the session's transcript."""

    seq: int


class SessionInput(BaseModel):
    """What a session's run starts with; a continued run also carries the queue."""

    session_id: str
    user_id: str
    agent: str = "assistant"
    channel: str = "api"
    idle_timeout_seconds: float = Field(
        default=3600.0, gt=0, description="Close after this long without a message."
    )
    queue: list[QueuedMessage] = Field(default_factory=list)
    turns_per_run: int | None = Field(
        default=None,
        ge=1,
        description="Continue as new after this many turns even if Temporal does not suggest "
        "it yet (None: only when suggested).",
    )


class SessionResult(BaseModel):
    """How a run ended: idle, after answering this many turns."""

    session_id: str
    turns_answered: int


class RecordSessionMessageInput(BaseModel):
    """A message to record in the session's transcript as a queued task."""

    session_id: str
    user_id: str
    agent: str
    message: SessionMessage


def turn_task(
    session_id: str, user_id: str, agent: str, message: SessionMessage
) -> StartAgentTaskInput:
    """The task that answers a session's message."""
    return StartAgentTaskInput(
        task_id=message.task_id,
        user_id=user_id,
        prompt=message.text,
        agent=agent,
        channel=message.channel,
        session_id=session_id,
    )


class RecordedMessage(BaseModel):
    """The message's place in the transcript; `is_new` is False for a message recorded
    before (a retried send), which must not be queued again."""

    seq: int
    is_new: bool


class DropMessageInput(BaseModel):
    """Take this task's message out of the queue (the `drop_message` update)."""

    task_id: str


class QueuedTasks(BaseModel):
    """The tasks of messages still waiting for their turn."""

    task_ids: list[str]


class FoldContextInput(BaseModel):
    """Fold the oldest turns before this task's turn into the session's summary until the
    rest fits the budget. Carries references, not the conversation."""

    task_id: str
    model: str
    context_tokens: int
