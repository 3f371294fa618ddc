"""The task transcript in Postgres: one row per (task, seq), written at most once. A read
or a write, with the event it implies, is one prebuilt statement: one round trip."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, String, bindparam, exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from activities.events import Event, for_each
from schemas.tables import Message, utcnow

# Writes the row unless (task, seq) is there, and its event only if it wrote the row.
_WRITE = for_each(
    insert(Message)
    .values(
        {
            name: bindparam(name)
            for name in ("task_id", "seq", "role", "content", "stop_reason", "usage", "created_at")
        }
    )
    .on_conflict_do_nothing(index_elements=["task_id", "seq"])
    .returning(col(Message.task_id))
    .cte("written")
)
# Reads the rows from `since` on, and writes the event only if `seq` has no row yet (seeing
# the rows as they were before the statement).
_READ = (
    select(
        col(Message.seq),
        col(Message.role),
        col(Message.content),
        col(Message.stop_reason),
        col(Message.usage),
    )
    .where(col(Message.task_id) == bindparam("task_id"), col(Message.seq) >= bindparam("since"))
    .order_by(col(Message.seq))
    .add_cte(
        for_each(
            select(bindparam("task_id", type_=String).label("task_id"))
            .where(
                ~exists().where(
                    col(Message.task_id) == bindparam("task_id"),
                    col(Message.seq) == bindparam("seq"),
                )
            )
            .cte("unwritten")
        ).cte("started")
    )
)


async def read_messages(
    connection: AsyncConnection, task_id: str, since: int, seq: int, started: Event
) -> Sequence[Row[Any]]:
    """The task's rows from `since` on, in order; `started` is written unless `seq` has its
    row already (a retry that finds its work done announces nothing)."""
    params = {"task_id": task_id, "since": since, "seq": seq, **started.params()}
    return (await connection.execute(_READ, params)).all()


async def write_message(
    connection: AsyncConnection,
    task_id: str,
    seq: int,
    role: str,
    content: list[dict[str, Any]],
    written: Event,
    stop_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> None:
    """Insert the row unless (task, seq) is already there, and `written` with it: a retried
    activity writes nothing."""
    params = {
        "task_id": task_id,
        "seq": seq,
        "role": role,
        "content": content,
        "stop_reason": stop_reason,
        "usage": usage,
        "created_at": utcnow(),
        **written.params(),
    }
    await connection.execute(_WRITE, params)


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
