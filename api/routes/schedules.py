"""Schedules: agent tasks that run by themselves, on Temporal Schedules.

Each change follows one order, so Postgres and Temporal never disagree for long: the
row and its audit entry are written in an open transaction, then Temporal is changed,
then the transaction commits. If Temporal refuses, the transaction rolls back and nothing
is left half-done; a new schedule whose commit fails is removed from Temporal again."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Agents, AppSettings, CurrentUser, DbSession, TemporalClient, require_agent
from api.limits import ensure_prompt_size
from api.paging import newest_first
from api.schedules import owner_attributes, schedule_view, temporal_id, temporal_schedule
from core.audit import audit
from core.session_client import owned_session
from schemas.schedules import (
    CreateScheduleRequest,
    SchedulePage,
    ScheduleView,
    UpdateScheduleRequest,
)
from schemas.tables import Schedule, User, utcnow

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

RESOURCE = "schedule"


async def _owned(
    session: AsyncSession, schedule_id: str, user: User, lock: bool = True
) -> Schedule:
    """The caller's schedule, locked for a change unless `lock` is false; another user's
    answers 404."""
    statement = select(Schedule).where(Schedule.id == schedule_id, Schedule.user_id == user.id)
    row = (await session.exec(statement.with_for_update() if lock else statement)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {schedule_id}")
    return row


def _refused(exc: RPCError, row: Schedule, cron_given: bool) -> HTTPException | None:
    """What a Temporal refusal means to the caller: a cron expression Temporal cannot read
    is the caller's 422; a schedule gone from Temporal is 404; None for anything else,
    which stays an RPCError (503)."""
    if exc.status is RPCStatusCode.INVALID_ARGUMENT and cron_given:
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"cron: {row.cron!r} is invalid: {exc.message}"
        )
    if exc.status is RPCStatusCode.NOT_FOUND:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {row.id}")
    return None


TemporalCall = Callable[[], Awaitable[object]]


async def _change(
    session: AsyncSession,
    row: Schedule,
    action: str,
    temporal_call: TemporalCall,
    cron_given: bool = False,
    undo: TemporalCall | None = None,
    **details: Any,
) -> None:
    """Audit `action`, make the Temporal call, then commit. If Temporal refuses, roll
    back; if the commit fails, `undo` the Temporal call."""
    audit(session, row.user_id, f"{RESOURCE}.{action}", RESOURCE, row.id, **details)
    await session.flush()
    try:
        await temporal_call()
    except RPCError as exc:
        refusal = _refused(exc, row, cron_given)  # before the rollback expires `row`
        await session.rollback()
        if refusal is None:
            raise
        raise refusal from exc
    try:
        await session.commit()
    except Exception:
        if undo is not None:
            await undo()
        raise


async def _describe(client: Client, row: Schedule) -> ScheduleDescription | None:
    """Temporal's description of the schedule; None if it is gone (deleted there by an
    operator, say)."""
    try:
        return await client.get_schedule_handle(temporal_id(row)).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise


async def _view(client: Client, row: Schedule) -> ScheduleView:
    description = await _describe(client, row)
    if description is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {row.id}")
    return schedule_view(row, description)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleView)
async def create_schedule(
    body: CreateScheduleRequest,
    user: CurrentUser,
    session: DbSession,
    client: TemporalClient,
    settings: AppSettings,
    agents: Agents,
) -> ScheduleView:
    """Create a schedule: its task runs at each `cron` time (or `every` interval) in
    `timezone`, and each result arrives in your notifications."""
    ensure_prompt_size(settings, body.prompt)
    agent = body.agent
    if body.session_id is not None:
        agent = (await owned_session(session, body.session_id, user.id)).agent
    require_agent(agents, agent)
    row = Schedule(
        user_id=user.id,
        name=body.name,
        prompt=body.prompt,
        agent=agent,
        cron=body.cron,
        every=body.every,
        timezone=body.timezone or user.timezone,
        session_id=body.session_id,
    )
    session.add(row)
    await _change(
        session,
        row,
        "create",
        lambda: client.create_schedule(
            temporal_id(row),
            temporal_schedule(row, settings, ScheduleState(paused=body.paused)),
            search_attributes=owner_attributes(user.id),
        ),
        cron_given=body.cron is not None,
        undo=lambda: _delete(client.get_schedule_handle(temporal_id(row))),
        **body.model_dump(mode="json", exclude_none=True),
    )
    return await _view(client, row)


@router.get("", response_model=SchedulePage)
async def list_schedules(
    user: CurrentUser,
    session: DbSession,
    client: TemporalClient,
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, description="`next_cursor` of the previous page"),
) -> SchedulePage:
    """The caller's schedules, newest first, each with its state and next runs."""
    page, next_cursor = await newest_first(
        session,
        select(Schedule).where(Schedule.user_id == user.id),
        col(Schedule.created_at),
        col(Schedule.id),
        cursor,
        limit,
    )
    descriptions = await asyncio.gather(*(_describe(client, row) for row in page))
    return SchedulePage(
        items=[
            schedule_view(row, description)
            for row, description in zip(page, descriptions, strict=True)
            if description is not None
        ],
        next_cursor=next_cursor,
    )


