"""One-off work: a task that starts later (`start_at`), a task's priority, and reminders
set by the `schedule_reminder` tool. The waits run on the time-skipping server: hours of
durable waiting in moments."""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.builtin_tools import ReminderRequest, schedule_reminder
from activities.tool_registry import ToolContext
from core.db import session_scope
from core.settings import Settings
from schemas import search_attributes
from schemas.agent_task import (
    TERMINAL_STATUSES,
    DecideApprovalInput,
    TaskProgress,
    TaskStatus,
)
from schemas.tables import Notification, Task
from tests.conftest import (
    MakeAccount,
    assert_replays,
    start_task,
    wait_until_finished,
)
from tests.fake_anthropic import FakeAnthropic, ToolCall, text, tool_use
from workers.worker import build_worker
from workflows.agent_task import AgentTaskWorkflow
from workflows.reminder import ReminderWorkflow


def later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


@pytest.fixture
async def skipping_worker(
    time_skipping: WorkflowEnvironment,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
) -> AsyncIterator[Worker]:
    """Keel's worker on the time-skipping server, Claude pointed at the fake."""
    claude = anthropic.AsyncAnthropic(api_key="test", base_url=fake_claude.base_url, max_retries=0)
    worker = build_worker(
        time_skipping.client, settings, sessions, claude, task_queue=f"skip-{uuid.uuid4()}"
    )
    async with worker:
        yield worker
    await claude.close()


async def progress_until(
    handle: WorkflowHandle[AgentTaskWorkflow, Any], wanted: set[TaskStatus]
) -> TaskProgress:
    """Query the task until its status is one of `wanted`. Queries do not let the
    time-skipping server skip time, so this observes the task as it waits."""
    for _ in range(300):
        try:
            progress = await handle.query(AgentTaskWorkflow.progress)
        except Exception:  # before its first workflow task, the task has no progress yet
            progress = None
        if progress is not None and progress.status in wanted:
            return progress
        await asyncio.sleep(0.05)
    raise AssertionError(f"the task never reached {wanted}")


