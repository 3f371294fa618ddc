"""The task transcript in Postgres: one row per (task, seq), written at most once. Each
helper builds one statement, so an activity's read or write (and the event it implies) is
one round trip."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, Row, exists, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import CTE
from sqlmodel import col

from schemas.tables import Message, utcnow


def new_message(
    task_id: str,
    seq: int,
    role: str,
    content: list[dict[str, Any]],
    stop_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> CTE:
    """Insert the row unless (task, seq) is already there: a retried activity writes nothing.
    Yields the row's `task_id` when it wrote it (for `events.insert_event_for_each`)."""
    return (
        insert(Message)
        .values(
            task_id=task_id,
            seq=seq,
            role=role,
            content=content,
            stop_reason=stop_reason,
            usage=usage,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["task_id", "seq"])
        .returning(col(Message.task_id))
        .cte("written")
    )


def unwritten(task_id: str, seq: int) -> CTE:
    """Yields `task_id` once if (task, seq) has no row yet, else nothing."""
    return (
        select(literal(task_id).label("task_id"))
        .where(~exists().where(col(Message.task_id) == task_id, col(Message.seq) == seq))
        .cte("unwritten")
    )


async def load_messages(
    connection: AsyncConnection, task_id: str, since: int = 0, also: Insert | None = None
) -> Sequence[Row[Any]]:
    """The task's rows from `since` on, in order; `also` (an event to write, say) runs in
    the same statement, seeing the rows as they were before it."""
    statement = (
        select(
            col(Message.seq),
            col(Message.role),
            col(Message.content),
            col(Message.stop_reason),
            col(Message.usage),
        )
        .where(col(Message.task_id) == task_id, col(Message.seq) >= since)
        .order_by(col(Message.seq))
    )
    if also is not None:
        statement = statement.add_cte(also.cte("also"))
    return (await connection.execute(statement)).all()


def as_conversation(rows: Sequence[Row[Any]]) -> list[dict[str, Any]]:
    """The transcript as Messages API `messages`: adjacent rows of one role become one
    message, so each tool's result row joins its siblings in a single user turn."""
    conversation: list[dict[str, Any]] = []
    for row in rows:
        if conversation and conversation[-1]["role"] == row.role:
            conversation[-1]["content"].extend(row.content)
        else:
            conversation.append({"role": row.role, "content": list(row.content)})
    return conversation


def tool_result_block(tool_use_id: str, text: str, is_error: bool) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": text,
        "is_error": is_error,
    }
