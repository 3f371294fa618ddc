"""A task as GET /v1/tasks/{id} shows it, read from Postgres in one statement: the task's row
and, while it runs, the events its progress is built from and its pending approvals. The API
answers from here rather than querying the workflow, so following a task adds no load to the
workers (the workflow's `progress` query stays for operators)."""

from datetime import datetime
from itertools import chain
from typing import Any

from sqlalchemy import JSON, ColumnElement, Select, bindparam, case, func
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from activities import events
from schemas.agent_task import (
    ApprovalStatus,
    ApprovalView,
    PlanItem,
    QuestionView,
    Step,
    TaskProgress,
    TaskStatus,
    Usage,
)
from schemas.tables import Approval, Task, TaskEvent, from_row

DETAIL_CHARS = 200
# The events progress is built from: not `text_delta` (a streamed answer writes many, with
# its text), so a task streaming a long answer is read as fast as one that is not.
PROGRESS_EVENTS = (
    events.LLM_STARTED,
    events.LLM_FINISHED,
    events.TOOL_STARTED,
    events.TOOL_FINISHED,
    events.QUESTION_ASKED,
    events.QUESTION_SETTLED,
)
# The statuses a task is shown in from its events: begun and not yet ended. A task that has
# not begun, or has ended, is shown from its row alone.
LIVE_STATUSES = (TaskStatus.RUNNING, TaskStatus.AWAITING_APPROVAL, TaskStatus.AWAITING_ANSWER)


def _while_live(rows: Select[Any]) -> ColumnElement[Any]:
    """`rows` (one JSON array) for a live task, NULL without running it for any other."""
    live = col(Task.status).in_([status.value for status in LIVE_STATUSES])
    return case((live, rows.scalar_subquery()), else_=None)


def _json_object(**fields: Any) -> ColumnElement[Any]:
    return func.json_build_object(*chain.from_iterable(fields.items()))


_EVENTS = select(
    func.json_agg(
        aggregate_order_by(
            _json_object(type=TaskEvent.type, data=TaskEvent.data, at=TaskEvent.created_at),
            col(TaskEvent.id),
        ),
        type_=JSON,
    )
).where(TaskEvent.task_id == Task.id, col(TaskEvent.type).in_(PROGRESS_EVENTS))
_APPROVALS = select(
    func.json_agg(
        aggregate_order_by(
            _json_object(
                id=Approval.id,
                tool=Approval.tool,
                tool_use_id=Approval.tool_use_id,
                arguments=Approval.arguments,
                requested_at=Approval.requested_at,
                expires_at=Approval.expires_at,
            ),
            col(Approval.requested_at),
            col(Approval.id),
        ),
        type_=JSON,
    )
).where(Approval.task_id == Task.id, Approval.status == ApprovalStatus.PENDING.value)
# Built once, with the task and its owner as parameters: building it on each call (a copy,
# then SQLAlchemy walking it, subqueries included, for its compiled-cache key) cost about
# 40% of the read's CPU.
_READ_TASK = select(
    Task.__table__,  # type: ignore[attr-defined]
    _while_live(_EVENTS).label("progress_events"),
    _while_live(_APPROVALS).label("pending_approvals"),
).where(Task.id == bindparam("task_id"), Task.user_id == bindparam("user_id"))


async def read_task(
    connection: AsyncConnection, task_id: str, user_id: str
) -> tuple[Task, TaskProgress | None] | None:
    """The user's task, with its live progress while it runs (None once it has ended or
    before it begins); None if the user has no such task. One round trip: run it on an
    autocommit connection."""
    row = (await connection.execute(_READ_TASK, {"task_id": task_id, "user_id": user_id})).first()
    if row is None:
        return None
    task = from_row(Task, row._mapping)
    if task.status not in LIVE_STATUSES:
        return task, None
    return task, live_progress(task, row.progress_events or [], row.pending_approvals or [])


def _finish(step: Step, at: datetime, outcome: str, detail: str | None = None) -> None:
    step.finished_at = at
    step.duration_ms = int((at - step.started_at).total_seconds() * 1000)
    step.outcome = outcome
    step.detail = detail


def live_progress(
    task: Task, progress_events: list[dict[str, Any]], pending_approvals: list[dict[str, Any]]
) -> TaskProgress:
    """Steps and usage from the task's events (each `type`, `data` and `at`, in order); what
    it waits for from its pending approvals and its unsettled question."""
    steps: list[Step] = []
    usage = Usage()
    model_calls: dict[int, Step] = {}
    tool_calls: dict[str, Step] = {}
    questions: dict[str, QuestionView] = {}
    for event in progress_events:
        kind, data, at = event["type"], event["data"], datetime.fromisoformat(event["at"])
        if kind == events.LLM_STARTED and data["seq"] not in model_calls:
            model_calls[data["seq"]] = Step(kind="llm", name=data["model"], started_at=at)
            steps.append(model_calls[data["seq"]])
        elif kind == events.LLM_FINISHED and data["seq"] in model_calls:
            _finish(model_calls[data["seq"]], at, data["stop_reason"])
            usage += Usage.model_validate(data["usage"])
        elif kind == events.TOOL_STARTED and data["tool_use_id"] not in tool_calls:
            tool_calls[data["tool_use_id"]] = Step(
                kind="tool", name=data["tool"], started_at=at, arguments=data["arguments"]
            )
            steps.append(tool_calls[data["tool_use_id"]])
        elif kind == events.TOOL_FINISHED:
            step = tool_calls.get(data["tool_use_id"])
            if step is None:  # refused or rejected: it never started
                step = Step(kind="tool", name=data["tool"], started_at=at)
                steps.append(step)
            _finish(step, at, data["outcome"], data["result"][:DETAIL_CHARS])
        elif kind == events.QUESTION_ASKED:
            questions[data["id"]] = QuestionView.model_validate(data)
        elif kind == events.QUESTION_SETTLED:
            questions.pop(data["id"], None)
    approvals = [ApprovalView.model_validate(row) for row in pending_approvals]
    question = next(iter(questions.values()), None)
    if approvals:
        status = TaskStatus.AWAITING_APPROVAL
    elif question is not None:
        status = TaskStatus.AWAITING_ANSWER
    else:
        status = TaskStatus.RUNNING
    return TaskProgress(
        task_id=task.id,
        status=status,
        phase=status.value,
        steps=steps,
        plan=[PlanItem.model_validate(item) for item in task.plan],
        usage=usage,
        pending_approvals=approvals,
        pending_question=question,
    )
