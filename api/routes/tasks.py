"""Agent tasks: start one, follow it, list them."""

from collections.abc import Awaitable
from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import Priority
from temporalio.service import RPCError

from api.deps import (
    Agents,
    AppSettings,
    CurrentUser,
    DbSession,
    DbSessions,
    Metrics,
    ServiceUnavailable,
    TemporalClient,
    admin_scope,
    require_agent,
)
from api.events import event_stream
from api.limits import ensure_prompt_size, ensure_task_quota
from api.observability import ApiMetrics
from api.paging import newest_first
from api.routes.sessions import post_within_limits
from core.db import autocommit
from core.progress import read_task
from core.records import insert_task_row
from core.session_client import drop_waiting_message
from core.settings import Settings
from core.task_control import TaskUpdateRefused
from core.task_control import answer_question as answer_question_update
from core.task_control import cancel_task as cancel_task_workflow
from core.task_control import decide_approval as decide_approval_update
from schemas import search_attributes
from schemas.agent_task import (
    TERMINAL_STATUSES,
    AnswerQuestionInput,
    ApprovalView,
    DecideApprovalInput,
    QuestionView,
    StartAgentTaskInput,
    TaskProgress,
    TaskStatus,
    Usage,
)
from schemas.api import (
    AnswerRequest,
    CreateTaskRequest,
    DecisionRequest,
    TaskCancelled,
    TaskCreated,
    TaskPage,
    TaskResultBody,
    TaskView,
)
from schemas.tables import Task, User
from workflows.agent_task import AgentTaskWorkflow
from workflows.agent_task import task_workflow_id as workflow_id

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


def _view(task: Task, progress: TaskProgress | None = None) -> TaskView:
    """The task as the API shows it: live progress while it runs, the projection after."""
    if progress is None:
        progress = TaskProgress.model_validate(
            {
                "task_id": task.id,
                "status": task.status,
                "phase": task.status,
                "steps": task.steps,
                "plan": task.plan,
                "usage": task.usage,
                "stop_reason": task.stop_reason,
                "result_text": task.result_text,
                "error": task.error,
            }
        )
    finished = progress.status in TERMINAL_STATUSES
    return TaskView(
        id=task.id,
        user_id=task.user_id,
        status=progress.status,
        phase=progress.phase,
        agent=task.agent,
        channel=task.channel,
        prompt=task.prompt,
        created_at=task.created_at,
        start_at=task.start_at,
        steps=progress.steps,
        plan=progress.plan,
        pending_approvals=progress.pending_approvals,
        pending_question=progress.pending_question,
        usage=progress.usage or Usage(),
        stop_reason=progress.stop_reason,
        result=TaskResultBody(text=progress.result_text) if finished else None,
        error=progress.error,
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TaskCreated)
async def create_task(
    body: CreateTaskRequest,
    user: CurrentUser,
    session: DbSession,
    sessions: DbSessions,
    client: TemporalClient,
    settings: AppSettings,
    agents: Agents,
    metrics: Metrics,
) -> TaskCreated:
    """Start an agent task (at `start_at`, if given); follow it with GET /v1/tasks/{id}.
    With `session_id`, the prompt is posted into that session, and the task answers it in
    its turn."""
    ensure_prompt_size(settings, body.prompt)
    if body.session_id is not None:
        return await _post_into_session(body, user, session, client, sessions, settings, metrics)
    require_agent(agents, body.agent)
    task = StartAgentTaskInput(
        task_id=str(uuid4()),
        user_id=user.id,
        prompt=body.prompt,
        agent=body.agent,
        channel="api",
        max_steps=body.max_steps,
        max_tokens=body.max_tokens,
        notify=body.notify,
        start_at=body.start_at,
    )
    initial = TaskStatus.SCHEDULED if body.start_at is not None else TaskStatus.RUNNING
    await ensure_task_quota(session, settings, user)
    # The row first, so the task is listed and owned the moment it exists; removed again
    # if Temporal refuses the start, so nothing half-written is left behind.
    await insert_task_row(session, task)
    await session.commit()
    try:
        await client.start_workflow(
            AgentTaskWorkflow.run,
            task,
            id=workflow_id(task.task_id),
            task_queue=settings.task_queue,
            search_attributes=search_attributes.of_work(
                user.id, task.channel, task.agent, initial.value
            ),
            static_summary=f"{user.name}: {body.prompt[:80]}",
            priority=Priority(priority_key=body.priority) if body.priority else Priority.default,
        )
    except RPCError as exc:
        await session.exec(delete(Task).where(col(Task.id) == task.task_id))
        await session.commit()
        raise ServiceUnavailable(f"Temporal refused the task: {exc.message}") from exc
    metrics.tasks_started.labels(task.agent).inc()
    return TaskCreated(id=task.task_id, status=initial)


# What a session decides for its turns: a task posted into one cannot set them.
_SESSION_DECIDES = ("agent", "max_steps", "max_tokens", "notify", "start_at", "priority")


