"""Task events: the ordered progress stream behind GET /v1/tasks/{id}/events. Written by
the activities that do the work, so the workflow's history carries none of it."""

from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db import session_scope
from schemas.tables import TaskEvent

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


async def emit(
    sessions: async_sessionmaker[AsyncSession], task_id: str, event_type: str, **data: Any
) -> None:
    """Write one event in a transaction of its own."""
    async with session_scope(sessions) as session:
        add_event(session, task_id, event_type, **data)
