"""Task events: the ordered progress stream behind GET /v1/tasks/{id}/events. Written by
the activities that do the work, so the workflow's history carries none of it."""

from typing import Any

from sqlalchemy import Insert, insert, literal, select
from sqlalchemy.dialects.postgresql import JSONB
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


def add_event(session: AsyncSession, task_id: str, event_type: str, **data: Any) -> None:
    """Queue an event in this session; it is written when the session commits."""
    session.add(TaskEvent(task_id=task_id, type=event_type, data=data))


def insert_event(task_id: str, event_type: str, **data: Any) -> Insert:
    """The statement writing one event."""
    return insert(TaskEvent).values(
        task_id=task_id, type=event_type, data=data, created_at=utcnow()
    )


def insert_event_for_each(rows: CTE, event_type: str, **data: Any) -> Insert:
    """The statement writing one event for each row `rows` yields (it has a `task_id`
    column): none when a statement before it found nothing to do."""
    return insert(TaskEvent).from_select(
        ["task_id", "type", "data", "created_at"],
        select(
            rows.c.task_id,
            literal(event_type),
            literal(data, type_=JSONB),
            literal(utcnow()),
        ),
    )
