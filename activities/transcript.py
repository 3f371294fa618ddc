"""The task transcript in Postgres: one row per (task, seq), written at most once."""

from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.tables import Message, utcnow


async def find_message(session: AsyncSession, task_id: str, seq: int) -> Message | None:
    result = await session.exec(
        select(Message).where(Message.task_id == task_id, Message.seq == seq)
    )
    return result.first()


async def write_message(
    session: AsyncSession,
    task_id: str,
    seq: int,
    role: str,
    content: list[dict[str, Any]],
    stop_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> bool:
    """Insert the row unless (task, seq) is already there: a retried activity writes nothing.
    True when this call wrote it."""
    statement = (
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
    )
    result = await session.exec(statement)
    return bool(result.rowcount)


async def load_conversation(session: AsyncSession, task_id: str) -> list[dict[str, Any]]:
    """The transcript as Messages API `messages`: adjacent rows of one role become one
    message, so each tool's result row joins its siblings in a single user turn."""
    rows = await session.exec(
        select(Message).where(Message.task_id == task_id).order_by(col(Message.seq))
    )
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
