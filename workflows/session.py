"""SessionWorkflow: one conversation, answering its messages one at a time, in order."""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.store import StoreActivities
    from schemas import search_attributes
    from schemas.agent_task import TaskStatus
    from schemas.session import (
        DropMessageInput,
        QueuedMessage,
        QueuedTasks,
        RecordSessionMessageInput,
        SessionInput,
        SessionMessage,
        SessionResult,
        turn_task,
    )
    from workflows.agent_task import AgentTaskWorkflow, task_workflow_id
    from workflows.timeouts import STORE_RETRY, STORE_TIMEOUT


@workflow.defn
class SessionWorkflow:
    """An entity workflow per conversation (ID `session-<session id>`). Messages arrive as
    the `post_message` update and wait in a queue; each is answered by a child
    `AgentTaskWorkflow` that sees the session's earlier turns. The transcript lives in
    Postgres, so history per turn is constant; the run continues as new when Temporal
    suggests it, carrying the queue, and closes after an idle period."""

    @workflow.init
    def __init__(self, session: SessionInput) -> None:
        self._session = session
        self._queue: list[QueuedMessage] = list(session.queue)
        # Messages are recorded one at a time, so their transcript order is arrival order.
        self._recording = asyncio.Lock()
        self._turns_answered = 0
        self._answering: str | None = None  # the task id of the turn under way

    @workflow.update
    async def post_message(self, message: SessionMessage) -> str:
        """Queue a user message; returns the id of the task that will answer it."""
        async with self._recording:
            recorded = await workflow.execute_activity_method(
                StoreActivities.record_session_message,
                RecordSessionMessageInput(
                    session_id=self._session.session_id,
                    user_id=self._session.user_id,
                    agent=self._session.agent,
                    message=message,
                ),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
                summary="record the message",
            )
            if recorded.is_new:
                self._queue.append(QueuedMessage(seq=recorded.seq, **message.model_dump()))
        return message.task_id

    @post_message.validator
    def _check_message(self, message: SessionMessage) -> None:
        if not message.text.strip():
            raise ApplicationError("text: the message is empty", type="EmptyMessage")

    @workflow.update
    async def drop_message(self, request: DropMessageInput) -> bool:
        """Take a message out of the queue before its turn, and record its task cancelled.
        False when it is not waiting (its turn is under way or over)."""
        waiting = [
            message
            for message in self._queue
            if message.task_id == request.task_id and message.task_id != self._answering
        ]
        if not waiting:
            return False
        self._queue.remove(waiting[0])
        await self._cancel_tasks([request.task_id], "record the dropped message as cancelled")
        return True

    @workflow.query
    def queued(self) -> list[QueuedMessage]:
        """The messages waiting for their turn (the first may be being answered)."""
        return self._queue

    @workflow.run
    async def run(self, session: SessionInput) -> SessionResult:
        try:
            return await self._serve(session)
        except asyncio.CancelledError:
            # Cancelled (e.g. from the Web UI): the turn in progress cancelled itself; the
            # messages still waiting will never be answered, and say so.
            await self._cancel_tasks(
                [message.task_id for message in self._queue],
                "record the waiting messages as cancelled",
            )
            raise

    async def _cancel_tasks(self, task_ids: list[str], summary: str) -> None:
        await workflow.execute_activity_method(
            StoreActivities.cancel_queued_tasks,
            QueuedTasks(task_ids=task_ids),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
            summary=summary,
        )

    async def _serve(self, session: SessionInput) -> SessionResult:
        """Answer messages as they come until the session has been idle long enough."""
        idle = timedelta(seconds=session.idle_timeout_seconds)
        while True:
            try:
                await workflow.wait_condition(lambda: bool(self._queue), timeout=idle)
            except TimeoutError:
                # Idle: close, unless a message arrived while its handler finished.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._queue:
                    return SessionResult(
                        session_id=session.session_id, turns_answered=self._turns_answered
                    )
                continue
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(session.model_copy(update={"queue": self._queue}))
            message = self._queue[0]
            await self._answer(message)
            self._queue.remove(message)
            self._turns_answered += 1

    def _should_continue_as_new(self) -> bool:
        limit = self._session.turns_per_run
        return workflow.info().is_continue_as_new_suggested() or (
            limit is not None and self._turns_answered >= limit
        )

    async def _answer(self, message: QueuedMessage) -> None:
        """Run the task that answers `message`, and wait for it to end however it ends:
        the task records its own outcome, which is the turn's state."""
        session = self._session
        task = turn_task(session.session_id, session.user_id, session.agent, message)
        self._answering = task.task_id
        try:
            await workflow.execute_child_workflow(
                AgentTaskWorkflow.run,
                task,
                id=task_workflow_id(task.task_id),
                search_attributes=search_attributes.of_work(
                    session.user_id, task.channel, task.agent, TaskStatus.RUNNING.value
                ),
                static_summary=f"turn {message.seq}: {message.text[:80]}",
                # Closing the session (e.g. cancelling it) cancels the turn, which records it.
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
        except ChildWorkflowError as error:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The session itself is being cancelled, and the turn with it.
                raise asyncio.CancelledError() from error
            # e.g. the user cancelled this turn's task: the session goes on with the next.
            workflow.logger.info("turn ended without an answer", extra={"error": str(error)})
