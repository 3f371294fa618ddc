"""What any channel (the REST API, the Telegram bot) does to a running agent task: decide
its approvals, answer its questions, cancel it. One code path for all of them."""

from typing import Any

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from schemas.agent_task import (
    AnswerQuestionInput,
    ApprovalView,
    DecideApprovalInput,
    QuestionView,
)
from workflows.agent_task import AgentTaskWorkflow, task_workflow_id


class TaskUpdateRefused(Exception):
    """The task would not take the update: `missing` when it has no such approval or
    question, otherwise because it was settled, expired or the task has ended."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing


# Update rejections that mean "no such thing here" rather than "not any more".
_MISSING = {"ApprovalNotFound", "QuestionNotFound"}


async def _send_update(client: Client, task_id: str, update: Any, argument: Any) -> Any:
    """Send an update to the task's workflow; its validator's refusals, and a task that
    has ended, raise `TaskUpdateRefused`. Other RPC errors (Temporal down) propagate."""
    handle = client.get_workflow_handle(task_workflow_id(task_id))
    try:
        return await handle.execute_update(update, argument)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError):
            raise TaskUpdateRefused(cause.message, missing=cause.type in _MISSING) from None
        raise
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise TaskUpdateRefused(f"task {task_id} has ended", missing=False) from None
        raise


async def decide_approval(
    client: Client, task_id: str, decision: DecideApprovalInput
) -> ApprovalView:
    """A person's approve/reject, as the task's `decide_approval` update."""
    result: ApprovalView = await _send_update(
        client, task_id, AgentTaskWorkflow.decide_approval, decision
    )
    return result


async def answer_question(
    client: Client, task_id: str, answer: AnswerQuestionInput
) -> QuestionView:
    """The user's answer to the agent's question, as the task's `answer_question` update."""
    result: QuestionView = await _send_update(
        client, task_id, AgentTaskWorkflow.answer_question, answer
    )
    return result


async def cancel_task(client: Client, task_id: str) -> bool:
    """Ask the task's workflow to cancel; False when it is not running."""
    try:
        await client.get_workflow_handle(task_workflow_id(task_id)).cancel()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True
