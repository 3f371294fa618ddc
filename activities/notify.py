"""The notification service: one notification, delivered to each of the user's channels.

Every channel delivers idempotently under the notification's `dedupe_key`, so a retried
activity (or a retried tool call) never notifies twice on any channel."""

from typing import Protocol

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.db import session_scope
from schemas.agent_task import NotificationInput
from schemas.tables import Notification, User, new_id, utcnow

# Notification kinds, as `kind` in the inbox.
AGENT_MESSAGE = "agent_message"


async def write_notification(session: AsyncSession, note: NotificationInput) -> bool:
    """Put the notification in the user's web inbox unless one with its `dedupe_key` is
    there already. True when this call wrote it."""
    statement = (
        insert(Notification)
        .values(
            id=new_id(),
            user_id=note.user_id,
            dedupe_key=note.dedupe_key,
            kind=note.kind,
            title=note.title,
            body=note.body,
            task_id=note.task_id,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
    result = await session.exec(statement)
    return bool(result.rowcount)


class Channel(Protocol):
    """One way of reaching a user. `deliver` must be idempotent per `dedupe_key`, and a
    no-op for a user who has not linked this channel."""

    async def deliver(self, note: NotificationInput) -> None: ...


class WebInbox:
    """The `notifications` table, read through `GET /v1/notifications`. Every user has it."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def deliver(self, note: NotificationInput) -> None:
        async with session_scope(self._sessions) as session:
            if await session.get(User, note.user_id) is None:
                raise ApplicationError(
                    f"cannot notify user {note.user_id}: no such user",
                    type="UnknownUser",
                    non_retryable=True,
                )
            await write_notification(session, note)


class NotifyActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        # The web inbox first: it is the record, whatever happens on the other channels.
        self._channels: list[Channel] = [WebInbox(sessions)]

    @activity.defn
    async def notify(self, note: NotificationInput) -> None:
        """Deliver the notification on each of the user's channels. A retry after one
        channel failed delivers again everywhere; each channel ignores its duplicates."""
        for channel in self._channels:
            await channel.deliver(note)
