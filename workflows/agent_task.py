"""AgentTaskWorkflow: one multi-step agent task, from prompt to final answer."""

import asyncio
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.llm import LlmActivities
    from activities.store import StoreActivities
    from activities.tools import ToolActivities
    from schemas.agent_task import (
        AgentTaskResult,
        LlmCallInput,
        PlanUpdate,
        RecordToolResultInput,
        StartAgentTaskInput,
        Step,
        TaskPlan,
        TaskProgress,
        TaskStatus,
        ToolCall,
        ToolCallInput,
        ToolGrant,
        ToolPolicy,
    )
    from schemas.search_attributes import PHASE
    from workflows.timeouts import (
        LLM_HEARTBEAT_TIMEOUT,
        LLM_RETRY,
        LLM_TIMEOUT,
        STORE_RETRY,
        STORE_TIMEOUT,
        tool_retry,
    )

UPDATE_PLAN_TOOL = "update_plan"

# The prompt is transcript row 0; each model reply and each tool result takes the next.
FIRST_REPLY_SEQ = 1


def _error_message(error: BaseException) -> str:
    """The innermost message of an activity failure: what actually went wrong."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApplicationError) and error.type:
        return f"{error.type}: {error.message}"
    return str(error)


@workflow.defn
class AgentTaskWorkflow:
    def __init__(self) -> None:
        self._progress: TaskProgress | None = None

    @workflow.query
    def progress(self) -> TaskProgress:
        """The task's status, steps, usage and result so far."""
        if self._progress is None:
            raise ApplicationError("the task has not begun yet", type="TaskNotStarted")
        return self._progress

    @workflow.run
    async def run(self, task: StartAgentTaskInput) -> AgentTaskResult:
        self._progress = TaskProgress(
            task_id=task.task_id, status=TaskStatus.RUNNING, phase="running"
        )
        plan = await workflow.execute_activity_method(
            StoreActivities.begin_task,
            task,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
            summary="record the task and resolve its agent",
        )
        try:
            await self._loop(task, plan)
        except (ActivityError, asyncio.CancelledError) as error:
            if not is_cancelled_exception(error):
                assert isinstance(error, ActivityError)
                self._end(TaskStatus.FAILED, "error", error=_error_message(error))
            else:
                # Cancelled by a person: record it, then let Temporal close the run as
                # cancelled (re-raising a cancellation while cancel was requested does that).
                self._end(TaskStatus.CANCELLED, "cancelled")
                await self._record_end()
                raise
        await self._record_end()
        return AgentTaskResult(
            task_id=task.task_id,
            status=self._progress.status,
            stop_reason=self._progress.stop_reason,
            text=self._progress.result_text,
            usage=self._progress.usage,
            error=self._progress.error,
        )

    async def _record_end(self) -> None:
        assert self._progress is not None
        await workflow.execute_activity_method(
            StoreActivities.finish_task,
            self._progress,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
            summary=f"record the task as {self._progress.status}",
        )

    async def _loop(self, task: StartAgentTaskInput, plan: TaskPlan) -> None:
        """Ask Claude, run the tools it asks for, and repeat until it is done or a budget ends."""
        assert self._progress is not None
        grants = {grant.name: grant for grant in plan.tools}
        seq = FIRST_REPLY_SEQ
        for step_number in range(1, plan.max_steps + 1):
            step = self._start_step("llm", plan.model)
            reply = await workflow.execute_activity_method(
                LlmActivities.call_model,
                LlmCallInput(
                    task_id=task.task_id,
                    model=plan.model,
                    system=plan.system,
                    tool_names=list(grants),
                    max_output_tokens=plan.max_output_tokens,
                    assistant_seq=seq,
                ),
                start_to_close_timeout=LLM_TIMEOUT,
                heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
                retry_policy=LLM_RETRY,
                # On cancel, wait until the call has really stopped before recording it.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"step {step_number}: ask {plan.model}",
            )
            seq += 1
            self._progress.usage += reply.usage
            self._finish_step(step, reply.stop_reason)
            if reply.stop_reason == "pause_turn":
                continue
            if reply.stop_reason != "tool_use":
                self._end(TaskStatus.COMPLETED, reply.stop_reason, text=reply.text)
                return
            await asyncio.gather(
                *(
                    self._run_tool(task, grants.get(call.name), call, seq + index)
                    for index, call in enumerate(reply.tool_calls)
                )
            )
            seq += len(reply.tool_calls)
            if self._progress.usage.total_tokens >= plan.max_tokens:
                break
        await self._end_out_of_budget(task)

    async def _end_out_of_budget(self, task: StartAgentTaskInput) -> None:
        """Out of steps or tokens: done, with the last thing Claude said, or failed if it
        never said anything useful."""
        text = await workflow.execute_activity_method(
            StoreActivities.last_reply_text,
            task.task_id,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
            summary="find Claude's last words",
        )
        if text is None:
            error = "the task ran out of its step or token budget before Claude answered"
            self._end(TaskStatus.FAILED, "budget_exhausted", error=error)
        else:
            self._end(TaskStatus.COMPLETED, "budget_exhausted", text=text)

    async def _run_tool(
        self, task: StartAgentTaskInput, grant: ToolGrant | None, call: ToolCall, result_seq: int
    ) -> None:
        """Run one tool call if its policy allows it; otherwise tell Claude why not."""
        assert self._progress is not None
        step = self._start_step("tool", call.name, call.arguments)
        outcome, reason = "refused", _refusal(grant, call.name)
        if grant is not None and reason is None:
            try:
                result = await workflow.execute_activity_method(
                    ToolActivities.run_tool,
                    ToolCallInput(
                        task_id=task.task_id, user_id=task.user_id, call=call, result_seq=result_seq
                    ),
                    start_to_close_timeout=timedelta(seconds=grant.timeout_seconds),
                    retry_policy=tool_retry(grant.max_attempts),
                    summary=f"tool {call.name}",
                )
            except ActivityError as error:
                outcome, reason = "failed", f"the tool {call.name} failed: {_error_message(error)}"
            else:
                self._finish_step(step, "error" if result.is_error else "ok", result.preview)
                if call.name == UPDATE_PLAN_TOOL and not result.is_error:
                    self._progress.plan = PlanUpdate.model_validate(call.arguments).steps
                return
        assert reason is not None
        self._finish_step(step, outcome, reason)
        await workflow.execute_activity_method(
            StoreActivities.record_tool_result,
            RecordToolResultInput(
                task_id=task.task_id,
                tool_use_id=call.id,
                result_seq=result_seq,
                text=reason,
                tool_name=call.name,
                outcome=outcome,
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
            summary=f"tool {call.name} {outcome}",
        )

    def _start_step(
        self, kind: Literal["llm", "tool"], name: str, arguments: dict[str, Any] | None = None
    ) -> Step:
        assert self._progress is not None
        step = Step(kind=kind, name=name, started_at=workflow.now(), arguments=arguments)
        self._progress.steps.append(step)
        return step

    def _finish_step(self, step: Step, outcome: str, detail: str | None = None) -> None:
        step.finished_at = workflow.now()
        step.duration_ms = int((step.finished_at - step.started_at).total_seconds() * 1000)
        step.outcome = outcome
        step.detail = detail

    def _end(
        self,
        status: TaskStatus,
        stop_reason: str,
        text: str | None = None,
        error: str | None = None,
    ) -> None:
        assert self._progress is not None
        self._progress.status = status
        self._progress.phase = status.value
        self._progress.stop_reason = stop_reason
        self._progress.result_text = text
        self._progress.error = error
        workflow.upsert_search_attributes([PHASE.value_set(status.value)])


def _refusal(grant: ToolGrant | None, name: str) -> str | None:
    """Why the workflow will not run this call, or None when policy allows it. Decided here,
    from the agent's grants, never from anything the model says."""
    if grant is None:
        return f"the tool {name} is not available to this agent"
    if grant.policy is ToolPolicy.NEVER:
        return f"the tool {name} is disabled by policy"
    if grant.policy is ToolPolicy.CONFIRM:
        return f"the tool {name} needs a person's approval, which this version of Keel cannot ask for yet"
    return None
