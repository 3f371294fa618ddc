"""Schedules through REST, on the Temporal dev server: created with a cron and a timezone
they show their next runs in that zone; bad input is refused naming the field; a trigger
runs the task and its result lands in the inbox; a firing while the last run waits for an
approval is skipped; pause, resume, change and delete reach Temporal; every change is
audited; another user's schedule does not exist for them."""

import itertools
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from core.db import session_scope
from schemas import search_attributes
from schemas.tables import AuditLog, Note, Schedule
from tests.conftest import (
    Account,
    MakeAccount,
    assert_replays,
    eventually,
    wait_for_status,
    wait_until_finished,
)
from tests.fake_anthropic import FakeAnthropic, ToolCall, text, tool_use
from workflows.scheduled_run import ScheduledRunWorkflow

NEW_YORK = ZoneInfo("America/New_York")
ONCE_A_YEAR = "0 0 1 1 *"


async def create(api: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    body = {"name": "brief", "prompt": "Summarise my notes"} | fields
    response = await api.post("/v1/schedules", json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def runs(view: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(at) for at in view["next_runs"]]


async def audit_actions(
    sessions: async_sessionmaker[AsyncSession], account: Account
) -> list[tuple[str, str]]:
    async with session_scope(sessions) as session:
        rows = await session.exec(
            select(AuditLog).where(AuditLog.user_id == account.id).order_by(col(AuditLog.id))
        )
        return [(row.action, row.resource_id) for row in rows]


async def test_schedule_shows_next_runs_in_its_timezone_and_follows_every_change(
    api: httpx.AsyncClient,
    temporal_client: Client,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    created = await create(
        api, alice, name="morning brief", cron="0 9 * * 1-5", timezone="America/New_York"
    )
    schedule_id = created["id"]
    assert (created["name"], created["cron"], created["every"]) == (
        "morning brief",
        "0 9 * * 1-5",
        None,
    )
    assert (created["timezone"], created["paused"], created["agent"]) == (
        "America/New_York",
        False,
        "assistant",
    )
    next_runs = runs(created)
    assert len(next_runs) == 5 and next_runs == sorted(next_runs)
    for at in next_runs:  # 09:00 on weekdays, written with New York's own offset
        assert (at.hour, at.minute, at.weekday() < 5) == (9, 0, True)
        assert at.utcoffset() == at.astimezone(NEW_YORK).utcoffset()

    listed = (await api.get("/v1/schedules", headers=alice.headers)).json()["items"]
    assert [item["id"] for item in listed] == [schedule_id]
    temporal = temporal_client.get_schedule_handle(f"schedule-{alice.id}-{schedule_id}")
    described = await temporal.describe()
    assert described.typed_search_attributes.get(search_attributes.USER_ID) == alice.id
    assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
    assert described.schedule.policy.catchup_window == timedelta(hours=1)

    paused = await api.post(f"/v1/schedules/{schedule_id}/pause", headers=alice.headers)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert paused.json()["next_runs"] == []
    fetched = (await api.get(f"/v1/schedules/{schedule_id}", headers=alice.headers)).json()
    assert fetched["paused"] is True and (await temporal.describe()).schedule.state.paused

    resumed = await api.post(f"/v1/schedules/{schedule_id}/resume", headers=alice.headers)
    assert resumed.json()["paused"] is False and runs(resumed.json()) == next_runs

    evening = await api.patch(
        f"/v1/schedules/{schedule_id}", json={"cron": "30 18 * * *"}, headers=alice.headers
    )
    assert evening.status_code == 200, evening.text
    evening_runs = runs(evening.json())
    assert all((at.hour, at.minute) == (18, 30) for at in evening_runs)
    assert {later - earlier for earlier, later in itertools.pairwise(evening_runs)} == {
        timedelta(days=1)
    }
    hourly = await api.patch(
        f"/v1/schedules/{schedule_id}",
        json={"every": "2h", "prompt": "Check the weather"},
        headers=alice.headers,
    )
    assert (hourly.json()["cron"], hourly.json()["every"]) == (None, "2h")
    hourly_runs = runs(hourly.json())
    assert {later - earlier for earlier, later in itertools.pairwise(hourly_runs)} == {
        timedelta(hours=2)
    }
    action = (await temporal.describe()).schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert "Check the weather" in str(action.args)
    paused_by_patch = await api.patch(
        f"/v1/schedules/{schedule_id}", json={"paused": True}, headers=alice.headers
    )
    assert paused_by_patch.json()["paused"] is True
    assert (paused_by_patch.json()["every"], paused_by_patch.json()["next_runs"]) == ("2h", [])

    deleted = await api.delete(f"/v1/schedules/{schedule_id}", headers=alice.headers)
    assert deleted.status_code == 204
    gone = await api.get(f"/v1/schedules/{schedule_id}", headers=alice.headers)
    assert gone.status_code == 404
    assert (await api.get("/v1/schedules", headers=alice.headers)).json()["items"] == []
    with pytest.raises(RPCError) as missing:
        await temporal.describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND

    assert await audit_actions(sessions, alice) == [
        (f"schedule.{action}", schedule_id)
        for action in ("create", "pause", "resume", "update", "update", "update", "delete")
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every morning"}, "cron"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"every": "30s"}, "every"),
        ({"every": "soon"}, "every"),
        ({"cron": "0 9 * * *", "every": "1h"}, "cron, every"),
        ({}, "cron, every"),
        ({"cron": "0 9 * * *", "agent": "nobody"}, "agent"),
    ],
)
async def test_bad_schedules_are_refused_naming_the_field(
    api: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
    body: dict[str, Any],
    field: str,
) -> None:
    alice = await make_account()
    response = await api.post(
        "/v1/schedules", json={"name": "n", "prompt": "p"} | body, headers=alice.headers
    )

    assert response.status_code == 422, response.text
    assert field in response.text
    async with session_scope(sessions) as session:
        rows = await session.exec(select(Schedule).where(Schedule.user_id == alice.id))
        assert list(rows) == []
    assert await audit_actions(sessions, alice) == []


async def test_a_bad_change_leaves_the_schedule_as_it_was(
    api: httpx.AsyncClient,
    temporal_client: Client,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    created = await create(api, alice, cron="0 9 * * *", timezone="UTC")

    for change, field in (
        ({"cron": "0 25 * * *"}, "cron"),
        ({"timezone": "Nowhere/Special"}, "timezone"),
        ({"every": "59s"}, "every"),
    ):
        refused = await api.patch(
            f"/v1/schedules/{created['id']}", json=change, headers=alice.headers
        )
        assert refused.status_code == 422 and field in refused.text, refused.text

    kept = (await api.get(f"/v1/schedules/{created['id']}", headers=alice.headers)).json()
    assert (kept["cron"], kept["every"], kept["timezone"]) == ("0 9 * * *", None, "UTC")
    assert kept["next_runs"] == created["next_runs"]
    assert await audit_actions(sessions, alice) == [("schedule.create", created["id"])]


async def test_triggered_schedule_runs_its_task_and_the_result_lands_in_the_inbox(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.script(text("Your morning brief: nothing urgent today."))
    created = await create(api, alice, prompt="Write my morning brief", cron=ONCE_A_YEAR)

    triggered = await api.post(f"/v1/schedules/{created['id']}/trigger", headers=alice.headers)
    assert triggered.status_code == 202, triggered.text

    async def inbox() -> list[dict[str, Any]]:
        response = await api.get("/v1/notifications", headers=alice.headers)
        items: list[dict[str, Any]] = response.json()["items"]
        return [item for item in items if item["kind"] == "task_completed"]

    [notification] = await eventually(inbox, what="the scheduled task's notification")
    assert notification["body"] == "Your morning brief: nothing urgent today."
    [task] = (await api.get("/v1/tasks", headers=alice.headers)).json()["items"]
    assert (task["id"], task["channel"], task["prompt"], task["status"]) == (
        notification["task_id"],
        "scheduled",
        "Write my morning brief",
        "completed",
    )
    view = (await api.get(f"/v1/schedules/{created['id']}", headers=alice.headers)).json()
    assert view["runs"] == 1 and view["last_run_at"] is not None
    assert await audit_actions(sessions, alice) == [
        ("schedule.create", created["id"]),
        ("schedule.trigger", created["id"]),
    ]

    child = temporal_client.get_workflow_handle(f"task-{task['id']}")
    attributes = (await child.describe()).typed_search_attributes
    assert attributes.get(search_attributes.USER_ID) == alice.id
    assert attributes.get(search_attributes.CHANNEL) == "scheduled"
    description = await temporal_client.get_schedule_handle(
        f"schedule-{alice.id}-{created['id']}"
    ).describe()
    started = description.info.recent_actions[-1].action
    assert isinstance(started, ScheduleActionExecutionStartWorkflow)
    run = temporal_client.get_workflow_handle_for(ScheduledRunWorkflow.run, started.workflow_id)
    assert (await run.result()).task_id == task["id"]
    await assert_replays(run)
    await assert_replays(child)


async def test_a_schedule_can_post_into_a_session(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice, mallory = await make_account(), await make_account()
    fake_claude.script(text("We spoke about the garden."), text("Water the tomatoes today."))
    chat = (await api.post("/v1/sessions", json={}, headers=alice.headers)).json()
    first = await api.post(
        f"/v1/sessions/{chat['id']}/messages",
        json={"text": "Remember my garden"},
        headers=alice.headers,
    )
    assert first.status_code == 202, first.text
    await wait_until_finished(api, first.json()["task_id"], alice.headers)

    refused = await api.post(
        "/v1/schedules",
        json={"name": "x", "prompt": "x", "cron": ONCE_A_YEAR, "session_id": chat["id"]},
        headers=mallory.headers,
    )
    assert refused.status_code == 404
    with_agent = await api.post(
        "/v1/schedules",
        json={
            "name": "x",
            "prompt": "x",
            "cron": ONCE_A_YEAR,
            "session_id": chat["id"],
            "agent": "assistant",
        },
        headers=alice.headers,
    )
    assert with_agent.status_code == 422 and "agent" in with_agent.text
    created = await create(
        api,
        alice,
        prompt="What should I do in the garden?",
        cron=ONCE_A_YEAR,
        session_id=chat["id"],
    )
    assert created["session_id"] == chat["id"]

    triggered = await api.post(f"/v1/schedules/{created['id']}/trigger", headers=alice.headers)
    assert triggered.status_code == 202, triggered.text

    async def answered_turns() -> list[dict[str, Any]]:
        response = await api.get(f"/v1/sessions/{chat['id']}/messages", headers=alice.headers)
        turns: list[dict[str, Any]] = response.json()["items"]
        return turns if [turn["state"] for turn in turns] == ["answered", "answered"] else []

    turns = await eventually(answered_turns, what="the scheduled message's answer")
    assert [turn["text"] for turn in turns] == [
        "Remember my garden",
        "What should I do in the garden?",
    ]
    assert turns[1]["answer"] == "Water the tomatoes today."
    # The scheduled turn was answered with the session's context...
    assert "We spoke about the garden." in str(fake_claude.requests[1]["messages"])

    # ...and its answer was delivered to the inbox, as every scheduled result is.
    async def inbox() -> list[tuple[str, str]]:
        items = (await api.get("/v1/notifications", headers=alice.headers)).json()["items"]
        return [(n["kind"], n["task_id"]) for n in items]

    delivered = await eventually(inbox, what="the scheduled answer's notification")
    assert delivered == [("task_completed", turns[1]["task_id"])]

    description = await temporal_client.get_schedule_handle(
        f"schedule-{alice.id}-{created['id']}"
    ).describe()
    started = description.info.recent_actions[-1].action
    assert isinstance(started, ScheduleActionExecutionStartWorkflow)
    run = temporal_client.get_workflow_handle_for(ScheduledRunWorkflow.run, started.workflow_id)
    assert (await run.result()).task_id == turns[1]["task_id"]
    await assert_replays(run)


async def test_a_firing_is_skipped_while_the_last_run_awaits_approval(
    api: httpx.AsyncClient,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    async with session_scope(sessions) as session:
        session.add(Note(user_id=alice.id, path="old.md", content="stale"))
    fake_claude.script(tool_use(ToolCall("notes_delete", {"path": "old.md"})), text("Tidied."))
    created = await create(api, alice, prompt="Tidy my notes", cron=ONCE_A_YEAR)
    path = f"/v1/schedules/{created['id']}"

    await api.post(f"{path}/trigger", headers=alice.headers)

    async def tasks() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await api.get("/v1/tasks", headers=alice.headers)).json()[
            "items"
        ]
        return items

    [first] = await eventually(tasks, what="the first run")
    task = await wait_for_status(api, first["id"], alice.headers, frozenset({"awaiting_approval"}))
    second = await api.post(f"{path}/trigger", headers=alice.headers)
    assert second.status_code == 202

    async def skipped() -> bool:
        view = (await api.get(path, headers=alice.headers)).json()
        return bool(view["skipped_runs"] == 1)

    await eventually(skipped, what="the second firing being skipped")
    assert len(await tasks()) == 1

    approval_id = task["pending_approvals"][0]["id"]
    decided = await api.post(
        f"/v1/tasks/{task['id']}/approvals/{approval_id}",
        json={"decision": "approve"},
        headers=alice.headers,
    )
    assert decided.status_code == 200
    finished = await wait_until_finished(api, task["id"], alice.headers)
    assert finished["result"]["text"] == "Tidied."
    assert len(fake_claude.requests) == 2  # one task's two turns; no second task ran


async def test_another_users_schedule_is_not_found_on_any_route(
    api: httpx.AsyncClient,
    temporal_client: Client,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice, mallory = await make_account(), await make_account()
    created = await create(api, alice, cron=ONCE_A_YEAR)
    path = f"/v1/schedules/{created['id']}"

    attempts = [
        api.get(path, headers=mallory.headers),
        api.patch(path, json={"cron": "* * * * *"}, headers=mallory.headers),
        api.post(f"{path}/trigger", headers=mallory.headers),
        api.post(f"{path}/pause", headers=mallory.headers),
        api.post(f"{path}/resume", headers=mallory.headers),
        api.delete(path, headers=mallory.headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 404, (response.request.method, response.request.url)
    assert (await api.get("/v1/schedules", headers=mallory.headers)).json()["items"] == []

    kept = (await api.get(path, headers=alice.headers)).json()
    assert (kept["cron"], kept["paused"], kept["runs"]) == (ONCE_A_YEAR, False, 0)
    assert await audit_actions(sessions, mallory) == []
    assert await audit_actions(sessions, alice) == [("schedule.create", created["id"])]
