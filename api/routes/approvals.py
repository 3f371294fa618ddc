"""The caller's approvals: every request for a person's decision and what became of it."""

from datetime import datetime

from fastapi import APIRouter, Query
from sqlalchemy import ColumnElement, and_, or_
from sqlmodel import col, select

from api.deps import CurrentUser, DbSession, admin_scope
from api.paging import newest_first
from schemas.agent_task import ApprovalStatus
from schemas.api import ApprovalEntry, ApprovalPage
from schemas.tables import Approval, utcnow

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])


def _effective_status(approval: Approval, now: datetime) -> ApprovalStatus:
    """The approval's status as of `now`: a pending approval past its expiry is expired,
    whether or not its task's timer has fired and recorded that yet."""
    if approval.status == ApprovalStatus.PENDING and approval.expires_at <= now:
        return ApprovalStatus.EXPIRED
    return ApprovalStatus(approval.status)


def _status_condition(wanted: ApprovalStatus, now: datetime) -> ColumnElement[bool]:
    """Rows whose status as of `now` is `wanted` (see `_effective_status`)."""
    recorded = col(Approval.status)
    expires_at = col(Approval.expires_at)
    if wanted is ApprovalStatus.PENDING:
        return and_(recorded == ApprovalStatus.PENDING.value, expires_at > now)
    if wanted is ApprovalStatus.EXPIRED:
        return or_(
            recorded == ApprovalStatus.EXPIRED.value,
            and_(recorded == ApprovalStatus.PENDING.value, expires_at <= now),
        )
    return recorded == wanted.value


def _entry(approval: Approval, now: datetime) -> ApprovalEntry:
    return ApprovalEntry(
        id=approval.id,
        task_id=approval.task_id,
        user_id=approval.user_id,
        tool=approval.tool,
        arguments=approval.arguments,
        status=_effective_status(approval, now),
        channel=approval.channel,
        requested_at=approval.requested_at,
        expires_at=approval.expires_at,
        decided_at=approval.decided_at,
        decided_by=approval.decided_by,
        reason=approval.reason,
    )


@router.get("", response_model=ApprovalPage)
async def list_approvals(
    user: CurrentUser,
    session: DbSession,
    status_filter: ApprovalStatus | None = Query(default=None, alias="status"),
    task_id: str | None = Query(default=None, description="only this task's approvals"),
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, description="`next_cursor` of the previous page"),
    all_users: bool = Query(default=False, description="every user's approvals (admins only)"),
) -> ApprovalPage:
    """The caller's approvals, newest request first: `pending` ones await a decision at
    POST /v1/tasks/{task_id}/approvals/{id}; a pending approval past `expires_at` is shown
    (and filtered) as `expired`. Admins see every user's with `all_users=true`."""
    now = utcnow()
    statement = select(Approval)
    if not admin_scope(user, all_users):
        statement = statement.where(Approval.user_id == user.id)
    if status_filter is not None:
        statement = statement.where(_status_condition(status_filter, now))
    if task_id is not None:
        statement = statement.where(Approval.task_id == task_id)
    page, next_cursor = await newest_first(
        session, statement, col(Approval.requested_at), col(Approval.id), cursor, limit
    )
    return ApprovalPage(items=[_entry(approval, now) for approval in page], next_cursor=next_cursor)
