"""The worker's housekeeping schedule: a task whose workflow is ended outside Keel
(terminated in the Web UI or with `temporal workflow terminate`) is settled as failed, with
what its events showed, its stream closed and its user's cap freed; records past their
retention are pruned."""

import random
import uuid
from datetime import timedelta

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    WorkflowHandle,
)
from temporalio.worker import Worker

from core.db import session_scope
from core.session_client import session_workflow_id
from core.settings import Settings
from schemas.housekeeping import HousekeepingInput, HousekeepingResult, Pruned
from schemas.tables import RequestLog, TelegramUpdate, utcnow
from tests.conftest import MakeAccount, assert_replays, eventually, wait_for_status
from tests.fake_anthropic import FakeAnthropic, ToolCall, hang, tool_use
from tests.test_sessions import create_session, echo, say
from tests.test_task_progress import parse_events
from workers.worker import ensure_housekeeping_schedule
from workflows.housekeeping import HousekeepingWorkflow, housekeeping_schedule_id

Pass = WorkflowHandle[HousekeepingWorkflow, HousekeepingResult]


class Passes:
    """Runs housekeeping passes on the test's worker, keeping each for the replay check."""

    def __init__(self, client: Client, worker: Worker) -> None:
        self._client = client
        self._worker = worker
        self.handles: list[Pass] = []

    async def one(self, retention_days: int = 30) -> HousekeepingResult:
        handle = await self._client.start_workflow(
            HousekeepingWorkflow.run,
            HousekeepingInput(request_log_retention_days=retention_days),
            id=f"housekeeping-{uuid.uuid4()}",
            task_queue=self._worker.task_queue,
        )
        self.handles.append(handle)
        return await handle.result()

    async def until_settled(self, count: int) -> None:
        """Pass after pass until one settles `count` tasks (visibility lags a moment)."""

        async def settles() -> bool:
            return (await self.one()).settled_tasks == count

        await eventually(settles, what=f"a pass that settles {count} tasks")

    async def replay(self) -> None:
        for handle in self.handles:
            await assert_replays(handle)


async def test_a_task_terminated_in_temporal_is_settled_as_failed(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.script(tool_use(ToolCall("get_current_time", {})), hang(120))
    created = await api.post("/v1/tasks", json={"prompt": "what time?"}, headers=alice.headers)
    task_id = created.json()["id"]

    async def second_call_started() -> bool:
        return len(fake_claude.requests) == 2

    await eventually(second_call_started, what="the second Claude call")
    running = await wait_for_status(api, task_id, alice.headers, frozenset({"running"}))
    assert [step["name"] for step in running["steps"]][1] == "get_current_time"

    await temporal_client.get_workflow_handle(f"task-{task_id}").terminate("stuck, says ops")
    # Nothing in Keel saw it end: the row still says running.
    assert (await api.get(f"/v1/tasks/{task_id}", headers=alice.headers)).json()[
        "status"
    ] == "running"

    passes = Passes(temporal_client, worker)
    await passes.until_settled(1)
    task = (await api.get(f"/v1/tasks/{task_id}", headers=alice.headers)).json()
    assert task["status"] == "failed"
    assert task["error"] == "the task's workflow was terminated in Temporal"
    # What its events showed is kept: the model call and the tool call.
    assert [step["name"] for step in task["steps"]][1] == "get_current_time"
    events = parse_events(
        (await api.get(f"/v1/tasks/{task_id}/events", headers=alice.headers)).text
    )
    assert events[-1]["type"] == "task_finished" and events[-1]["status"] == "failed"
    listed = (await api.get("/v1/tasks?status=failed", headers=alice.headers)).json()
    assert [item["id"] for item in listed["items"]] == [task_id]

    # A second pass finds nothing left to settle; each pass replays.
    assert (await passes.one()).settled_tasks == 0
    await passes.replay()


async def test_messages_left_queued_by_a_terminated_session_are_settled(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo(delays={"first": 120}))
    session_id = await create_session(api, alice)
    first = await say(api, alice, session_id, "first")
    second = await say(api, alice, session_id, "second")

    async def first_asked() -> bool:
        return len(fake_claude.requests) == 1

    await eventually(first_asked, what="the first message's Claude call")
    await temporal_client.get_workflow_handle(session_workflow_id(session_id)).terminate()
    # The turn being answered is cancelled (its parent closed) and records that itself.
    await wait_for_status(api, first, alice.headers, frozenset({"cancelled"}))

    passes = Passes(temporal_client, worker)
    await passes.until_settled(1)
    queued = (await api.get(f"/v1/tasks/{second}", headers=alice.headers)).json()
    assert queued["status"] == "failed"
    assert queued["error"] == (
        "its session's workflow was terminated in Temporal before the message was answered"
    )
    # The next message starts the session again; a later pass leaves it alone.
    third = await say(api, alice, session_id, "third")
    answered = await wait_for_status(api, third, alice.headers, frozenset({"completed"}))
    assert answered["result"]["text"] == "re: third"
    assert (await passes.one()).settled_tasks == 0
    await passes.replay()


async def test_records_past_their_retention_are_pruned(
    worker: Worker, temporal_client: Client, sessions: async_sessionmaker[AsyncSession]
) -> None:
    now = utcnow()
    first_update = random.randrange(10**12, 10**13)
    stale = {f"stale-{uuid.uuid4()}" for _ in range(2)}
    kept = f"kept-{uuid.uuid4()}"
    logged_at = {request_id: now - timedelta(days=31) for request_id in stale}
    logged_at[kept] = now - timedelta(days=29)
    async with session_scope(sessions) as session:
        for request_id, at in logged_at.items():
            session.add(
                RequestLog(
                    created_at=at, request_id=request_id, method="GET", status=200, latency_ms=1.0
                )
            )
        session.add(TelegramUpdate(update_id=first_update, received_at=now - timedelta(days=8)))
        session.add(
            TelegramUpdate(update_id=first_update + 1, received_at=now - timedelta(hours=1))
        )

    result = await Passes(temporal_client, worker).one(retention_days=30)

    assert result.pruned == Pruned(request_logs=2, telegram_updates=1)
    async with session_scope(sessions) as session:
        left = await session.exec(
            select(RequestLog.request_id).where(col(RequestLog.request_id).in_([*stale, kept]))
        )
        assert list(left) == [kept]
        updates = await session.exec(
            select(TelegramUpdate.update_id).where(
                col(TelegramUpdate.update_id).in_([first_update, first_update + 1])
            )
        )
        assert list(updates) == [first_update + 1]


async def test_every_worker_start_keeps_one_housekeeping_schedule_up_to_date(
    temporal_client: Client, settings: Settings
) -> None:
    await ensure_housekeeping_schedule(temporal_client, settings)
    newer = settings.model_copy(
        update={"housekeeping_interval_seconds": 60, "request_log_retention_days": 7}
    )
    await ensure_housekeeping_schedule(temporal_client, newer)  # a second worker, newer settings

    handle = temporal_client.get_schedule_handle(housekeeping_schedule_id(settings.task_queue))
    schedule = (await handle.describe()).schedule
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    assert schedule.action.workflow == "HousekeepingWorkflow"
    assert schedule.action.task_queue == settings.task_queue
    [job] = await temporal_client.data_converter.decode(schedule.action.args, [HousekeepingInput])
    assert job.request_log_retention_days == 7
    assert schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(seconds=60))]
    await handle.delete()
