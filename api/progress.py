"""A running task's progress, read from Postgres: its events, its pending approvals and its
plan. The API answers from here rather than querying the workflow, so following a task adds
no load to the workers (the workflow's `progress` query stays for operators)."""

from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

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
from schemas.tables import Approval, Task, TaskEvent

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


def _finish(step: Step, at: datetime, outcome: str, detail: str | None = None) -> None:
    step.finished_at = at
    step.duration_ms = int((at - step.started_at).total_seconds() * 1000)
    step.outcome = outcome
    step.detail = detail


async def live_progress(session: AsyncSession, task: Task) -> TaskProgress:
    """Steps and usage from the task's events; what it waits for from its pending
    approvals and its unsettled question."""
    rows = await session.exec(
        select(TaskEvent)
        .where(TaskEvent.task_id == task.id, col(TaskEvent.type).in_(PROGRESS_EVENTS))
        .order_by(col(TaskEvent.id))
    )
    steps: list[Step] = []
    usage = Usage()
    model_calls: dict[int, Step] = {}
    tool_calls: dict[str, Step] = {}
    questions: dict[str, QuestionView] = {}
    for event in rows:
        data = event.data
        if event.type == events.LLM_STARTED and data["seq"] not in model_calls:
            model_calls[data["seq"]] = Step(
                kind="llm", name=data["model"], started_at=event.created_at
            )
            steps.append(model_calls[data["seq"]])
        elif event.type == events.LLM_FINISHED and data["seq"] in model_calls:
            _finish(model_calls[data["seq"]], event.created_at, data["stop_reason"])
            usage += Usage.model_validate(data["usage"])
        elif event.type == events.TOOL_STARTED and data["tool_use_id"] not in tool_calls:
            tool_calls[data["tool_use_id"]] = Step(
                kind="tool",
                name=data["tool"],
                started_at=event.created_at,
                arguments=data["arguments"],
            )
            steps.append(tool_calls[data["tool_use_id"]])
        elif event.type == events.TOOL_FINISHED:
            step = tool_calls.get(data["tool_use_id"])
            if step is None:  # refused or rejected: it never started
                step = Step(kind="tool", name=data["tool"], started_at=event.created_at)
                steps.append(step)
            _finish(step, event.created_at, data["outcome"], data["result"][:DETAIL_CHARS])
        elif event.type == events.QUESTION_ASKED:
            questions[data["id"]] = QuestionView.model_validate(data)
        elif event.type == events.QUESTION_SETTLED:
            questions.pop(data["id"], None)
    pending = await session.exec(
        select(Approval)
        .where(
            Approval.task_id == task.id,
            Approval.status == ApprovalStatus.PENDING.value,
        )
        .order_by(col(Approval.requested_at), col(Approval.id))
    )
    approvals = [
        ApprovalView(
            id=row.id,
            tool=row.tool,
            tool_use_id=row.tool_use_id,
            arguments=row.arguments,
            requested_at=row.requested_at,
            expires_at=row.expires_at,
        )
        for row in pending
    ]
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
