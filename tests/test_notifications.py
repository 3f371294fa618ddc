"""Notifications against real Postgres: the notify activity, the `send_notification` tool
through the real tool activity, and the inbox over HTTP with real API keys, up to a task
on the real worker (fake Claude) that notifies its user."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.builtin_tools import builtin_registry
from activities.notify import NotifyActivities
from activities.tools import ToolActivities
from core.db import session_scope
from core.records import insert_task_row
from schemas.agent_task import NotificationInput, StartAgentTaskInput, ToolCall, ToolCallInput
from schemas.tables import Message, Notification
from tests.conftest import Account, MakeAccount, wait_until_finished
from tests.fake_anthropic import FakeAnthropic, text, tool_use
from tests.fake_anthropic import ToolCall as ScriptedToolCall

Sessions = async_sessionmaker[AsyncSession]


def note_for(account: Account, title: str, dedupe_key: str | None = None) -> NotificationInput:
    return NotificationInput(
        user_id=account.id,
        kind="task_completed",
        title=title,
        body=f"about {title}",
        dedupe_key=dedupe_key or f"test:{uuid.uuid4()}",
    )


async def notify(sessions: Sessions, note: NotificationInput) -> None:
    """Run the real activity, as a worker would."""
    await ActivityEnvironment().run(NotifyActivities(sessions).notify, note)


async def notifications_of(sessions: Sessions, account: Account) -> list[Notification]:
    async with session_scope(sessions) as session:
        rows = await session.exec(
            select(Notification)
            .where(Notification.user_id == account.id)
            .order_by(col(Notification.created_at))
        )
        return list(rows)


async def inbox(
    api: httpx.AsyncClient, account: Account, **params: Any
) -> tuple[list[str], str | None]:
    """The titles on one page of the caller's inbox, and its `next_cursor`."""
    response = await api.get("/v1/notifications", params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return [item["title"] for item in body["items"]], body["next_cursor"]


# The notify activity


async def test_a_retried_notification_is_stored_once(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    note = note_for(alice, "Report ready", dedupe_key=f"task-done:{uuid.uuid4()}")

    await notify(sessions, note)
    await notify(sessions, note)

    [stored] = await notifications_of(sessions, alice)
    assert (stored.kind, stored.title, stored.body, stored.read_at) == (
        "task_completed",
        "Report ready",
        "about Report ready",
        None,
    )
    await notify(sessions, note_for(alice, "Another"))
    assert [n.title for n in await notifications_of(sessions, alice)] == ["Report ready", "Another"]


async def test_notifying_an_unknown_user_fails_without_retrying(sessions: Sessions) -> None:
    ghost = Account(str(uuid.uuid4()), "ghost", "no-key")
    with pytest.raises(ApplicationError) as failure:
        await notify(sessions, note_for(ghost, "Hello?"))
    assert failure.value.type == "UnknownUser" and failure.value.non_retryable


# The inbox over HTTP


async def test_the_inbox_lists_newest_first_and_filters_unread(
    api: httpx.AsyncClient, sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    for title in ("first", "second", "third"):
        await notify(sessions, note_for(alice, title))
    [second] = [n for n in await notifications_of(sessions, alice) if n.title == "second"]
    read = await api.post(f"/v1/notifications/{second.id}/read", headers=alice.headers)
    assert read.status_code == 200, read.text

    assert await inbox(api, alice) == (["third", "second", "first"], None)
    assert await inbox(api, alice, unread="true") == (["third", "first"], None)
    assert await inbox(api, alice, unread="false") == (["second"], None)

    response = await api.get("/v1/notifications", headers=alice.headers)
    newest = response.json()["items"][0]
    assert set(newest) == {"id", "kind", "title", "body", "task_id", "created_at", "read_at"}
    assert (newest["kind"], newest["body"], newest["task_id"], newest["read_at"]) == (
        "task_completed",
        "about third",
        None,
        None,
    )


async def test_the_inbox_pages_through_every_notification_once(
    api: httpx.AsyncClient, sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    titles = [f"note {number}" for number in range(5)]
    for title in titles:
        await notify(sessions, note_for(alice, title))

    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page, cursor = await inbox(api, alice, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page) <= 2
        seen.extend(page)
        if cursor is None:
            break

    assert seen == list(reversed(titles))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "yesterday"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"unread": "maybe"}, "unread"),
    ],
)
async def test_bad_paging_input_is_refused_naming_the_field(
    api: httpx.AsyncClient, make_account: MakeAccount, params: dict[str, Any], field: str
) -> None:
    alice = await make_account()
    response = await api.get("/v1/notifications", params=params, headers=alice.headers)
    assert response.status_code == 422
    assert field in str(response.json()["detail"])


