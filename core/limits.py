"""The per-user cap on unfinished tasks, for every channel that starts work (the API
answers 429 with the message, the Telegram bot replies with it)."""

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.settings import Settings
from schemas.agent_task import TERMINAL_STATUSES
from schemas.tables import Task, User


class TooManyTasks(Exception):
    """The user has KEEL_MAX_RUNNING_TASKS_PER_USER unfinished tasks already."""


async def check_task_quota(session: AsyncSession, settings: Settings, user_id: str) -> None:
    """Raise TooManyTasks when the user already has KEEL_MAX_RUNNING_TASKS_PER_USER
    unfinished tasks. The user's row stays locked until the caller commits its new task,
    so concurrent starts on any replica are counted one after another."""
    limit = settings.max_running_tasks_per_user
    if limit == 0:
        return
    await session.exec(select(User.id).where(User.id == user_id).with_for_update())
    unfinished = (
        await session.exec(
            select(func.count())
            .select_from(Task)
            .where(
                Task.user_id == user_id,
                col(Task.status).not_in([ended.value for ended in TERMINAL_STATUSES]),
            )
        )
    ).one()
    if unfinished >= limit:
        raise TooManyTasks(
            f"too many unfinished tasks: you have {unfinished}, the limit is {limit} "
            "(KEEL_MAX_RUNNING_TASKS_PER_USER); wait for one to end or cancel one"
        )