async def _post_into_session(
    body: CreateTaskRequest,
    user: User,
    session: AsyncSession,
    client: Client,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    metrics: ApiMetrics,
) -> TaskCreated:
    assert body.session_id is not None
    for field in _SESSION_DECIDES:
        if field in body.model_fields_set:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{field}: not with session_id; the session's agent and budgets apply",
            )
    task_id = await post_within_limits(
        session, sessions, client, settings, metrics, user, body.session_id, body.prompt, "prompt"
    )
    return TaskCreated(id=task_id, status=TaskStatus.QUEUED)


async def owned_task(session: AsyncSession, task_id: str, user: User) -> Task:
    """The caller's task; another user's task is as absent as one that never existed."""
    task = (
        await session.exec(select(Task).where(Task.id == task_id, Task.user_id == user.id))
    ).first()
    if task is None:
        raise _no_such_task(task_id)
    return task


def _no_such_task(task_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")


@router.get("/{task_id}", response_model=TaskView)
async def get_task(task_id: str, user: CurrentUser, sessions: DbSessions) -> TaskView:
    """A task's status, steps, plan, usage and result; another user's task answers 404."""
    async with autocommit(sessions) as connection:
        found = await read_task(connection, task_id, user.id)
    if found is None:
        raise _no_such_task(task_id)
    return _view(*found)


@router.get("", response_model=TaskPage)
async def list_tasks(
    user: CurrentUser,
    session: DbSession,
    status_filter: TaskStatus | None = Query(default=None, alias="status"),
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, description="`next_cursor` of the previous page"),
    all_users: bool = Query(default=False, description="every user's tasks (admins only)"),
) -> TaskPage:
    """The caller's tasks (every user's for an admin with `all_users=true`), newest first,
    from the tasks projection."""
    statement = select(Task)
    if not admin_scope(user, all_users):
        statement = statement.where(Task.user_id == user.id)
    if status_filter is not None:
        statement = statement.where(Task.status == status_filter.value)
    page, next_cursor = await newest_first(
        session, statement, col(Task.created_at), col(Task.id), cursor, limit
    )
    return TaskPage(items=[_view(task) for task in page], next_cursor=next_cursor)


@router.post(
    "/{task_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=TaskCancelled
)
async def cancel_task(
    task_id: str, user: CurrentUser, session: DbSession, client: TemporalClient
) -> TaskCancelled:
    """Cancel a running task: a Claude call in flight is stopped, and the task ends
    `cancelled`. A session's message still waiting for its turn is dropped at once. A task
    that already ended answers 409."""
    task = await owned_task(session, task_id, user)
    if task.status in TERMINAL_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} already ended {task.status}")
    if task.status == TaskStatus.QUEUED and await drop_waiting_message(client, session, task.id):
        return TaskCancelled(id=task.id, status=TaskStatus.CANCELLED.value)
    try:
        cancelled = await cancel_task_workflow(client, task.id)
    except RPCError as exc:
        raise ServiceUnavailable(f"Temporal could not cancel: {exc.message}") from exc
    if not cancelled:
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} is not running")
    return TaskCancelled(id=task.id, status="cancelling")


@router.get(
    "/{task_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def task_events(
    task_id: str,
    request: Request,
    user: CurrentUser,
    session: DbSession,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The task's progress as Server-Sent Events: `task_started`, `llm_started`,
    `text_delta`, `llm_finished`, `tool_started`, `tool_finished` and, last,
    `task_finished`. Reconnect with `Last-Event-ID` to resume; a finished task's events
    are replayed in full."""
    await owned_task(session, task_id, user)
    sessions = request.app.state.sessions
    return StreamingResponse(
        event_stream(sessions, task_id, last_event_id or 0, request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _refusals_as_http(update: Awaitable[Any]) -> Any:
    """Send an update; the task's refusals become 404 (no such approval or question) or
    409 (settled, expired, ended), and an unreachable Temporal 503."""
    try:
        return await update
    except TaskUpdateRefused as exc:
        code = status.HTTP_404_NOT_FOUND if exc.missing else status.HTTP_409_CONFLICT
        raise HTTPException(code, exc.message) from None
    except RPCError as exc:
        raise ServiceUnavailable(f"Temporal could not deliver: {exc.message}") from exc


@router.post("/{task_id}/approvals/{approval_id}", response_model=ApprovalView)
async def decide_approval(
    task_id: str,
    approval_id: str,
    body: DecisionRequest,
    user: CurrentUser,
    session: DbSession,
    client: TemporalClient,
) -> ApprovalView:
    """Approve or reject a pending tool call. A second decision, or one after the approval
    expired, answers 409."""
    task = await owned_task(session, task_id, user)
    decision = DecideApprovalInput(
        approval_id=approval_id,
        decision=body.decision,
        reason=body.reason,
        decided_by=user.id,
        channel="api",
    )
    result: ApprovalView = await _refusals_as_http(
        decide_approval_update(client, task.id, decision)
    )
    return result


@router.post("/{task_id}/answer", response_model=QuestionView)
async def answer_question(
    task_id: str, body: AnswerRequest, user: CurrentUser, session: DbSession, client: TemporalClient
) -> QuestionView:
    """Answer the agent's pending question (`pending_question.id` in GET /v1/tasks/{id})."""
    task = await owned_task(session, task_id, user)
    answer = AnswerQuestionInput(question_id=body.question_id, text=body.text)
    result: QuestionView = await _refusals_as_http(answer_question_update(client, task.id, answer))
    return result
