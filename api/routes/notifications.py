"""The caller's notification inbox: list it, mark a notification read."""

from fastapi import APIRouter, HTTPException, Query, status
from sqlmodel import col, select

from api.deps import CurrentUser, DbSession
from api.paging import newest_first
from schemas.api import NotificationPage, NotificationView
from schemas.tables import Notification, utcnow

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


def _view(notification: Notification) -> NotificationView:
    return NotificationView(
        id=notification.id,
        kind=notification.kind,
        title=notification.title,
        body=notification.body,
        task_id=notification.task_id,
        created_at=notification.created_at,
        read_at=notification.read_at,
    )


@router.get("", response_model=NotificationPage)
async def list_notifications(
    user: CurrentUser,
    session: DbSession,
    unread: bool | None = Query(
        default=None, description="`true`: only unread ones; `false`: only read ones; omit: all"
    ),
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, description="`next_cursor` of the previous page"),
) -> NotificationPage:
    """The caller's notifications, newest first."""
    statement = select(Notification).where(Notification.user_id == user.id)
    if unread is not None:
        read_at = col(Notification.read_at)
        statement = statement.where(read_at.is_(None) if unread else read_at.is_not(None))
    page, next_cursor = await newest_first(
        session,
        statement,
        col(Notification.created_at),
        col(Notification.id),
        cursor,
        limit,
    )
    return NotificationPage(items=[_view(row) for row in page], next_cursor=next_cursor)


@router.post("/{notification_id}/read", response_model=NotificationView)
async def mark_read(
    notification_id: str, user: CurrentUser, session: DbSession
) -> NotificationView:
    """Mark a notification read. Marking it again keeps the first `read_at`; another
    user's notification answers 404."""
    # Locked, so two concurrent reads cannot both find it unread and overwrite each other.
    notification = (
        await session.exec(
            select(Notification)
            .where(Notification.id == notification_id, Notification.user_id == user.id)
            .with_for_update()
        )
    ).first()
    if notification is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no notification {notification_id}")
    if notification.read_at is None:
        notification.read_at = utcnow()
        session.add(notification)
        await session.commit()  # before answering, so a list right after sees it read
    return _view(notification)
