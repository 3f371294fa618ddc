"""Schedules and reminders: the payloads of `ScheduledRunWorkflow` and `ReminderWorkflow`
(durable contracts: add fields only with defaults, never rename) and the REST bodies of
/v1/schedules."""

import re
from datetime import datetime, timedelta
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator

from schemas.agent_task import TaskStatus
from schemas.api import Text

MIN_INTERVAL = timedelta(minutes=1)
_EVERY = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
NAME_MAX_CHARS = 200
CRON_MAX_CHARS = 200


class ScheduledRunInput(BaseModel):
    """One firing of a schedule: the agent task it starts, for whom."""

    schedule_id: str
    user_id: str
    prompt: str
    agent: str = "assistant"
    session_id: str | None = Field(
        default=None, description="Post the prompt into this session instead of a new task."
    )


class PostToSessionInput(BaseModel):
    """A scheduled message for a session: `task_id` is chosen by the caller, so a retried
    post is queued once."""

    session_id: str
    user_id: str
    text: str
    task_id: str
    channel: str


class ScheduledRunResult(BaseModel):
    task_id: str
    status: TaskStatus


class ReminderInput(BaseModel):
    """A one-off reminder: at `remind_at`, `text` arrives in the user's notifications."""

    user_id: str
    remind_at: datetime
    text: str
    task_id: str | None = Field(default=None, description="The task that set it, if any.")


def parse_every(every: str) -> timedelta:
    """`every` as a duration: `90s`, `15m`, `1h30m`, `2d`; at least a minute."""
    match = _EVERY.fullmatch(every.strip())
    if match is None or not any(match.groups()):
        raise ValueError(f"{every!r} is not an interval like 90s, 15m, 1h30m or 2d")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if interval < MIN_INTERVAL:
        raise ValueError(f"{every!r} is shorter than the shortest interval, one minute")
    return interval


def check_timezone(name: str) -> str:
    """An IANA timezone name (e.g. `Europe/Berlin`), or ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}; use an IANA name like Europe/Berlin"
        ) from None
    return name


class _Timing(BaseModel):
    """When a schedule fires; Temporal checks the cron expression itself."""

    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=CRON_MAX_CHARS,
        description="A cron expression, e.g. `0 9 * * 1-5` (09:00 on weekdays), or `@daily`.",
    )
    every: str | None = Field(
        default=None, description="An interval instead of cron: `15m`, `1h30m`, `2d` (≥ 1 minute)."
    )
    timezone: str | None = Field(
        default=None, description="IANA timezone of the cron expression; default: yours."
    )

    @field_validator("every")
    @classmethod
    def every_is_an_interval(cls, every: str | None) -> str | None:
        if every is not None:
            parse_every(every)
        return every

    @field_validator("timezone")
    @classmethod
    def timezone_exists(cls, timezone: str | None) -> str | None:
        return None if timezone is None else check_timezone(timezone)

    @model_validator(mode="after")
    def not_both(self) -> Self:
        if self.cron is not None and self.every is not None:
            raise ValueError("cron, every: give one of them, not both")
        return self


class CreateScheduleRequest(_Timing):
    name: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    prompt: Text
    agent: str = "assistant"
    paused: bool = Field(default=False, description="Create it paused.")
    session_id: str | None = Field(
        default=None,
        description="Post the prompt into this session of yours at each firing (the session's "
        "agent answers, with its context) instead of starting a task of its own.",
    )

    @model_validator(mode="after")
    def one_of_them(self) -> Self:
        if self.cron is None and self.every is None:
            raise ValueError("cron, every: give one of them (e.g. cron `0 9 * * *` or every `1h`)")
        if self.session_id is not None and "agent" in self.model_fields_set:
            raise ValueError("agent: not with session_id; the session's agent answers")
        return self


class UpdateScheduleRequest(_Timing):
    """Only the fields given change; setting `cron` replaces `every` and the reverse."""

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX_CHARS)
    prompt: Text | None = None
    agent: str | None = None
    paused: bool | None = None


class ScheduleView(BaseModel):
    id: str
    name: str
    prompt: str
    agent: str
    cron: str | None
    every: str | None
    timezone: str
    session_id: str | None = Field(default=None, description="The session it posts into.")
    paused: bool
    next_runs: list[datetime] = Field(description="The next few firings, in `timezone`.")
    runs: int = Field(description="How many times it has fired.")
    skipped_runs: int = Field(description="Firings skipped because the previous run was going.")
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SchedulePage(BaseModel):
    items: list[ScheduleView]
    next_cursor: str | None
