"""Keyset paging, newest first, shared by every list endpoint. The cursor is
`<timestamp in UTC, Z-suffixed>~<id>`: rows written at the same instant are neither skipped
nor repeated between pages, and nothing in it needs URL-escaping."""

from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import HTTPException, status
from sqlalchemy import and_, or_
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

Row = TypeVar("Row", bound=SQLModel)

CURSOR_SEPARATOR = "~"


def encode_cursor(at: datetime, row_id: Any) -> str:
    return f"{at.astimezone(UTC).isoformat().replace('+00:00', 'Z')}{CURSOR_SEPARATOR}{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (timestamp, id) after which the next page starts, or 422 naming `cursor`."""
    at, separator, row_id = cursor.partition(CURSOR_SEPARATOR)
    try:
        after = datetime.fromisoformat(at)
        if not separator or not row_id or after.tzinfo is None:
            raise ValueError(cursor)
        return after, row_id
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "cursor: not a cursor this API gave out; pass `next_cursor` of the previous page",
        ) from None


async def newest_first(
    session: AsyncSession,
    statement: SelectOfScalar[Row],
    at: Any,
    row_id: Any,
    cursor: str | None,
    limit: int,
) -> tuple[list[Row], str | None]:
    """One page of `statement` ordered by (`at`, `row_id`) descending, and the cursor of
    the next page (None on the last)."""
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        statement = statement.where(or_(at < after_at, and_(at == after_at, row_id < after_id)))
    statement = statement.order_by(at.desc(), row_id.desc()).limit(limit + 1)
    rows = list(await session.exec(statement))
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor(getattr(last, at.key), getattr(last, row_id.key))
