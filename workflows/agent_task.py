"""AgentTaskWorkflow: one multi-step agent task, from prompt to final answer."""

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.types import MethodAsyncSingleParam
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.llm import LlmActivities
    from activities.notify import NotifyActivities
    from activities.store import StoreActivities
    from activities.tools import ToolActivities
    from schemas.agent_task import (
        AgentTaskResult,
        AnswerQuestionInput,
        ApprovalRecord,
        ApprovalStatus,
        ApprovalView,
        DecideApprovalInput,
        LlmCallInput,
        NotificationInput,
        PlanUpdate,
        QuestionRecord,
        QuestionStatus,
        QuestionView,
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
    from schemas.session import FoldContextInput
    from workflows.metrics import count_approval, count_tool_call
    from workflows.timeouts import (
        LLM_HEARTBEAT_TIMEOUT,
        LLM_RETRY,
        LLM_TIMEOUT,
        NOTIFY_RETRY,
        NOTIFY_TIMEOUT,
        STORE_RETRY,
        STORE_TIMEOUT,
        tool_retry,
    )

UPDATE_PLAN_TOOL = "update_plan"
ASK_USER_TOOL = "ask_user"
# Tasks started over the API are followed there; others (schedules...) are notified.
INTERACTIVE_CHANNEL = "api"

# The prompt is transcript row 0; each model reply and each tool result takes the next.
FIRST_REPLY_SEQ = 1

# Store activities run as local activities from this patch on (see `_store`).
LOCAL_STORE_PATCH = "local-store-activities"
StoreArg = TypeVar("StoreArg")
StoreResult = TypeVar("StoreResult")


def task_workflow_id(task_id: str) -> str:
    return f"task-{task_id}"


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
        self._approvals: dict[str, ApprovalView] = {}
        self._questions: dict[str, QuestionView] = {}

    @workflow.query
    def progress(self) -> TaskProgress:
        """The task's status, steps, usage and result so far."""
        if self._progress is None:
            raise ApplicationError("the task has not begun yet", type="TaskNotStarted")
        return self._progress

    @workflow.update
    def decide_approval(self, decision: DecideApprovalInput) -> ApprovalView:
        """A person approves or rejects a pending tool call."""
        approval = self._approvals[decision.approval_id]
        approved = decision.decision == "approve"
        approval.status = ApprovalStatus.APPROVED if approved else ApprovalStatus.REJECTED
        approval.decided_at = workflow.now()
        approval.decided_by = decision.decided_by
        approval.decided_via = decision.channel
        approval.reason = decision.reason
        return approval

    @decide_approval.validator
    def _check_decision(self, decision: DecideApprovalInput) -> None:
        """Refuse unknown, decided and expired approvals before they reach history."""
        approval = self._approvals.get(decision.approval_id)
        if approval is None:
            raise ApplicationError(
                f"this task has no approval {decision.approval_id}", type="ApprovalNotFound"
            )
        if approval.status is not ApprovalStatus.PENDING:
            raise ApplicationError(
                f"approval {approval.id} was already {approval.status.value}",
                type="ApprovalAlreadyDecided",
            )
        if workflow.now() >= approval.expires_at:
            raise ApplicationError(f"approval {approval.id} has expired", type="ApprovalExpired")

    @workflow.update
    def answer_question(self, answer: AnswerQuestionInput) -> QuestionView:
        """The user answers the agent's pending question."""
        question = self._questions[answer.question_id]
        question.status = QuestionStatus.ANSWERED
        question.answer = answer.text
        return question

    @answer_question.validator
    def _check_answer(self, answer: AnswerQuestionInput) -> None:
        question = self._questions.get(answer.question_id)
        if question is None:
            raise ApplicationError(
                f"this task has no question {answer.question_id}", type="QuestionNotFound"
            )
        if question.status is not QuestionStatus.PENDING:
            raise ApplicationError(
                f"question {question.id} was already {question.status.value}",
                type="QuestionAlreadySettled",
            )
        if workflow.now() >= question.expires_at:
            raise ApplicationError(f"question {question.id} has expired", type="QuestionExpired")

    @workflow.run
    async def run(self, task: StartAgentTaskInput) -> AgentTaskResult:
        self._progress = TaskProgress(
            task_id=task.task_id, status=TaskStatus.RUNNING, phase="running"
        )
        if task.start_at is not None:
            await self._wait_until(task.start_at)
        plan = await self._store(
            StoreActivities.begin_task, task, "record the task and resolve its agent"
        )
        try:
            if task.session_id is not None and plan.context_tokens is not None:
                self._progress.usage += await workflow.execute_activity_method(
                    LlmActivities.fold_session_context,
                    FoldContextInput(
                        task_id=task.task_id, model=plan.model, context_tokens=plan.context_tokens
                    ),
                    start_to_close_timeout=LLM_TIMEOUT,
                    heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
                    retry_policy=LLM_RETRY,
                    summary="fold older turns of the session into its summary",
                )
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
        workflow.logger.info(
            "task %s",
            self._progress.status.value,
            extra={
                "task_id": task.task_id,
                "user_id": task.user_id,
                "stop_reason": self._progress.stop_reason,
                "usage": self._progress.usage.model_dump(),
            },
        )
        if task.notify or task.channel != INTERACTIVE_CHANNEL:
            await self._notify_finished(task)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return AgentTaskResult(
            task_id=task.task_id,
            status=self._progress.status,
            stop_reason=self._progress.stop_reason,
            text=self._progress.result_text,
            usage=self._progress.usage,
            error=self._progress.error,
        )

    async def _store(
        self,
        activity: MethodAsyncSingleParam[StoreActivities, StoreArg, StoreResult],
        arg: StoreArg,
        summary: str,
        *,
        local: bool = True,
    ) -> StoreResult:
        """Run a store activity: one or two quick statements, so a local activity (a marker
        in history, no task queue round trip, no second workflow task). Runs begun before
        they were local replay with the activities they ran.

        Not right after a person's decision or answer (`local=False`): Temporal answers an
        update when the workflow task that ran it completes, and local activities hold that
        task open, so the person would wait for the audit write, the tool and every local
        step after it."""
        if local and workflow.patched(LOCAL_STORE_PATCH):
            return await workflow.execute_local_activity_method(
                activity,
                arg,
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
                summary=summary,
            )
        return await workflow.execute_activity_method(
            activity,
            arg,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
            summary=summary,
        )

    async def _wait_until(self, start_at: datetime) -> None:
        """Wait durably until `start_at`, showing `scheduled`. Cancelled while waiting, the
        task ends `cancelled` without a step taken."""
        assert self._progress is not None
        delay = start_at - workflow.now()
        if delay <= timedelta(0):
            return
        self._progress.status = TaskStatus.SCHEDULED
        self._progress.phase = TaskStatus.SCHEDULED.value
        workflow.upsert_search_attributes([PHASE.value_set(TaskStatus.SCHEDULED.value)])
        try:
            await workflow.sleep(delay, summary=f"wait until {start_at.isoformat()}")
        except asyncio.CancelledError:
            self._end(TaskStatus.CANCELLED, "cancelled")
            await self._record_end()
            raise
        self._refresh_phase()

    async def _record_end(self) -> None:
        assert self._progress is not None
        await self._store(
            StoreActivities.finish_task,
            self._progress,
            f"record the task as {self._progress.status}",
        )

    async def _notify(
        self,
        task: StartAgentTaskInput,
        kind: str,
        title: str,
        body: str,
        key: str,
        approval_id: str | None = None,
        question_id: str | None = None,
    ) -> None:
        """Tell the user on their channels; `key` makes a retried delivery a no-op."""
        await workflow.execute_activity_method(
            NotifyActivities.notify,
            NotificationInput(
                user_id=task.user_id,
                kind=kind,
                title=title,
                body=body,
                task_id=task.task_id,
                dedupe_key=key,
                approval_id=approval_id,
                question_id=question_id,
            ),
            start_to_close_timeout=NOTIFY_TIMEOUT,
            retry_policy=NOTIFY_RETRY,
            summary=f"notify: {title}",
        )

    async def _notify_finished(self, task: StartAgentTaskInput) -> None:
        assert self._progress is not None
        status = self._progress.status
        body = self._progress.result_text or self._progress.error or status.value
        await self._notify(
            task,
            f"task_{status.value}",
            f"Task {status.value}: {task.prompt[:60]}",
            body,
            f"task:{task.task_id}:finished",
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
                    # Only a session's turn has earlier turns to bound (and to look up).
                    context_tokens=plan.context_tokens if task.session_id is not None else None,
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
        text = await self._store(
            StoreActivities.last_reply_text, task.task_id, "find Claude's last words"
        )
        if text is None:
            error = "the task ran out of its step or token budget before Claude answered"
            self._end(TaskStatus.FAILED, "budget_exhausted", error=error)
        else:
            self._end(TaskStatus.COMPLETED, "budget_exhausted", text=text)

    async def _run_tool(
        self, task: StartAgentTaskInput, grant: ToolGrant | None, call: ToolCall, result_seq: int
    ) -> None:
        """Run one tool call if its policy allows it (after a person's approval for
        confirm-tier tools); otherwise tell Claude why not."""
        assert self._progress is not None
        step = self._start_step("tool", call.name, call.arguments)
        if grant is not None and call.name == ASK_USER_TOOL:
            outcome, text = await self._ask_user(task, grant, call)
            self._finish_step(step, outcome, text)
            await self._record_result(task, call, result_seq, text, outcome, is_error=False)
            return
        outcome, reason = "refused", _refusal(grant, call.name)
        if grant is not None and reason is None and grant.policy is ToolPolicy.CONFIRM:
            approval = await self._await_approval(task, grant, call)
            if approval.status is not ApprovalStatus.APPROVED:
                outcome, reason = approval.status.value, _not_approved(approval)
        if grant is not None and reason is None:
            request = ToolCallInput(
                task_id=task.task_id, user_id=task.user_id, call=call, result_seq=result_seq
            )
            options: dict[str, Any] = {
                "start_to_close_timeout": timedelta(seconds=grant.timeout_seconds),
                "retry_policy": tool_retry(grant.max_attempts),
                "summary": f"tool {call.name}",
            }
            try:
                # `local` comes from the task's recorded plan, so tasks begun before tools
                # could run locally replay as they ran: no patch needed.
                if grant.local:
                    result = await workflow.execute_local_activity_method(
                        ToolActivities.run_tool, request, **options
                    )
                else:
                    result = await workflow.execute_activity_method(
                        ToolActivities.run_tool, request, **options
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
        await self._record_result(task, call, result_seq, reason, outcome, is_error=True)

    async def _record_result(
        self,
        task: StartAgentTaskInput,
        call: ToolCall,
        result_seq: int,
        text: str,
        outcome: str,
        is_error: bool,
    ) -> None:
        """Write a tool result the workflow decided (refused, rejected, failed, answered)."""
        await self._store(
            StoreActivities.record_tool_result,
            RecordToolResultInput(
                task_id=task.task_id,
                tool_use_id=call.id,
                result_seq=result_seq,
                text=text,
                is_error=is_error,
                tool_name=call.name,
                outcome=outcome,
            ),
            f"tool {call.name} {outcome}",
        )

    async def _await_approval(
        self, task: StartAgentTaskInput, grant: ToolGrant, call: ToolCall
    ) -> ApprovalView:
        """Park until a person decides (the `decide_approval` update) or the approval expires."""
        now = workflow.now()
        timeout = timedelta(seconds=grant.approval_timeout_seconds)
        approval = ApprovalView(
            id=str(workflow.uuid4()),
            tool=call.name,
            tool_use_id=call.id,
            arguments=call.arguments,
            requested_at=now,
            expires_at=now + timeout,
        )
        self._approvals[approval.id] = approval
        self._refresh_phase()
        await self._record_approval(task, approval, f"approve {call.name}?")
        await self._notify(
            task,
            "approval_requested",
            f"Approve {call.name}?",
            f"Your task wants to run {call.name} with {call.arguments}. Approve or reject it "
            f"before {approval.expires_at:%Y-%m-%d %H:%M} UTC.",
            f"approval:{approval.id}",
            approval_id=approval.id,
        )
        try:
            await workflow.wait_condition(
                lambda: approval.status is not ApprovalStatus.PENDING, timeout=timeout
            )
        except TimeoutError:
            approval.status = ApprovalStatus.EXPIRED
        self._refresh_phase()
        count_approval(call.name, approval.status.value)
        await self._record_approval(
            task, approval, f"{call.name} {approval.status.value}", local=False
        )
        return approval

    async def _record_approval(
        self, task: StartAgentTaskInput, approval: ApprovalView, summary: str, local: bool = True
    ) -> None:
        await self._store(
            StoreActivities.record_approval,
            ApprovalRecord(
                task_id=task.task_id, user_id=task.user_id, channel=task.channel, approval=approval
            ),
            summary,
            local=local,
        )

    async def _ask_user(
        self, task: StartAgentTaskInput, grant: ToolGrant, call: ToolCall
    ) -> tuple[str, str]:
        """Ask the user and park until they answer (the `answer_question` update) or the
        question expires. Returns the outcome and the text Claude gets back."""
        text = str(call.arguments.get("question", "")).strip()
        if not text:
            return "error", "ask_user needs a non-empty `question`"
        now = workflow.now()
        timeout = timedelta(seconds=grant.approval_timeout_seconds)
        question = QuestionView(
            id=str(workflow.uuid4()), text=text, asked_at=now, expires_at=now + timeout
        )
        self._questions[question.id] = question
        self._refresh_phase()
        await self._record_question(task, question, "ask the user")
        await self._notify(
            task,
            "question_asked",
            "Your agent asks",
            text,
            f"question:{question.id}",
            question_id=question.id,
        )
        try:
            await workflow.wait_condition(
                lambda: question.status is not QuestionStatus.PENDING, timeout=timeout
            )
        except TimeoutError:
            question.status = QuestionStatus.EXPIRED
        self._refresh_phase()
        await self._record_question(
            task, question, f"question {question.status.value}", local=False
        )
        if question.status is QuestionStatus.ANSWERED:
            return "answered", f"The user answered: {question.answer}"
        return "expired", "The user did not answer in time; carry on without their answer."

    async def _record_question(
        self, task: StartAgentTaskInput, question: QuestionView, summary: str, local: bool = True
    ) -> None:
        await self._store(
            StoreActivities.record_question,
            QuestionRecord(task_id=task.task_id, question=question),
            summary,
            local=local,
        )

    def _refresh_phase(self) -> None:
        """Status and phase follow what the task waits for: approvals first, then answers."""
        assert self._progress is not None
        approvals = [a for a in self._approvals.values() if a.status is ApprovalStatus.PENDING]
        questions = [q for q in self._questions.values() if q.status is QuestionStatus.PENDING]
        self._progress.pending_approvals = approvals
        self._progress.pending_question = questions[0] if questions else None
        if approvals:
            status = TaskStatus.AWAITING_APPROVAL
        elif questions:
            status = TaskStatus.AWAITING_ANSWER
        else:
            status = TaskStatus.RUNNING
        if status is not self._progress.status:
            self._progress.status = status
            self._progress.phase = status.value
            workflow.upsert_search_attributes([PHASE.value_set(status.value)])

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
        if step.kind == "tool":
            count_tool_call(step.name, outcome)

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
    """Why the workflow will not run this call at all, or None when policy lets it run
    (confirm-tier calls after a person's approval). Decided here, from the agent's grants
    and the user's preferences, never from anything the model says."""
    if grant is None:
        return f"the tool {name} is not available to this agent"
    if grant.policy is ToolPolicy.NEVER:
        return f"the tool {name} is disabled by policy"
    return None


def _not_approved(approval: ApprovalView) -> str:
    """What Claude is told when a person said no, or nobody said anything in time."""
    if approval.status is ApprovalStatus.EXPIRED:
        return f"the tool {approval.tool} was not run: nobody approved it before it expired"
    because = f": {approval.reason}" if approval.reason else " (no reason given)"
    return f"the tool {approval.tool} was not run: the user rejected it{because}"
