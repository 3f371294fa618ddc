"""The notification service: one notification, delivered to each of the user's channels.

Every channel delivers idempotently under the notification's `dedupe_key`, so a retried
activity (or a retried tool call) never notifies twice on any channel."""

import contextlib
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from core.channels import TELEGRAM, linked_addresses
from core.db import session_scope
from schemas.agent_task import NotificationInput
from schemas.tables import Notification, Task, User, new_id, utcnow
from schemas.telegram import TelegramButton, TelegramDelivery
from workflows.telegram_delivery import TelegramDeliveryWorkflow

# Notification kinds, as `kind` in the inbox.
AGENT_MESSAGE = "agent_message"


async def write_notification(session: AsyncSession, note: NotificationInput) -> None:
    """Put the notification in the user's web inbox unless one with its `dedupe_key` is
    there already."""
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
    await session.exec(statement)


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


def telegram_delivery(
    note: NotificationInput, chat_id: int, in_conversation: bool
) -> TelegramDelivery:
    """The notification as a Telegram message: an approval with Approve / Reject buttons,
    a question to reply to, and the answer to a message sent from Telegram as it is."""
    # A title that already says it all (a short reminder) is not repeated.
    text = note.title if note.title.endswith(note.body) else f"{note.title}\n\n{note.body}"
    buttons: list[TelegramButton] = []
    if note.approval_id is not None:
        buttons = [
            TelegramButton(text="Approve", data=f"approve:{note.approval_id}"),
            TelegramButton(text="Reject", data=f"reject:{note.approval_id}"),
        ]
    elif note.question_id is not None:
        text = f"{note.title}: {note.body}\n\n(Reply to this message to answer.)"
    elif in_conversation and note.kind == "task_completed":
        text = note.body
    return TelegramDelivery(
        chat_id=chat_id,
        text=text,
        buttons=buttons,
        task_id=note.task_id,
        approval_id=note.approval_id,
        question_id=note.question_id,
    )


class TelegramChannel:
    """The user's linked Telegram chats. Each message is its own `TelegramDeliveryWorkflow`
    (ID `telegram-<chat id>-<dedupe key>`, never reused), so a retried notification starts
    nothing new, and Telegram trouble never fails the notifying task."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def deliver(self, note: NotificationInput) -> None:
        async with session_scope(self._sessions) as session:
            chats = await linked_addresses(session, note.user_id, TELEGRAM)
            task = await session.get(Task, note.task_id) if note.task_id and chats else None
        in_conversation = task is not None and task.channel == TELEGRAM
        client = activity.client()
        for chat in chats:
            # A retried notification finds this chat's delivery under way or done.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await client.start_workflow(
                    TelegramDeliveryWorkflow.run,
                    telegram_delivery(note, int(chat), in_conversation),
                    id=f"telegram-{chat}-{note.dedupe_key}",
                    task_queue=activity.info().task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    static_summary=f"Telegram: {note.title}",
                )


class NotifyActivities:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], more_channels: Sequence[Channel] = ()
    ) -> None:
        # The web inbox first: it is the record, whatever happens on the other channels.
        self._channels: list[Channel] = [WebInbox(sessions), *more_channels]

    @activity.defn
    async def notify(self, note: NotificationInput) -> None:
        """Deliver the notification on each of the user's channels. A retry after one
        channel failed delivers again everywhere; each channel ignores its duplicates."""
        for channel in self._channels:
            await channel.deliver(note)
