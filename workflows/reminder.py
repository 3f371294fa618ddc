"""ReminderWorkflow: a one-off reminder, delivered as a notification at its time."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from schemas.agent_task import NotificationInput
    from schemas.schedules import ReminderInput
    from workflows.timeouts import NOTIFY_RETRY, NOTIFY_TIMEOUT

REMINDER_KIND = "reminder"
TITLE_CHARS = 80


@workflow.defn
class ReminderWorkflow:
    @workflow.run
    async def run(self, reminder: ReminderInput) -> None:
        """Sleep durably until the reminder's time, then notify the user once (the
        notification is keyed by this workflow's ID)."""
        delay = reminder.remind_at - workflow.now()
        if delay.total_seconds() > 0:
            await workflow.sleep(delay, summary=f"until {reminder.remind_at.isoformat()}")
        await workflow.execute_activity_method(
            NotifyActivities.notify,
            NotificationInput(
                user_id=reminder.user_id,
                kind=REMINDER_KIND,
                title=f"Reminder: {reminder.text[:TITLE_CHARS]}",
                body=reminder.text,
                task_id=reminder.task_id,
                dedupe_key=f"{REMINDER_KIND}:{workflow.info().workflow_id}",
            ),
            start_to_close_timeout=NOTIFY_TIMEOUT,
            retry_policy=NOTIFY_RETRY,
            summary="notify: reminder",
        )
