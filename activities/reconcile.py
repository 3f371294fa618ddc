"""Settling tasks whose workflow ended without recording its end.

A task's workflow records how it ended in the tasks projection before it closes. One that
is terminated, or runs past a timeout, in Temporal (an operator in the Web UI, `temporal
workflow terminate`) closes without doing so: its row would stay `running` for good, count
against its user's cap on unfinished tasks, and keep its event stream open. Temporal is the
source of truth for what is running, so this activity asks it which task workflows on the
worker's queue have closed that way, and ends their rows as `failed` (`cancelled` for a
workflow cancelled before it could record it), with what progress their events show."""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus

from activities.store import record_end
from core.db import autocommit
from core.progress import read_task
from schemas.agent_task import TERMINAL_STATUSES, TaskProgress, TaskStatus
from schemas.tables import Task, utcnow

# How far back closed workflows are looked for: the schedule runs every few minutes, so a
# day covers a worker that was down for most of one.
LOOKBACK = timedelta(days=1)
TASK_WORKFLOW_PREFIX = "task-"


@dataclass(frozen=True)
class Ending:
    """How a task whose workflow closed this way is shown."""

    visibility_name: str  # the workflow status as Temporal's list filter spells it
    status: TaskStatus
    error: str


ENDINGS = {
    WorkflowExecutionStatus.TERMINATED: Ending(
        "Terminated", TaskStatus.FAILED, "the task's workflow was terminated in Temporal"
    ),
    WorkflowExecutionStatus.TIMED_OUT: Ending(
        "TimedOut", TaskStatus.FAILED, "the task's workflow timed out in Temporal"
    ),
    WorkflowExecutionStatus.FAILED: Ending(
        "Failed", TaskStatus.FAILED, "the task's workflow failed in Temporal"
    ),
    WorkflowExecutionStatus.CANCELED: Ending(
        "Canceled", TaskStatus.CANCELLED, "the task's workflow was cancelled in Temporal"
    ),
}
_CLOSED_WITHOUT_RECORDING = " OR ".join(
    f"ExecutionStatus = '{ending.visibility_name}'" for ending in ENDINGS.values()
)


class ReconcileActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], task_queue: str) -> None:
        self._sessions = sessions
        self._task_queue = task_queue

    @activity.defn
    async def settle_ended_tasks(self) -> int:
        """End the rows of tasks whose workflow closed without recording its end; how many."""
        since = (utcnow() - LOOKBACK).isoformat()
        query = (
            f"WorkflowType = 'AgentTaskWorkflow' AND TaskQueue = '{self._task_queue}' "
            f"AND CloseTime > '{since}' AND ({_CLOSED_WITHOUT_RECORDING})"
        )
        closed: dict[str, Ending] = {}
        async for execution in activity.client().list_workflows(query):
            ending = ENDINGS.get(execution.status) if execution.status else None
            if execution.id.startswith(TASK_WORKFLOW_PREFIX) and ending is not None:
                closed[execution.id.removeprefix(TASK_WORKFLOW_PREFIX)] = ending
        if not closed:
            return 0
        async with autocommit(self._sessions) as connection:
            unfinished = (
                await connection.execute(
                    select(Task.id, Task.user_id).where(
                        col(Task.id).in_(list(closed)),
                        col(Task.status).not_in([status.value for status in TERMINAL_STATUSES]),
                    )
                )
            ).all()
        for task_id, user_id in unfinished:
            ending = closed[task_id]
            await record_end(self._sessions, await self._ended(task_id, user_id, ending))
            activity.logger.warning(
                "task ended outside Keel, recorded",
                extra={"task_id": task_id, "error": ending.error},
            )
        return len(unfinished)

    async def _ended(self, task_id: str, user_id: str, ending: Ending) -> TaskProgress:
        """The task as its events last showed it, ended as its workflow did."""
        async with autocommit(self._sessions) as connection:
            found = await read_task(connection, task_id, user_id)
        assert found is not None  # listed a moment ago, and task rows are never deleted
        task, progress = found
        shown = progress or TaskProgress(task_id=task.id, status=task.status, phase=task.status)
        return shown.model_copy(
            update={"status": ending.status, "phase": ending.status.value, "error": ending.error}
        )