async def test_a_task_with_start_at_waits_durably_until_then(
    time_skipping: WorkflowEnvironment,
    skipping_worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.script(text("Good morning!"))
    start_at = (await time_skipping.get_current_time()) + timedelta(hours=2)
    handle = await start_task(
        time_skipping.client, skipping_worker, alice, "Say good morning", start_at=start_at
    )

    waiting = await progress_until(handle, {TaskStatus.SCHEDULED})
    assert waiting.phase == "scheduled" and waiting.steps == []
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(search_attributes.PHASE) == "scheduled"
    assert fake_claude.requests == []

    result = await handle.result()  # the server skips the two hours

    assert (result.status, result.text) == (TaskStatus.COMPLETED, "Good morning!")
    done = await handle.query(AgentTaskWorkflow.progress)
    assert done.steps[0].started_at >= start_at
    async with session_scope(sessions) as session:
        row = await session.get(Task, result.task_id)
    assert row is not None and row.status == "completed"
    assert row.start_at == start_at
    await assert_replays(handle)


async def test_a_reminder_arrives_as_a_notification_at_its_time(
    time_skipping: WorkflowEnvironment,
    skipping_worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    remind_at = (await time_skipping.get_current_time()) + timedelta(hours=3)
    call = ToolCall(
        "schedule_reminder",
        {"when": remind_at.isoformat(), "text": "Call mum"},
        id=f"toolu_{uuid.uuid4().hex}",
    )
    fake_claude.script(tool_use(call), text("I will remind you at three."))
    handle = await start_task(time_skipping.client, skipping_worker, alice, "Remind me")

    # A confirm-tier tool: nothing is set until a person approves it.
    asking = await progress_until(handle, {TaskStatus.AWAITING_APPROVAL})
    [approval] = asking.pending_approvals
    assert approval.tool == "schedule_reminder"
    await handle.execute_update(
        AgentTaskWorkflow.decide_approval,
        DecideApprovalInput(approval_id=approval.id, decision="approve", decided_by=alice.id),
    )
    finished = await progress_until(handle, set(TERMINAL_STATUSES))
    assert finished.status is TaskStatus.COMPLETED

    async def reminders() -> list[Notification]:
        async with session_scope(sessions) as session:
            rows = await session.exec(
                select(Notification).where(
                    Notification.user_id == alice.id, Notification.kind == "reminder"
                )
            )
            return list(rows)

    assert await reminders() == []  # not yet: it is three hours away
    reminder = time_skipping.client.get_workflow_handle_for(
        ReminderWorkflow.run, f"reminder-{finished.task_id}-{call.id}"
    )
    # Skipping time unlocks only while awaiting a handle the test client started itself.
    await time_skipping.sleep(timedelta(hours=3))
    await reminder.result()

    [note] = await reminders()
    assert (note.title, note.body, note.task_id) == (
        "Reminder: Call mum",
        "Call mum",
        finished.task_id,
    )
    assert await time_skipping.get_current_time() >= remind_at
    await assert_replays(reminder)
    await assert_replays(handle)


async def test_a_reminder_in_the_past_or_without_a_timezone_is_an_error_for_claude(
    api: httpx.AsyncClient,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    allowed = await api.put(
        "/v1/me/tool-preferences/schedule_reminder",
        json={"preference": "always_allow"},
        headers=alice.headers,
    )
    assert allowed.status_code == 200
    fake_claude.script(
        tool_use(
            ToolCall("schedule_reminder", {"when": later(hours=-1).isoformat(), "text": "a"}),
            ToolCall("schedule_reminder", {"when": "2031-01-01T09:00:00", "text": "b"}),
        ),
        text("Those times did not work."),
    )
    created = await api.post("/v1/tasks", json={"prompt": "remind me"}, headers=alice.headers)
    await wait_until_finished(api, created.json()["id"], alice.headers)

    past, naive = fake_claude.requests[1]["messages"][-1]["content"]
    assert past["is_error"] and "not in the future" in past["content"]
    assert naive["is_error"] and "timezone" in naive["content"]


async def test_start_at_over_rest_shows_scheduled_and_can_be_cancelled(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    start_at = later(hours=1).replace(microsecond=0)
    created = await api.post(
        "/v1/tasks",
        json={"prompt": "Later, please", "start_at": start_at.isoformat()},
        headers=alice.headers,
    )
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "scheduled"
    task_id = created.json()["id"]

    view = (await api.get(f"/v1/tasks/{task_id}", headers=alice.headers)).json()
    assert (view["status"], view["phase"]) == ("scheduled", "scheduled")
    assert datetime.fromisoformat(view["start_at"]) == start_at
    listed = await api.get("/v1/tasks?status=scheduled", headers=alice.headers)
    assert [task["id"] for task in listed.json()["items"]] == [task_id]

    cancelled = await api.post(f"/v1/tasks/{task_id}/cancel", headers=alice.headers)
    assert cancelled.status_code == 202
    ended = await wait_until_finished(api, task_id, alice.headers)
    assert ended["status"] == "cancelled" and ended["steps"] == []
    assert fake_claude.requests == []
    await assert_replays(temporal_client.get_workflow_handle(f"task-{task_id}"))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"start_at": "2020-01-01T09:00:00+00:00"}, "start_at"),
        ({"start_at": "2031-01-01T09:00:00"}, "start_at"),
        ({"start_at": "tomorrow"}, "start_at"),
        ({"priority": 0}, "priority"),
        ({"priority": 6}, "priority"),
    ],
)
async def test_bad_start_at_or_priority_is_refused_naming_the_field(
    api: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
    fields: dict[str, Any],
    field: str,
) -> None:
    alice = await make_account()
    response = await api.post("/v1/tasks", json={"prompt": "hello"} | fields, headers=alice.headers)

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    async with session_scope(sessions) as session:
        assert list(await session.exec(select(Task).where(Task.user_id == alice.id))) == []


async def test_priority_reaches_temporal(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.script(text("urgent: done"), text("whenever: done"))
    keys = {}
    for priority in (1, None):
        body = {"prompt": "go"} | ({"priority": priority} if priority else {})
        created = await api.post("/v1/tasks", json=body, headers=alice.headers)
        task_id = created.json()["id"]
        await wait_until_finished(api, task_id, alice.headers)
        described = await temporal_client.get_workflow_handle(f"task-{task_id}").describe()
        keys[priority] = described.raw_description.workflow_execution_info.priority.priority_key
    assert keys == {1: 1, None: 0}  # 0: unset, Temporal's default (3)


async def test_a_retried_reminder_call_sets_one_reminder(
    worker: Worker,
    temporal_client: Client,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    context = ToolContext(
        user_id=alice.id,
        task_id=str(uuid.uuid4()),
        tool_use_id=f"toolu_{uuid.uuid4().hex}",
        sessions=sessions,
    )
    call = ReminderRequest(when=later(seconds=2), text="Stretch")
    environment = ActivityEnvironment(client=temporal_client)
    environment.info = dataclasses.replace(environment.info, task_queue=worker.task_queue)
    reminder = temporal_client.get_workflow_handle(
        f"reminder-{context.task_id}-{context.tool_use_id}"
    )

    # The same tool call, run again by a retried activity: before the reminder fires and
    # after it has.
    first = await environment.run(schedule_reminder, context, call)
    assert await environment.run(schedule_reminder, context, call) == first
    await reminder.result()
    assert await environment.run(schedule_reminder, context, call) == first

    runs = [run async for run in temporal_client.list_workflows(f"WorkflowId = '{reminder.id}'")]
    assert len(runs) == 1
    async with session_scope(sessions) as session:
        notes = await session.exec(select(Notification).where(Notification.user_id == alice.id))
        assert [note.body for note in notes] == ["Stretch"]
