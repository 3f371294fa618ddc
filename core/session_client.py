"""Talking into a session: the one way the API, the Telegram bot and schedules post a
user's message into a conversation, or start a fresh one."""

from uuid import uuid4

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from core.db import session_scope
from core.settings import Settings
from schemas import search_attributes
from schemas.session import DropMessageInput, SessionInput, SessionMessage
from schemas.tables import ChatSession, SessionTurn, utcnow
from workflows.session import SessionWorkflow

DEFAULT_AGENT = "assistant"


class SessionNotFound(LookupError):
    """No such session for this user (it may belong to someone else)."""


def session_workflow_id(session_id: str) -> str:
    return f"session-{session_id}"


async def owned_session(session: AsyncSession, session_id: str, user_id: str) -> ChatSession:
    """The user's session; another user's is as absent as one that never existed."""
    chat = await session.get(ChatSession, session_id)
    if chat is None or chat.user_id != user_id:
        raise SessionNotFound(session_id)
    return chat


async def _get_or_create(
    db: async_sessionmaker[AsyncSession], session_id: str, user_id: str, channel: str, agent: str
) -> ChatSession:
    async with session_scope(db) as session:
        now = utcnow()
        await session.exec(
            insert(ChatSession)
            .values(
                id=session_id,
                user_id=user_id,
                agent=agent,
                channel=channel,
                summary_through_seq=0,
                new_context_pending=False,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        return await owned_session(session, session_id, user_id)


async def post_message(
    client: Client,
    db: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    session_id: str,
    user_id: str,
    text: str,
    channel: str,
    agent: str | None = None,
    task_id: str | None = None,
) -> str:
    """Post the user's message into the session and return the id of the task that will
    answer it (GET /v1/tasks/{id} shows it at once, `queued` until its turn comes).

    Creates the session's row when it has none, owned by `user_id` and running `agent`
    (default: `assistant`); `agent` is ignored for an existing session. Raises
    SessionNotFound when the session belongs to another user. The session's workflow is
    started if it is not running (first message, or it closed after being idle) in the same
    request that delivers the message, so no message is lost to a closing session. Empty
    or overlong text raises ValueError (pydantic's ValidationError is one) before anything
    is written. A caller that may retry passes its own `task_id`: the same message posted
    twice with it is queued once."""
    if not text.strip():
        raise ValueError("text: the message is empty")
    message = SessionMessage(task_id=task_id or str(uuid4()), text=text, channel=channel)
    chat = await _get_or_create(db, session_id, user_id, channel, agent or DEFAULT_AGENT)
    start = WithStartWorkflowOperation(
        SessionWorkflow.run,
        SessionInput(
            session_id=chat.id,
            user_id=chat.user_id,
            agent=chat.agent,
            channel=chat.channel,
            idle_timeout_seconds=settings.session_idle_seconds,
        ),
        id=session_workflow_id(chat.id),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=settings.task_queue,
        search_attributes=search_attributes.of_work(chat.user_id, chat.channel, chat.agent),
        static_summary=f"session {chat.title or chat.id}",
    )
    answered_by: str = await client.execute_update_with_start_workflow(
        SessionWorkflow.post_message,
        message,
        start_workflow_operation=start,
        id=f"message-{message.task_id}",
    )
    return answered_by


async def drop_waiting_message(client: Client, session: AsyncSession, task_id: str) -> bool:
    """Cancel a session's message that is still waiting for its turn: it is taken out of
    the queue and its task recorded `cancelled`. False when it is not waiting (its turn has
    begun, or it is no session's message): cancel its task's workflow instead."""
    turn = (await session.exec(select(SessionTurn).where(SessionTurn.task_id == task_id))).first()
    if turn is None:
        return False
    handle = client.get_workflow_handle(session_workflow_id(turn.session_id))
    try:
        dropped: bool = await handle.execute_update(
            SessionWorkflow.drop_message, DropMessageInput(task_id=task_id)
        )
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise
        return False
    return dropped


async def start_new_conversation(
    db: async_sessionmaker[AsyncSession], *, session_id: str, user_id: str
) -> None:
    """Start afresh: the session's next message, and every one after it, is answered
    without the turns before it (which stay in the transcript). Raises SessionNotFound for
    another user's session; a session with no row yet has nothing to forget."""
    async with session_scope(db) as session:
        chat = (
            await session.exec(
                select(ChatSession).where(ChatSession.id == session_id).with_for_update()
            )
        ).first()
        if chat is None:
            return
        if chat.user_id != user_id:
            raise SessionNotFound(session_id)
        chat.new_context_pending = True
        chat.updated_at = utcnow()
        session.add(chat)