@router.get("/{schedule_id}", response_model=ScheduleView)
async def get_schedule(
    schedule_id: str, user: CurrentUser, session: DbSession, client: TemporalClient
) -> ScheduleView:
    """One schedule: its definition, whether it is paused, its next runs and run counts."""
    return await _view(client, await _owned(session, schedule_id, user, lock=False))


@router.patch("/{schedule_id}", response_model=ScheduleView)
async def update_schedule(
    schedule_id: str,
    body: UpdateScheduleRequest,
    user: CurrentUser,
    session: DbSession,
    client: TemporalClient,
    settings: AppSettings,
    agents: Agents,
) -> ScheduleView:
    """Change a schedule: only the fields given change; `cron` replaces `every` and the
    reverse; `paused` pauses or resumes it."""
    if body.agent is not None:
        require_agent(agents, body.agent)
    if body.prompt is not None:
        ensure_prompt_size(settings, body.prompt)
    row = await _owned(session, schedule_id, user)
    changes = body.model_dump(exclude_none=True, exclude={"paused"})
    if body.cron is not None:
        changes["every"] = None
    if body.every is not None:
        changes["cron"] = None
    for field, value in changes.items():
        setattr(row, field, value)
    row.updated_at = utcnow()
    session.add(row)

    def updater(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        if body.paused is not None:
            state.paused = body.paused
        return ScheduleUpdate(schedule=temporal_schedule(row, settings, state))

    handle = client.get_schedule_handle(temporal_id(row))
    await _change(
        session,
        row,
        "update",
        lambda: handle.update(updater),
        cron_given=body.cron is not None,
        **body.model_dump(mode="json", exclude_none=True),
    )
    return await _view(client, row)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_schedule(
    schedule_id: str, user: CurrentUser, session: DbSession, client: TemporalClient
) -> Response:
    """Delete a schedule: it fires no more (a run already going finishes)."""
    row = await _owned(session, schedule_id, user)
    await session.delete(row)
    handle = client.get_schedule_handle(temporal_id(row))
    await _change(session, row, "delete", lambda: _delete(handle))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _delete(handle: ScheduleHandle) -> None:
    """Delete the Temporal schedule; one already gone is deleted enough."""
    try:
        await handle.delete()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise


async def _act(
    session: AsyncSession,
    client: Client,
    schedule_id: str,
    user: User,
    action: str,
    call: Callable[[ScheduleHandle], Awaitable[object]],
) -> ScheduleView:
    """`call` on the caller's schedule in Temporal, audited as `action`."""
    row = await _owned(session, schedule_id, user)
    handle = client.get_schedule_handle(temporal_id(row))
    await _change(session, row, action, lambda: call(handle))
    return await _view(client, row)


@router.post(
    "/{schedule_id}/trigger", status_code=status.HTTP_202_ACCEPTED, response_model=ScheduleView
)
async def trigger_schedule(
    schedule_id: str, user: CurrentUser, session: DbSession, client: TemporalClient
) -> ScheduleView:
    """Run the schedule's task now (skipped, like any firing, while a run is still going);
    its result arrives in your notifications."""
    return await _act(session, client, schedule_id, user, "trigger", ScheduleHandle.trigger)


@router.post("/{schedule_id}/pause", response_model=ScheduleView)
async def pause_schedule(
    schedule_id: str, user: CurrentUser, session: DbSession, client: TemporalClient
) -> ScheduleView:
    """Stop the schedule firing until it is resumed."""
    note = f"paused by {user.name}"
    return await _act(session, client, schedule_id, user, "pause", lambda h: h.pause(note=note))


@router.post("/{schedule_id}/resume", response_model=ScheduleView)
async def resume_schedule(
    schedule_id: str, user: CurrentUser, session: DbSession, client: TemporalClient
) -> ScheduleView:
    """Let a paused schedule fire again, from its next time on."""
    note = f"resumed by {user.name}"
    return await _act(session, client, schedule_id, user, "resume", lambda h: h.unpause(note=note))
