"""The Temporal worker: every workflow and activity, built once over shared clients."""

import asyncio
import os
from datetime import timedelta
from typing import Any

import anthropic
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
)
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.builtin_tools import builtin_registry
from activities.housekeeping import HousekeepingActivities
from activities.llm import LlmActivities
from activities.notify import NotifyActivities, TelegramChannel
from activities.sessions import SessionActivities
from activities.store import StoreActivities
from activities.telegram import TelegramActivities, telegram_bot
from activities.tools import ToolActivities
from core.agents import AgentCatalog
from core.db import create_engine, session_factory
from core.settings import Settings
from core.telemetry import metrics_runtime, tracing_interceptors
from core.temporal import connect_temporal
from schemas.housekeeping import HousekeepingInput
from workers.heap import freeze_startup_heap
from workflows.agent_task import AgentTaskWorkflow
from workflows.housekeeping import HousekeepingWorkflow, housekeeping_schedule_id
from workflows.reminder import ReminderWorkflow
from workflows.scheduled_run import ScheduledRunWorkflow
from workflows.session import SessionWorkflow
from workflows.telegram_delivery import TelegramDeliveryWorkflow

log = structlog.get_logger(__name__)

HEARTBEAT_THROTTLE = timedelta(seconds=3)

# Workflows run outside the sandbox. The sandbox re-imports a workflow's module for every run
# (each cached run held its own ~60 KB copy of `workflows.agent_task`, and every start or
# replay paid for the import), and it runs every payload's serialization-context lookup as
# code compiled and executed inside it: 12-15% of the worker's CPU per task under load
# (bench/README.md, Concurrency). Keel's workflow modules keep no module state and take time,
# randomness and I/O only through `workflow.*`; the sandbox checks that in the tests, where
# every workflow test replays its history through the fully sandboxed runner (`REPLAYER` in
# tests/conftest.py).
WORKFLOW_RUNNER = UnsandboxedWorkflowRunner()


def anthropic_client() -> anthropic.AsyncAnthropic | None:
    """The Claude client, or None for the offline scripted model when no key is set.
    Temporal retries Claude calls, so the SDK must not (`max_retries=0`)."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        log.warning("no ANTHROPIC_API_KEY: tasks run on the offline scripted model, not Claude")
        return None
    return anthropic.AsyncAnthropic(max_retries=0)


def build_worker(
    client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    claude: anthropic.AsyncAnthropic | None,
    task_queue: str | None = None,
    **worker_options: Any,
) -> Worker:
    """Keel's worker: every workflow and activity, with the limits from `settings`.
    `worker_options` go to Temporal's `Worker` as they are, over those (benchmarks try
    other limits, pollers and interceptors this way)."""
    tools = builtin_registry()
    agents = AgentCatalog.load(settings.agents_file)
    store = StoreActivities(sessions, agents, tools, settings)
    llm = LlmActivities(claude, sessions, tools)
    tool_runner = ToolActivities(sessions, tools)
    # Telegram only with a bot token: its chats join the notification channels.
    telegram_workflows: list[type] = []
    telegram_activities: list[Any] = []
    telegram_channels: list[TelegramChannel] = []
    if settings.telegram_bot_token is not None:
        telegram_workflows.append(TelegramDeliveryWorkflow)
        telegram = TelegramActivities(telegram_bot(settings), sessions)
        telegram_activities.append(telegram.send_message)
        telegram_channels.append(TelegramChannel(sessions))
    notify = NotifyActivities(sessions, telegram_channels)
    session_posts = SessionActivities(sessions, settings)
    queue = task_queue or settings.task_queue
    housekeeping = HousekeepingActivities(sessions, queue)
    options: dict[str, Any] = {
        "max_concurrent_activities": settings.worker_max_activities,
        "max_cached_workflows": settings.worker_max_cached_workflows,
        **worker_options,
    }
    return Worker(
        client,
        task_queue=queue,
        # Cancellation reaches a running activity in a heartbeat's reply: keep them frequent.
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        workflow_runner=WORKFLOW_RUNNER,
        workflows=[
            AgentTaskWorkflow,
            ScheduledRunWorkflow,
            ReminderWorkflow,
            SessionWorkflow,
            HousekeepingWorkflow,
            *telegram_workflows,
        ],
        activities=[
            store.begin_task,
            store.record_tool_result,
            store.last_reply_text,
            store.record_approval,
            store.record_question,
            store.finish_task,
            llm.call_model,
            tool_runner.run_tool,
            notify.notify,
            store.record_session_message,
            store.cancel_queued_tasks,
            llm.fold_session_context,
            session_posts.post_to_session,
            housekeeping.settle_ended_tasks,
            housekeeping.prune_old_records,
            *telegram_activities,
        ],
        **options,
    )


async def ensure_housekeeping_schedule(client: Client, settings: Settings) -> None:
    """The schedule of Keel's upkeep (settling tasks whose workflow ended outside Keel,
    pruning old records), one per task queue: created by the first worker to start, brought
    up to date by every later one."""
    schedule_id = housekeeping_schedule_id(settings.task_queue)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            HousekeepingWorkflow.run,
            HousekeepingInput(request_log_retention_days=settings.request_log_retention_days),
            id=schedule_id,
            task_queue=settings.task_queue,
            static_summary="Keel's upkeep: settle tasks ended outside Keel, prune old records",
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(
                    every=timedelta(seconds=settings.housekeeping_interval_seconds)
                )
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(schedule_id).update(
            lambda _current: ScheduleUpdate(schedule=schedule)
        )


async def run_worker(
    settings: Settings, database_url: str, stop: asyncio.Event, temporal_address: str | None = None
) -> None:
    """Poll Temporal until `stop` is set, then finish in-flight work and return. Serves
    Prometheus metrics on KEEL_WORKER_METRICS_PORT when it is set (and not 0)."""
    engine = create_engine(database_url)
    runtime = None
    if settings.worker_metrics_port:
        runtime = metrics_runtime(settings.worker_metrics_host, settings.worker_metrics_port)
        log.info(
            "worker metrics served",
            url=f"http://{settings.worker_metrics_host}:{settings.worker_metrics_port}/metrics",
        )
    client = await connect_temporal(
        temporal_address,
        settings=settings,
        runtime=runtime,
        interceptors=tracing_interceptors(settings.tracing, "keel-worker"),
    )
    worker = build_worker(client, settings, session_factory(engine), anthropic_client())
    await ensure_housekeeping_schedule(client, settings)
    freeze_startup_heap()
    log.info("worker polling", task_queue=settings.task_queue)
    async with worker:
        await stop.wait()
    await engine.dispose()
