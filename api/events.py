"""Server-Sent Events from the task_events table, resumable by event id."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.events import TASK_FINISHED
from core.db import session_scope
from schemas.tables import TaskEvent

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0
BATCH = 500


def format_event(event: TaskEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


async def event_stream(
    sessions: async_sessionmaker[AsyncSession],
    task_id: str,
    after_id: int,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    """Every event after `after_id`, then new ones as they are written, until the task's
    final event or the client leaves. A session is held only while reading a batch."""
    quiet_for = 0.0
    while not await disconnected():
        async with session_scope(sessions) as session:
            batch = list(
                await session.exec(
                    select(TaskEvent)
                    .where(TaskEvent.task_id == task_id, col(TaskEvent.id) > after_id)
                    .order_by(col(TaskEvent.id))
                    .limit(BATCH)
                )
            )
        for event in batch:
            yield format_event(event)
            assert event.id is not None
            after_id = event.id
            if event.type == TASK_FINISHED:
                return
        if batch:
            quiet_for = 0.0
            continue
        if quiet_for >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_for = 0.0
        await asyncio.sleep(POLL_SECONDS)
        quiet_for += POLL_SECONDS
