"""TelegramDeliveryWorkflow: one message to one Telegram chat, retried on its own."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.telegram import TelegramActivities
    from schemas.telegram import TelegramDelivery
    from workflows.timeouts import TELEGRAM_RETRY, TELEGRAM_TIMEOUT


@workflow.defn
class TelegramDeliveryWorkflow:
    """Started by the notification service for each linked chat (ID
    `telegram-<chat id>-<notification key>`), so Telegram being slow, rate-limited or
    down never holds up, or fails, the task that notified: the notification is already in
    the web inbox, and this workflow keeps trying on its own."""

    @workflow.run
    async def run(self, delivery: TelegramDelivery) -> None:
        await workflow.execute_activity_method(
            TelegramActivities.send_message,
            delivery,
            start_to_close_timeout=TELEGRAM_TIMEOUT,
            retry_policy=TELEGRAM_RETRY,
            summary=f"send to Telegram chat {delivery.chat_id}",
        )
