"""HousekeepingWorkflow: one pass of Keel's upkeep (see `activities.housekeeping`): settle
the tasks whose workflow ended outside Keel, then prune records past their retention. A
Temporal Schedule per task queue (`housekeeping_schedule_id`, created by every worker at
start) runs it every KEEL_HOUSEKEEPING_INTERVAL_SECONDS, one pass at a time."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.housekeeping import HousekeepingActivities
    from schemas.housekeeping import HousekeepingInput, HousekeepingResult
    from workflows.timeouts import HOUSEKEEPING_RETRY, HOUSEKEEPING_TIMEOUT


def housekeeping_schedule_id(task_queue: str) -> str:
    return f"keel-housekeeping-{task_queue}"


@workflow.defn
class HousekeepingWorkflow:
    @workflow.run
    async def run(self, job: HousekeepingInput) -> HousekeepingResult:
        settled = await workflow.execute_activity_method(
            HousekeepingActivities.settle_ended_tasks,
            job,
            start_to_close_timeout=HOUSEKEEPING_TIMEOUT,
            retry_policy=HOUSEKEEPING_RETRY,
            summary="settle tasks whose workflow ended outside Keel",
        )
        pruned = await workflow.execute_activity_method(
            HousekeepingActivities.prune_old_records,
            job,
            start_to_close_timeout=HOUSEKEEPING_TIMEOUT,
            retry_policy=HOUSEKEEPING_RETRY,
            summary="prune request logs and Telegram updates past their retention",
        )
        return HousekeepingResult(settled_tasks=settled, pruned=pruned)
