"""Sessions: conversations whose messages are answered in order, each by a task that sees
the earlier turns. Another user's session answers 404 on every route."""

from fastapi import APIRouter, Query, status
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.deps import (
    Agents,
    AppSettings,
    CurrentUser,
    DbSession,
    DbSessions,
    Metrics,
    TemporalClient,
    require_agent,
)
from api.limits import ensure_prompt_size, ensure_task_quota
from api.observability import ApiMetrics
from api.paging import newest_first
from core.session_client import owned_session, post_message
from core.settings import Settings
from schemas.agent_task import TaskStatus
from schemas.api import (
    CreateSessionRequest,
    MessagePosted,
    PostMessageRequest,
    SessionPage,
    SessionView,
    TurnPage,
    TurnState,
    TurnView,
)
from schemas.tables import ChatSession, SessionTurn, Task, User

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

API_CHANNEL = "api"

TURN_STATES: dict[TaskStatus, TurnState] = {
    TaskStatus.QUEUED: "queued",
    TaskStatus.RUNNING: "running",
    TaskStatus.AWAITING_APPROVAL: "running",
    TaskStatus.AWAITING_ANSWER: "running",
    TaskStatus.COMPLETED: "answered",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}


def _view(chat: ChatSession) -> SessionView:
    return SessionView(
        id=chat.id,
        agent=chat.agent,
        channel=chat.channel,
        title=chat.title,
        summary=chat.summary,
        summary_through_turn=chat.summary_through_seq if chat.summary else 0,
        created_at=chat.created_at,
        updated_at=chat.updated_at,
    )


def _turn_view(turn: SessionTurn, task: Task) -> TurnView:
    status_ = TaskStatus(task.status)
    return TurnView(
        turn=turn.seq,
        task_id=task.id,
        state=TURN_STATES[status_],
        task_status=status_,
        text=task.prompt,
        answer=task.result_text,
        error=task.error,
        fresh_context=turn.fresh_context,
        created_at=turn.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionView)
async def create_session(
    body: CreateSessionRequest, user: CurrentUser, session: DbSession, agents: Agents
) -> SessionView:
    """Start a conversation; post messages to it with POST /v1/sessions/{id}/messages."""
    require_agent(agents, body.agent)
    chat = ChatSession(user_id=user.id, agent=body.agent, channel=API_CHANNEL, title=body.title)
    session.add(chat)
    await session.commit()
    return _view(chat)


@router.get("", response_model=SessionPage)
async def list_sessions(
    user: CurrentUser,
    session: DbSession,
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, description="`next_cursor` of the previous page"),
) -> SessionPage:
    """The caller's sessions, newest first."""
    page, next_cursor = await newest_first(
        session,
        select(ChatSession).where(ChatSession.user_id == user.id),
        col(ChatSession.created_at),
        col(ChatSession.id),
        cursor,
        limit,
    )
    return SessionPage(items=[_view(chat) for chat in page], next_cursor=next_cursor)


@router.get("/{session_id}", response_model=SessionView)
async def get_session(session_id: str, user: CurrentUser, session: DbSession) -> SessionView:
    """A session: its agent, title and the running summary of its older turns."""
    return _view(await owned_session(session, session_id, user.id))


@router.post(
    "/{session_id}/messages", status_code=status.HTTP_202_ACCEPTED, response_model=MessagePosted
)
async def post_session_message(
    session_id: str,
    body: PostMessageRequest,
    user: CurrentUser,
    session: DbSession,
    sessions: DbSessions,
    client: TemporalClient,
    settings: AppSettings,
    metrics: Metrics,
) -> MessagePosted:
    """Post a message; it is answered after the ones before it, by the task whose id this
    returns (follow it with GET /v1/tasks/{id})."""
    task_id = await post_within_limits(
        session, sessions, client, settings, metrics, user, session_id, body.text, "text"
    )
    return MessagePosted(task_id=task_id)


async def post_within_limits(
    session: AsyncSession,
    sessions: async_sessionmaker[AsyncSession],
    client: Client,
    settings: Settings,
    metrics: ApiMetrics,
    user: User,
    session_id: str,
    text: str,
    field: str,
) -> str:
    """Post the user's message into their session, within the prompt size and unfinished
    task limits (422 naming `field`, 429); another user's session answers 404. The task
    that will answer it counts as started."""
    ensure_prompt_size(settings, text, field)
    agent = (await owned_session(session, session_id, user.id)).agent
    await ensure_task_quota(session, settings, user)
    # Release the user's row before posting: the session's workflow writes the task row,
    # and would wait for that lock while this request waits for it.
    await session.commit()
    task_id = await post_message(
        client,
        sessions,
        settings,
        session_id=session_id,
        user_id=user.id,
        text=text,
        channel=API_CHANNEL,
    )
    metrics.tasks_started.labels(agent).inc()
    return task_id


@router.get("/{session_id}/messages", response_model=TurnPage)
async def list_session_messages(
    session_id: str,
    user: CurrentUser,
    session: DbSession,
    after: int = Query(default=0, ge=0, description="`next_after` of the previous page"),
    limit: int = Query(default=100, ge=1, le=500),
) -> TurnPage:
    """The transcript, oldest first: each message, the task answering it, its state
    (`queued`, `running`, `answered`, `failed`, `cancelled`) and its answer."""
    await owned_session(session, session_id, user.id)
    rows = list(
        await session.exec(
            select(SessionTurn, Task)
            .join(Task, col(Task.id) == col(SessionTurn.task_id))
            .where(SessionTurn.session_id == session_id, SessionTurn.seq > after)
            .order_by(col(SessionTurn.seq))
            .limit(limit + 1)
        )
    )
    page = [_turn_view(turn, task) for turn, task in rows[:limit]]
    return TurnPage(items=page, next_after=page[-1].turn if len(rows) > limit else None)
