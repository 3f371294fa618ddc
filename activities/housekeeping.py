"""Keel's upkeep, one pass at a time (`workflows.housekeeping`).

Settling tasks whose workflow ended without recording its end. A task's workflow records how
it ended in the tasks projection before it closes. One that is terminated, or runs past a
timeout, in Temporal (an operator in the Web UI, `temporal workflow terminate`) closes
without doing so: its row would stay `running` for good, count against its user's cap on
unfinished tasks, and keep its event stream open. So would the messages still queued in a
session whose workflow ended that way. Temporal is the source of truth for what is running,
so the pass asks it which task and session workflows on the worker's queue have closed that
way, and ends those rows as `failed` (`cancelled` for a workflow cancelled before it could
record it), with what progress their events show.

Pruning records past their retention: request log rows after KEEL_REQUEST_LOG_RETENTION_DAYS
(passed in by the schedule), and the Telegram update ids kept to handle a redelivered update
once, after a week (Telegram redelivers for a day at most)."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus

from activities.store import record_end
from core.db import autocommit
from core.progress import read_task
from core.session_client import session_workflow_id
from schemas.agent_task import TERMINAL_STATUSES, TaskProgress, TaskStatus
from schemas.housekeeping import HousekeepingInput, Pruned
from schemas.tables import RequestLog, SessionTurn, Task, TelegramUpdate, utcnow
from workflows.agent_task import task_workflow_id

TELEGRAM_UPDATE_RETENTION = timedelta(days=7)
# Rows deleted per statement, so a large backlog never holds a long lock or a huge transaction.
PRUNE_BATCH_ROWS = 5_000


@dataclass(frozen=True)
class Ending:
    """How a task whose workflow (or session's workflow) closed this way is shown."""

    visibility_name: str  # the workflow status as Temporal's list filter spells it
    status: TaskStatus
    how: str


ENDINGS = {
    WorkflowExecutionStatus.TERMINATED: Ending("Terminated", TaskStatus.FAILED, "was terminated"),
    WorkflowExecutionStatus.TIMED_OUT: Ending("TimedOut", TaskStatus.FAILED, "timed out"),
    WorkflowExecutionStatus.FAILED: Ending("Failed", TaskStatus.FAILED, "failed"),
    WorkflowExecutionStatus.CANCELED: Ending("Canceled", TaskStatus.CANCELLED, "was cancelled"),
}
_CLOSED_WITHOUT_RECORDING = " OR ".join(
    f"ExecutionStatus = '{ending.visibility_name}'" for ending in ENDINGS.values()
)
_UNFINISHED = col(Task.status).not_in([status.value for status in TERMINAL_STATUSES])


@dataclass(frozen=True)
class Closed:
    ending: Ending
    at: datetime


class HousekeepingActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], task_queue: str) -> None:
        self._sessions = sessions
        self._task_queue = task_queue

    @activity.defn
    async def prune_old_records(self, job: HousekeepingInput) -> Pruned:
        """Delete request log rows and Telegram update ids past their retention."""
        now = utcnow()
        request_log_retention = timedelta(days=job.request_log_retention_days)
        return Pruned(
            request_logs=await self._prune(
                RequestLog.id, RequestLog.created_at, now - request_log_retention
            ),
            telegram_updates=await self._prune(
                TelegramUpdate.update_id,
                TelegramUpdate.received_at,
                now - TELEGRAM_UPDATE_RETENTION,
            ),
        )

    async def _prune(self, key: Any, stamp: Any, before: datetime) -> int:
        """Delete the rows of `key`'s table stamped before `before`, a batch per statement."""
        table = key.table
        oldest = select(key).where(stamp < before).limit(PRUNE_BATCH_ROWS)
        deleted = 0
        while True:
            async with autocommit(self._sessions) as connection:
                batch = (await connection.execute(delete(table).where(key.in_(oldest)))).rowcount
            deleted += batch
            activity.heartbeat(deleted)
            if batch < PRUNE_BATCH_ROWS:
                return deleted

    @activity.defn
    async def settle_ended_tasks(self, job: HousekeepingInput) -> int:
        """End the rows of tasks whose workflow closed without recording its end, and of
        messages left queued in a session whose workflow did; how many."""
        since = utcnow() - timedelta(hours=job.settle_lookback_hours)
        tasks = await self._closed("AgentTaskWorkflow", task_workflow_id(""), since)
        sessions = await self._closed("SessionWorkflow", session_workflow_id(""), since)
        settle: dict[str, tuple[str, Ending, str]] = {}  # task id -> (user id, ending, error)
        async with autocommit(self._sessions) as connection:
            if tasks:
                for task_id, user_id in await connection.execute(
                    select(Task.id, Task.user_id).where(col(Task.id).in_(list(tasks)), _UNFINISHED)
                ):
                    ending = tasks[task_id].ending
                    settle[task_id] = (
                        user_id,
                        ending,
                        f"the task's workflow {ending.how} in Temporal",
                    )
            if sessions:
                queued = select(Task.id, Task.user_id, Task.created_at, SessionTurn.session_id)
                for task_id, user_id, created_at, session_id in await connection.execute(
                    queued.join(SessionTurn, col(SessionTurn.task_id) == Task.id).where(
                        col(SessionTurn.session_id).in_(list(sessions)),
                        Task.status == TaskStatus.QUEUED.value,
                    )
                ):
                    closed = sessions[session_id]
                    if created_at <= closed.at:  # not a message to the session's next run
                        settle[task_id] = (
                            user_id,
                            closed.ending,
                            f"its session's workflow {closed.ending.how} in Temporal "
                            "before the message was answered",
                        )
        for task_id, (user_id, ending, error) in settle.items():
            await record_end(self._sessions, await self._ended(task_id, user_id, ending, error))
            activity.logger.warning(
                "task ended outside Keel, recorded", extra={"task_id": task_id, "error": error}
            )
        return len(settle)

    async def _closed(
        self, workflow_type: str, id_prefix: str, since: datetime
    ) -> dict[str, Closed]:
        """This queue's workflows of this type that closed without recording their end
        since `since`, by their ID without `id_prefix`."""
        query = (
            f"WorkflowType = '{workflow_type}' AND TaskQueue = '{self._task_queue}' "
            f"AND CloseTime > '{since.isoformat()}' AND ({_CLOSED_WITHOUT_RECORDING})"
        )
        closed: dict[str, Closed] = {}
        async for execution in activity.client().list_workflows(query):
            ending = ENDINGS.get(execution.status) if execution.status else None
            if ending and execution.close_time and execution.id.startswith(id_prefix):
                closed[execution.id.removeprefix(id_prefix)] = Closed(ending, execution.close_time)
        return closed

    async def _ended(self, task_id: str, user_id: str, ending: Ending, error: str) -> TaskProgress:
        """The task as its events last showed it, ended as its workflow did."""
        async with autocommit(self._sessions) as connection:
            found = await read_task(connection, task_id, user_id)
        assert found is not None  # listed a moment ago, and task rows are never deleted
        task, progress = found
        shown = progress or TaskProgress(task_id=task.id, status=task.status, phase=task.status)
        return shown.model_copy(
            update={"status": ending.status, "phase": ending.status.value, "error": error}
        )
