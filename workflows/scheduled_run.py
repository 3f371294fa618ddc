"""ScheduledRunWorkflow: one firing of a schedule, running its agent task to the end."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.sessions import SessionActivities
    from schemas import search_attributes
    from schemas.agent_task import StartAgentTaskInput, TaskStatus
    from schemas.schedules import PostToSessionInput, ScheduledRunInput, ScheduledRunResult
    from workflows.timeouts import SESSION_POST_RETRY, SESSION_POST_TIMEOUT

from workflows.agent_task import AgentTaskWorkflow, task_workflow_id

SCHEDULED_CHANNEL = "scheduled"


@workflow.defn
class ScheduledRunWorkflow:
    @workflow.run
    async def run(self, run: ScheduledRunInput) -> ScheduledRunResult:
        """Start the schedule's task as a child and wait for it: while it runs (or waits
        for an approval) this run is open, so the schedule's overlap policy skips the next
        firing. The task notifies its user of the result, as every non-interactive task does.
        A schedule aimed at a session posts its prompt there instead, and is done: the
        session answers its messages one at a time, in order."""
        if run.session_id is not None:
            return await self._post_to_session(run, run.session_id)
        task = StartAgentTaskInput(
            task_id=str(workflow.uuid4()),
            user_id=run.user_id,
            prompt=run.prompt,
            agent=run.agent,
            channel=SCHEDULED_CHANNEL,
            notify=True,
        )
        result = await workflow.execute_child_workflow(
            AgentTaskWorkflow.run,
            task,
            id=task_workflow_id(task.task_id),
            search_attributes=search_attributes.of_work(
                run.user_id, SCHEDULED_CHANNEL, run.agent, TaskStatus.RUNNING.value
            ),
            static_summary=f"schedule {run.schedule_id}: {run.prompt[:80]}",
        )
        return ScheduledRunResult(task_id=task.task_id, status=result.status)

    async def _post_to_session(self, run: ScheduledRunInput, session_id: str) -> ScheduledRunResult:
        post = PostToSessionInput(
            session_id=session_id,
            user_id=run.user_id,
            text=run.prompt,
            task_id=str(workflow.uuid4()),
            channel=SCHEDULED_CHANNEL,
        )
        await workflow.execute_activity_method(
            SessionActivities.post_to_session,
            post,
            start_to_close_timeout=SESSION_POST_TIMEOUT,
            retry_policy=SESSION_POST_RETRY,
            summary=f"post into session {session_id}",
        )
        return ScheduledRunResult(task_id=post.task_id, status=TaskStatus.QUEUED)
