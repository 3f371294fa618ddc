"""ReconcileTasksWorkflow: one pass that settles tasks whose workflow ended outside Keel
(see `activities.reconcile`). A Temporal Schedule per task queue (`reconcile_schedule_id`,
created by every worker at start) runs it every KEEL_RECONCILE_INTERVAL_SECONDS, one pass at
a time."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import ReconcileActivities
    from workflows.timeouts import RECONCILE_RETRY, RECONCILE_TIMEOUT


def reconcile_schedule_id(task_queue: str) -> str:
    return f"keel-reconcile-tasks-{task_queue}"


@workflow.defn
class ReconcileTasksWorkflow:
    @workflow.run
    async def run(self) -> int:
        """How many tasks this pass settled."""
        return await workflow.execute_activity_method(
            ReconcileActivities.settle_ended_tasks,
            start_to_close_timeout=RECONCILE_TIMEOUT,
            retry_policy=RECONCILE_RETRY,
            summary="settle tasks whose workflow ended outside Keel",
        )
