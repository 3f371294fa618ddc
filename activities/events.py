"""Task events: the ordered progress stream behind GET /v1/tasks/{id}/events. Written by
the activities that do the work, so the workflow's history carries none of it."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, Insert, String, bindparam, insert, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import CTE
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.tables import TaskEvent, utcnow

# Event types, as clients see them in the stream.
TASK_STARTED = "task_started"
LLM_STARTED = "llm_started"
TEXT_DELTA = "text_delta"
LLM_FINISHED = "llm_finished"
TOOL_STARTED = "tool_started"
TOOL_FINISHED = "tool_finished"
APPROVAL_REQUESTED = "approval_requested"
APPROVAL_DECIDED = "approval_decided"
QUESTION_ASKED = "question_asked"
QUESTION_SETTLED = "question_settled"
TASK_FINISHED = "task_finished"


@dataclass(frozen=True)
class Event:
    """An event to write along with the statement of `for_each`."""

    type: str
    data: dict[str, Any]

    def params(self) -> dict[str, Any]:
        return {"event_type": self.type, "event_data": self.data, "event_at": utcnow()}


def event(event_type: str, **data: Any) -> Event:
    return Event(event_type, data)


def add_event(session: AsyncSession, task_id: str, event_type: str, **data: Any) -> None:
    """Queue an event in this session; it is written when the session commits."""
    session.add(TaskEvent(task_id=task_id, type=event_type, data=data))


async def emit(connection: AsyncConnection, task_id: str, event_type: str, **data: Any) -> None:
    """Write one event."""
    await connection.execute(
        insert(TaskEvent),
        {"task_id": task_id, "type": event_type, "data": data, "created_at": utcnow()},
    )


def for_each(rows: CTE) -> Insert:
    """A statement writing an `Event` (given by its `params`) once for each row of `rows`
    (a CTE with a `task_id` column): none when it found nothing to do. Statements are built
    once: building one costs more than running it."""
    return insert(TaskEvent).from_select(
        ["task_id", "type", "data", "created_at"],
        select(
            rows.c.task_id,
            bindparam("event_type", type_=String),
            bindparam("event_data", type_=JSONB),
            bindparam("event_at", type_=DateTime(timezone=True)),
        ),
    )
