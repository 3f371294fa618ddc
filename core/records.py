"""Records shared by the API, the CLI and the activities: users, API keys, task rows,
memories."""

from sqlalchemy import or_
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.api_keys import create_api_key
from schemas.agent_task import StartAgentTaskInput, TaskStatus
from schemas.tables import Memory, Task, User, utcnow


async def create_user(
    session: AsyncSession, name: str, *, is_admin: bool = False
) -> tuple[User, str]:
    """Create a user and a first API key; the key is returned once and only its hash kept."""
    existing = (await session.exec(select(User).where(User.name == name))).first()
    if existing is not None:
        raise ValueError(f"a user named {name!r} already exists")
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    await session.flush()
    _key, secret = await create_api_key(session, user.id)
    return user, secret


async def insert_task_row(
    session: AsyncSession, task: StartAgentTaskInput, status: TaskStatus | None = None
) -> None:
    """Create the task's projection row unless it exists: the API writes it before the
    workflow starts, while a task started by a schedule is first written by its workflow. A
    task with a `start_at` is `scheduled` until its workflow begins it; a session's message
    is written `queued`, and moves to `running` when its task begins."""
    now = utcnow()
    if status is None:
        status = TaskStatus.SCHEDULED if task.start_at is not None else TaskStatus.RUNNING
    statement = (
        insert(Task)
        .values(
            id=task.task_id,
            user_id=task.user_id,
            agent=task.agent,
            channel=task.channel,
            prompt=task.prompt,
            status=status.value,
            usage={},
            steps=[],
            created_at=now,
            updated_at=now,
            start_at=task.start_at,
        )
        .on_conflict_do_update(
            index_elements=["id"],
            set_={"status": status.value, "updated_at": now},
            where=col(Task.status) == TaskStatus.QUEUED.value,
        )
    )
    await session.exec(statement)


def _like_pattern(word: str) -> str:
    """A LIKE pattern matching `word` anywhere, its wildcard characters taken literally."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def find_memories(
    session: AsyncSession, user_id: str, words: list[str], limit: int
) -> list[Memory]:
    """The user's memories containing any of `words` (case-insensitive), or the most
    recent when `words` is empty; newest first."""
    statement = select(Memory).where(Memory.user_id == user_id)
    if words:
        statement = statement.where(
            or_(*(col(Memory.content).ilike(_like_pattern(word), escape="\\") for word in words))
        )
    statement = statement.order_by(col(Memory.created_at).desc(), col(Memory.id).desc())
    return list(await session.exec(statement.limit(limit)))