async def test_reading_marks_read_once_and_leaves_the_unread_list(
    api: httpx.AsyncClient, sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    await notify(sessions, note_for(alice, "Approval needed"))
    [note] = await notifications_of(sessions, alice)
    assert await inbox(api, alice, unread="true") == (["Approval needed"], None)

    first = await api.post(f"/v1/notifications/{note.id}/read", headers=alice.headers)
    again = await api.post(f"/v1/notifications/{note.id}/read", headers=alice.headers)

    assert first.status_code == 200 and again.status_code == 200
    assert first.json()["id"] == note.id and first.json()["read_at"] is not None
    assert again.json()["read_at"] == first.json()["read_at"]
    assert await inbox(api, alice, unread="true") == ([], None)
    assert await inbox(api, alice) == (["Approval needed"], None)


async def test_another_users_notifications_are_not_found(
    api: httpx.AsyncClient, sessions: Sessions, make_account: MakeAccount
) -> None:
    alice, mallory = await make_account(), await make_account()
    await notify(sessions, note_for(alice, "Your bank statement"))
    [note] = await notifications_of(sessions, alice)

    stolen = await api.post(f"/v1/notifications/{note.id}/read", headers=mallory.headers)
    unknown = await api.post(f"/v1/notifications/{uuid.uuid4()}/read", headers=alice.headers)

    assert stolen.status_code == 404 and unknown.status_code == 404
    assert await inbox(api, mallory) == ([], None)
    assert await inbox(api, alice, unread="true") == (["Your bank statement"], None)
    anonymous = await api.get("/v1/notifications")
    assert anonymous.status_code == 401


# The send_notification tool


async def started_task(sessions: Sessions, account: Account) -> str:
    task_id = str(uuid.uuid4())
    async with session_scope(sessions) as session:
        await insert_task_row(
            session, StartAgentTaskInput(task_id=task_id, user_id=account.id, prompt="test")
        )
    return task_id


async def test_send_notification_notifies_once_when_the_call_is_retried(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    task_id = await started_task(sessions, alice)
    tools = ToolActivities(sessions, builtin_registry())
    call = ToolCall(
        id="toolu_report",
        name="send_notification",
        arguments={"title": "Report ready", "body": "It is in notes/report.md."},
    )
    request = ToolCallInput(task_id=task_id, user_id=alice.id, call=call, result_seq=1)

    first = await ActivityEnvironment().run(tools.run_tool, request)
    # The worker died after the tool ran but before its result was recorded: Temporal
    # retries the activity, which runs the tool again.
    async with session_scope(sessions) as session:
        await session.exec(delete(Message).where(col(Message.task_id) == task_id))
    retried = await ActivityEnvironment().run(tools.run_tool, request)

    assert not first.is_error and not retried.is_error
    assert retried.preview == first.preview == "notification sent: Report ready"
    [stored] = await notifications_of(sessions, alice)
    assert (stored.kind, stored.title, stored.body, stored.task_id) == (
        "agent_message",
        "Report ready",
        "It is in notes/report.md.",
        task_id,
    )
    # Another call of the same task is another notification.
    other = call.model_copy(update={"id": "toolu_reminder"})
    await ActivityEnvironment().run(
        tools.run_tool, request.model_copy(update={"call": other, "result_seq": 2})
    )
    assert len(await notifications_of(sessions, alice)) == 2


@pytest.mark.parametrize(
    "arguments",
    [
        {"title": "  ", "body": "text"},
        {"title": "x" * 201, "body": "text"},
        {"title": "Hi", "body": ""},
        {"title": "Hi", "body": "x" * 4001},
        {"title": "Hi"},
    ],
)
async def test_send_notification_refuses_bad_arguments(
    sessions: Sessions, make_account: MakeAccount, arguments: dict[str, Any]
) -> None:
    alice = await make_account()
    task_id = await started_task(sessions, alice)
    tools = ToolActivities(sessions, builtin_registry())
    call = ToolCall(id="toolu_bad", name="send_notification", arguments=arguments)
    request = ToolCallInput(task_id=task_id, user_id=alice.id, call=call, result_seq=1)

    result = await ActivityEnvironment().run(tools.run_tool, request)

    assert result.is_error and result.preview.startswith("invalid arguments for send_notification")
    assert await notifications_of(sessions, alice) == []


async def test_a_task_notifies_its_user_through_the_inbox(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice, bob = await make_account(), await make_account()
    fake_claude.script(
        tool_use(
            ScriptedToolCall(
                "send_notification", {"title": "Tea time", "body": "The kettle has boiled."}
            )
        ),
        text("sent"),
    )

    created = await api.post(
        "/v1/tasks", json={"prompt": "Tell me when it is tea time"}, headers=alice.headers
    )
    assert created.status_code == 202, created.text
    task = await wait_until_finished(api, created.json()["id"], alice.headers)
    assert (task["status"], task["result"]["text"]) == ("completed", "sent")
    assert task["steps"][1]["name"] == "send_notification"
    assert task["steps"][1]["outcome"] == "ok"

    response = await api.get("/v1/notifications?unread=true", headers=alice.headers)
    [item] = response.json()["items"]
    assert (item["kind"], item["title"], item["body"], item["task_id"]) == (
        "agent_message",
        "Tea time",
        "The kettle has boiled.",
        task["id"],
    )
    assert await inbox(api, bob) == ([], None)
