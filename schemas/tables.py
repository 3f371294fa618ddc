"""Keel's Postgres tables. Never Temporal payloads: pass IDs or plain models instead."""

from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import uuid4

from sqlalchemy import BigInteger, Column, DateTime, Index, RowMapping, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid4())


Table = TypeVar("Table", bound=SQLModel)


def from_row(table: type[Table], row: RowMapping) -> Table:
    """A table model from a Core result row's mapping holding (at least) all its columns."""
    columns = table.__table__.columns  # type: ignore[attr-defined]
    return table(**{column.name: row[column.name] for column in columns})


def _timestamp() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    timezone: str = "UTC"
    instructions: str = Field(
        default="", sa_column_kwargs={"server_default": ""}, description="Standing instructions."
    )
    is_admin: bool = False
    created_at: datetime = _timestamp()


class ApiKey(SQLModel, table=True):
    """An API key, stored as its SHA-256 hash; `prefix` lets a person tell keys apart."""

    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    key_hash: str = Field(unique=True)
    prefix: str
    created_at: datetime = _timestamp()
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    name: str = Field(default="", sa_column_kwargs={"server_default": ""})
    last_used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # The rate limit's sliding window: requests admitted in the current minute and the one
    # before it (see core/api_keys.py).
    rate_window_start: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    rate_window_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    rate_previous_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Task(SQLModel, table=True):
    """The projection of one agent task: what happened, kept after Temporal's retention."""

    __tablename__ = "tasks"

    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    agent: str
    channel: str
    prompt: str
    status: str = Field(index=True)
    stop_reason: str | None = None
    result_text: str | None = None
    error: str | None = None
    usage: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    steps: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False)
    )
    plan: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]")
    )
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    start_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class Message(SQLModel, table=True):
    """One transcript entry of a task, in Anthropic content-block form. Written once per
    (task, seq): a retried activity finds its row and does not write or call again."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("task_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(foreign_key="tasks.id", index=True)
    seq: int
    role: str
    content: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    stop_reason: str | None = None
    usage: dict[str, int] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    created_at: datetime = _timestamp()


class Note(SQLModel, table=True):
    """A note in a user's virtual file system, addressed by path."""

    __tablename__ = "notes"
    __table_args__ = (UniqueConstraint("user_id", "path"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    path: str
    content: str
    updated_at: datetime = _timestamp()


class TaskEvent(SQLModel, table=True):
    """One event of a task's progress stream; `id` orders events and is the SSE event id."""

    __tablename__ = "task_events"

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(foreign_key="tasks.id", index=True)
    type: str
    data: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _timestamp()


class Memory(SQLModel, table=True):
    """A fact the user's agent remembers across tasks."""

    __tablename__ = "memories"

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    content: str
    created_at: datetime = _timestamp()


class Approval(SQLModel, table=True):
    """The audit record of one approval: requested by a task, decided by a person or expired."""

    __tablename__ = "approvals"

    id: str = Field(primary_key=True)
    task_id: str = Field(foreign_key="tasks.id", index=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    tool: str
    tool_use_id: str
    arguments: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    arguments_sha256: str
    status: str = Field(index=True)
    channel: str
    requested_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    decided_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    decided_by: str | None = None
    reason: str | None = None


class Notification(SQLModel, table=True):
    """A message for the user's web inbox (and, once linked, their other channels)."""

    __tablename__ = "notifications"

    id: str = Field(default_factory=new_id, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    dedupe_key: str = Field(unique=True)
    kind: str
    title: str
    body: str
    task_id: str | None = Field(default=None, index=True)
    created_at: datetime = _timestamp()
    read_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class ToolPreference(SQLModel, table=True):
    """A user's own policy for one tool: `always_allow` (no approval) or `always_ask`."""

    __tablename__ = "tool_preferences"
    __table_args__ = (UniqueConstraint("user_id", "tool"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    tool: str
    preference: str
    updated_at: datetime = _timestamp()


class Schedule(SQLModel, table=True):
    """A user's schedule as they defined it, for ownership and listing. Temporal's schedule
    (ID `schedule-<user id>-<id>`) is the truth about its state and next runs."""

    __tablename__ = "schedules"

    id: str = Field(default_factory=new_id, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    name: str
    prompt: str
    agent: str
    cron: str | None = None
    every: str | None = None
    timezone: str
    session_id: str | None = Field(default=None, foreign_key="sessions.id")
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class ChatSession(SQLModel, table=True):
    """One conversation (web or Telegram): its owner, its agent, and the running summary of
    the turns too old to give Claude verbatim."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_user_id_created_at", "user_id", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    user_id: str = Field(foreign_key="users.id")
    agent: str
    channel: str
    title: str | None = None
    summary: str | None = None
    summary_from_seq: int | None = Field(
        default=None, description="The first turn of the conversation the summary belongs to."
    )
    summary_through_seq: int = Field(default=0, description="The summary covers turns up to it.")
    new_context_pending: bool = Field(
        default=False, description="The next message starts a fresh conversation."
    )
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class AuditLog(SQLModel, table=True):
    """Who changed what, when: one row per change to a user's resources."""

    __tablename__ = "audit_logs"

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    action: str
    resource_type: str
    resource_id: str = Field(index=True)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _timestamp()


class SessionTurn(SQLModel, table=True):
    """One user message of a session, in arrival order, and the task that answers it: the
    task's prompt, status and result are the turn's text, state and answer."""

    __tablename__ = "session_turns"
    __table_args__ = (UniqueConstraint("session_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="sessions.id")
    seq: int
    task_id: str = Field(foreign_key="tasks.id", unique=True)
    fresh_context: bool = Field(
        default=False, description="Claude sees no turn before this one (a fresh conversation)."
    )
    created_at: datetime = _timestamp()


class RequestLog(SQLModel, table=True):
    """One API request: who made it (when authenticated), the route template, how it
    ended and how long it took. Written in batches by the API, off the request path."""

    __tablename__ = "request_logs"
    __table_args__ = (Index("ix_request_logs_user_id_created_at", "user_id", "created_at"),)

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True),
    )
    request_id: str
    user_id: str | None = None
    method: str
    route: str | None = Field(default=None, description="The route template; null if none matched.")
    status: int
    latency_ms: float


class UserChannel(SQLModel, table=True):
    """A channel a user has linked, e.g. a Telegram chat (`address` is the chat id).
    `sender` is who linked it there: only they may decide approvals in that chat."""

    __tablename__ = "user_channels"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    channel: str
    address: str
    sender: str
    created_at: datetime = _timestamp()


class ChannelLinkCode(SQLModel, table=True):
    """A one-time code that links a channel to its user, stored as its SHA-256 hash."""

    __tablename__ = "channel_link_codes"

    code_hash: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    channel: str
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class TelegramUpdate(SQLModel, table=True):
    """An update the bot has taken, so a redelivered `update_id` is handled once."""

    __tablename__ = "telegram_updates"

    update_id: int = Field(primary_key=True, sa_type=BigInteger)
    received_at: datetime = _timestamp()


class TelegramMessage(SQLModel, table=True):
    """A message the bot sent, keyed by what sent it (workflow ID + part), so a retried
    activity never posts twice; it also tells which approval or question a message is."""

    __tablename__ = "telegram_messages"

    key: str = Field(primary_key=True)
    chat_id: int = Field(index=True, sa_type=BigInteger)
    message_id: int
    task_id: str | None = None
    approval_id: str | None = None
    question_id: str | None = None
    sent_at: datetime = _timestamp()
