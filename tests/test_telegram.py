"""The Telegram channel, end to end: Keel's real bot (python-telegram-bot, long polling or
webhook) and real worker against a fake Bot API on loopback, Claude faked as elsewhere."""

import asyncio
import io
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from activities.telegram import MESSAGE_LIMIT, split_message
from core.db import session_scope
from core.logging import configure_logging
from core.settings import Settings
from schemas.schedules import ReminderInput
from schemas.tables import Approval, ChannelLinkCode, Note, Task, utcnow
from tests.conftest import Account, MakeAccount, assert_replays, free_port, wait_for_status
from tests.fake_anthropic import FakeAnthropic, ToolCall, hang, text, tool_use
from tests.fake_telegram import FakeTelegram
from tests.test_dev_stack import DevStack, stack  # noqa: F401 (the `keel dev` fixture)
from workers.telegram import run_telegram
from workflows.reminder import ReminderWorkflow

TOKEN = "123456789:AAFakeTokenForKeelTests_abcdefghijk"


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
def settings(database_url: str, fake_telegram: FakeTelegram) -> Settings:
    """This module's settings: a bot token, and the bot pointed at the fake Bot API."""
    return Settings(
        task_queue=f"test-{uuid.uuid4()}",
        database_url=database_url,
        telegram_bot_token=TOKEN,
        telegram_base_url=fake_telegram.base_url,
    )


async def _run_bot(
    settings: Settings, database_url: str, temporal_address: str
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    running = asyncio.create_task(run_telegram(settings, database_url, stop, temporal_address))
    yield
    stop.set()
    await running


@pytest.fixture
async def bot(
    settings: Settings, database_url: str, temporal_address: str, worker: Worker
) -> AsyncIterator[None]:
    """`keel telegram` (long polling) beside Keel's worker."""
    async for _ in _run_bot(settings, database_url, temporal_address):
        yield


class LinkedChat:
    """A user and the chat they linked to Keel."""

    def __init__(self, account: Account, chat: int) -> None:
        self.account = account
        self.chat = chat


@pytest.fixture
async def linked(
    api: httpx.AsyncClient, bot: None, fake_telegram: FakeTelegram, make_account: MakeAccount
) -> LinkedChat:
    """A new user who has linked a new chat, with the bot running."""
    linked = LinkedChat(await make_account(), new_chat())
    await link(api, fake_telegram, linked.account, linked.chat)
    return linked


def new_chat() -> int:
    return random.randrange(10**8, 10**10)


async def link_code(api: httpx.AsyncClient, account: Account) -> str:
    created = await api.post("/v1/me/telegram-link", headers=account.headers)
    assert created.status_code == 201, created.text
    code: str = created.json()["code"]
    return code


async def link(
    api: httpx.AsyncClient, fake_telegram: FakeTelegram, account: Account, chat: int
) -> None:
    """Link `chat` to the account the way a user does: a code from the API, then /start."""
    fake_telegram.user_says(chat, f"/start {await link_code(api, account)}")
    await fake_telegram.wait_for_message(chat, "Linked")


async def task_of(sessions: async_sessionmaker[AsyncSession], prompt: str) -> Task:
    async with session_scope(sessions) as session:
        tasks = list(await session.exec(select(Task).where(Task.prompt == prompt)))
    assert len(tasks) == 1, tasks
    return tasks[0]


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    rows = message["reply_markup"]["inline_keyboard"]
    return [(button["text"], button["callback_data"]) for row in rows for button in row]


async def test_an_unlinked_chat_is_told_how_to_link_and_nothing_runs(
    bot: None,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    chat, prompt = new_chat(), f"delete all my notes {uuid.uuid4()}"
    fake_telegram.user_says(chat, prompt)
    reply = await fake_telegram.wait_for_message(chat, "/link CODE")
    assert "not linked" in reply["text"]
    assert "POST /v1/me/telegram-link" in reply["text"]
    # Telegram's command menu lists what the bot can do.
    assert {"new", "stop", "tasks", "help"} <= {c["command"] for c in fake_telegram.commands}
    fake_telegram.user_says(chat, "/tasks")
    await fake_telegram.wait_for(lambda: len(fake_telegram.messages_to(chat)) == 2)
    assert "not linked" in fake_telegram.messages_to(chat)[1]["text"]
    assert fake_claude.requests == []
    async with session_scope(sessions) as session:
        assert (await session.exec(select(Task).where(Task.prompt == prompt))).first() is None


async def test_link_codes_work_once_expire_and_are_stored_hashed(
    api: httpx.AsyncClient,
    bot: None,
    fake_telegram: FakeTelegram,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    ann = await make_account()
    chat, other_chat = new_chat(), new_chat()
    assert (await api.post("/v1/me/telegram-link")).status_code == 401

    code = await link_code(api, ann)
    async with session_scope(sessions) as session:
        assert await session.get(ChannelLinkCode, code) is None  # only its hash is kept
    fake_telegram.user_says(chat, f"/link {code}")
    linked = await fake_telegram.wait_for_message(chat, "Linked")
    assert ann.name in linked["text"]
    fake_telegram.user_says(other_chat, f"/link {code}")
    await fake_telegram.wait_for_message(other_chat, "already used")

    expired = await link_code(api, ann)
    async with session_scope(sessions) as session:
        await session.exec(
            update(ChannelLinkCode)
            .where(col(ChannelLinkCode.user_id) == ann.id, col(ChannelLinkCode.used_at).is_(None))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    fake_telegram.user_says(other_chat, f"/start {expired}")
    await fake_telegram.wait_for_message(other_chat, "expired")
    fake_telegram.user_says(other_chat, "/link nonsense")
    await fake_telegram.wait_for_message(other_chat, "not valid")

    fake_telegram.user_says(chat, "/unlink")
    await fake_telegram.wait_for_message(chat, "Unlinked")
    fake_telegram.user_says(chat, "hello again")
    await fake_telegram.wait_for_message(chat, "not linked")


async def test_a_message_gets_the_agents_answer_in_the_chat(
    api: httpx.AsyncClient,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    temporal_client: Client,
    linked: LinkedChat,
) -> None:
    ann, chat = linked.account, linked.chat
    prompt = f"What time is it? {uuid.uuid4()}"
    fake_claude.script(text("It is noon, Ann.", delay=0.2))

    fake_telegram.user_says(chat, prompt)
    answer = await fake_telegram.wait_for_message(chat, "It is noon")
    assert answer["text"] == "It is noon, Ann."  # the answer itself, not a notification
    assert {"chat_id": chat, "action": "typing"} in fake_telegram.chat_actions
    task = await task_of(sessions, prompt)
    assert (task.user_id, task.channel, task.status) == (ann.id, "telegram", "completed")
    # The web inbox keeps it too, whatever happens on Telegram.
    inbox = (await api.get("/v1/notifications", headers=ann.headers)).json()["items"]
    assert [n["body"] for n in inbox if n["task_id"] == task.id] == ["It is noon, Ann."]

    fake_telegram.user_says(chat, "/tasks")
    listing = await fake_telegram.wait_for_message(chat, "Your recent tasks")
    assert f"completed (telegram): {prompt}" in listing["text"]

    await assert_replays(temporal_client.get_workflow_handle(f"task-{task.id}"))
    await assert_replays(
        temporal_client.get_workflow_handle(f"telegram-{chat}-task:{task.id}:finished")
    )


async def test_the_chat_is_one_conversation_until_new(
    api: httpx.AsyncClient,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    temporal_client: Client,
    linked: LinkedChat,
) -> None:
    ann, chat = linked.account, linked.chat
    fake_claude.script(text("Nice to meet you, Ann."), text("You are Ann."), text("No idea."))

    fake_telegram.user_says(chat, "My name is Ann.")
    await fake_telegram.wait_for_message(chat, "Nice to meet you")
    fake_telegram.user_says(chat, "What is my name?")
    await fake_telegram.wait_for_message(chat, "You are Ann.")
    assert "My name is Ann." in json.dumps(fake_claude.requests[1]["messages"])

    fake_telegram.user_says(chat, "/new")
    await fake_telegram.wait_for_message(chat, "New conversation")
    fake_telegram.user_says(chat, "What is my name, now?")
    await fake_telegram.wait_for_message(chat, "No idea.")
    assert "My name is Ann." not in json.dumps(fake_claude.requests[2]["messages"])

    session = (await api.get(f"/v1/sessions/telegram-{chat}", headers=ann.headers)).json()
    assert session["channel"] == "telegram"
    await assert_replays(temporal_client.get_workflow_handle(f"session-telegram-{chat}"))


async def test_approve_in_the_chat_runs_the_tool_and_the_answer_arrives(
    api: httpx.AsyncClient,
    bot: None,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    temporal_client: Client,
    make_account: MakeAccount,
) -> None:
    ann = await make_account()
    chat, prompt = new_chat(), f"delete old.md {uuid.uuid4()}"
    async with session_scope(sessions) as session:
        session.add(Note(user_id=ann.id, path="old.md", content="stale"))
    await link(api, fake_telegram, ann, chat)
    fake_claude.script(
        tool_use(ToolCall("notes_delete", {"path": "old.md"})), text("Deleted old.md.")
    )

    fake_telegram.user_says(chat, prompt)
    ask = await fake_telegram.wait_for_message(chat, "Approve notes_delete?")
    task = await task_of(sessions, prompt)
    async with session_scope(sessions) as session:
        (approval,) = await session.exec(select(Approval).where(Approval.task_id == task.id))
    assert buttons(ask) == [
        ("Approve", f"approve:{approval.id}"),
        ("Reject", f"reject:{approval.id}"),
    ]

    # Someone else pressing the button (say, in a group) decides nothing.
    fake_telegram.press(ask, f"approve:{approval.id}", user_id=chat + 1)
    refusal = await fake_telegram.wait_for(lambda: fake_telegram.callback_answers)
    assert "Only the person who linked this chat" in refusal[0]["text"]

    fake_telegram.press(ask, f"approve:{approval.id}")
    await fake_telegram.wait_for(lambda: fake_telegram.edits)
    assert "Approved by Ann" in fake_telegram.edits[0]["text"]
    assert "reply_markup" not in fake_telegram.messages_to(chat)[1]  # the buttons are gone
    await fake_telegram.wait_for_message(chat, "Deleted old.md.")
    async with session_scope(sessions) as session:
        assert (await session.exec(select(Note).where(Note.user_id == ann.id))).first() is None
        decided = await session.get(Approval, approval.id)
    assert decided is not None
    assert (decided.status, decided.channel, decided.decided_by) == ("approved", "telegram", ann.id)
    await assert_replays(temporal_client.get_workflow_handle(f"task-{task.id}"))


async def test_the_agents_question_is_answered_by_replying(
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    temporal_client: Client,
    linked: LinkedChat,
) -> None:
    chat = linked.chat
    prompt = f"paint the fence {uuid.uuid4()}"
    fake_claude.script(
        tool_use(ToolCall("ask_user", {"question": "Which colour?"})), text("Green it is.")
    )

    fake_telegram.user_says(chat, prompt)
    question = await fake_telegram.wait_for_message(chat, "Which colour?")
    fake_telegram.user_says(chat, "green", reply_to=question)
    await fake_telegram.wait_for_message(chat, "passed your answer on")
    await fake_telegram.wait_for_message(chat, "Green it is.")
    assert "The user answered: green" in json.dumps(fake_claude.requests[-1]["messages"])
    task = await task_of(sessions, prompt)
    await assert_replays(temporal_client.get_workflow_handle(f"task-{task.id}"))


async def test_telegram_flood_control_is_waited_out_and_the_answer_arrives_once(
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    temporal_client: Client,
    linked: LinkedChat,
) -> None:
    chat = linked.chat
    prompt = f"hello {uuid.uuid4()}"
    fake_claude.script(text("Still here."))
    fake_telegram.flood(1, retry_after=2)

    fake_telegram.user_says(chat, prompt)
    await fake_telegram.wait_for_message(chat, "Still here.")
    assert fake_telegram.flood_refusals == 1
    assert [m["text"] for m in fake_telegram.messages_to(chat)].count("Still here.") == 1
    task = await task_of(sessions, prompt)
    delivery = temporal_client.get_workflow_handle(f"telegram-{chat}-task:{task.id}:finished")
    await delivery.result()
    history = await delivery.fetch_history()
    started = [
        event.activity_task_started_event_attributes
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert [attempt.attempt for attempt in started] == [2]  # one retry, as Telegram asked
    failure = started[0].last_failure.application_failure_info
    assert failure.type == "TelegramFlood"
    assert failure.next_retry_delay.seconds == 2
    await assert_replays(delivery)


async def test_a_retry_after_a_partly_sent_answer_sends_only_the_rest(
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    linked: LinkedChat,
) -> None:
    chat = linked.chat
    answer = "\n".join(f"line {number}: " + "x" * 90 for number in range(60))  # two parts
    fake_claude.script(text(answer))
    fake_telegram.flood(1, retry_after=1, after=1)  # the second part meets flood control

    fake_telegram.user_says(chat, f"a long story {uuid.uuid4()}")
    await fake_telegram.wait_for_message(chat, "line 59:")
    assert fake_telegram.flood_refusals == 1
    parts = [m["text"] for m in fake_telegram.messages_to(chat)][1:]  # after "Linked"
    assert len(parts) == 2 and parts[0].startswith("line 0:")  # the first part only once
    assert "\n".join(parts) == answer


async def test_a_user_at_the_task_limit_is_told_and_nothing_starts(
    settings: Settings,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    linked: LinkedChat,
) -> None:
    settings.max_running_tasks_per_user = 1
    chat = linked.chat
    fake_claude.script(hang(60))
    fake_telegram.user_says(chat, "first, a long one")
    await fake_telegram.wait_for(lambda: fake_claude.requests)
    second = f"second {uuid.uuid4()}"
    fake_telegram.user_says(chat, second)
    refusal = await fake_telegram.wait_for_message(chat, "too many unfinished tasks")
    assert refusal["text"].startswith("Not now:")
    async with session_scope(sessions) as session:
        assert (await session.exec(select(Task).where(Task.prompt == second))).first() is None
    fake_telegram.user_says(chat, "/stop")
    await fake_telegram.wait_for_message(chat, "Stopping")


async def test_a_chat_that_blocked_the_bot_loses_nothing(
    api: httpx.AsyncClient,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    temporal_client: Client,
    linked: LinkedChat,
) -> None:
    ann, chat = linked.account, linked.chat
    prompt = f"remind me {uuid.uuid4()}"
    fake_claude.script(text("Buy milk."))
    fake_telegram.block(chat)

    fake_telegram.user_says(chat, prompt)
    await fake_telegram.wait_for(lambda: fake_claude.requests)
    task = await task_of(sessions, prompt)
    delivery = temporal_client.get_workflow_handle(f"telegram-{chat}-task:{task.id}:finished")
    with pytest.raises(WorkflowFailureError) as failed:
        await delivery.result()
    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    cause = activity_error.cause
    assert isinstance(cause, ApplicationError) and cause.type == "TelegramRejected"
    # The task still completed, and its answer waits in the web inbox.
    view = await wait_for_status(api, task.id, ann.headers, frozenset({"completed"}))
    assert view["result"] == {"text": "Buy milk."}
    inbox = (await api.get("/v1/notifications", headers=ann.headers)).json()["items"]
    assert [n["body"] for n in inbox if n["task_id"] == task.id] == ["Buy milk."]
    await assert_replays(delivery)


async def test_a_redelivered_update_is_handled_once(
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    linked: LinkedChat,
) -> None:
    chat = linked.chat
    prompt = f"only once {uuid.uuid4()}"
    fake_claude.respond_with(lambda _body: text("One answer."))

    message = fake_telegram.user_says(chat, prompt)
    fake_telegram.queue(message)  # the same update_id again, in the same batch
    await fake_telegram.wait_for_message(chat, "One answer.")
    fake_telegram.queue(message)  # and once more, later
    fake_telegram.user_says(chat, "/help")  # handled after the redelivery, in order
    await fake_telegram.wait_for_message(chat, "/stop")
    await task_of(sessions, prompt)  # exactly one task
    assert len(fake_claude.requests) == 1
    assert [m["text"] for m in fake_telegram.messages_to(chat)].count("One answer.") == 1


async def test_stop_cancels_the_running_answer(
    api: httpx.AsyncClient,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    linked: LinkedChat,
) -> None:
    ann, chat = linked.account, linked.chat
    prompt = f"think hard {uuid.uuid4()}"
    fake_claude.script(hang(60))

    fake_telegram.user_says(chat, prompt)
    await fake_telegram.wait_for(lambda: fake_claude.requests)
    fake_telegram.user_says(chat, "/stop")
    await fake_telegram.wait_for_message(chat, "Stopping")
    task = await task_of(sessions, prompt)
    await wait_for_status(api, task.id, ann.headers, frozenset({"cancelled"}))
    fake_telegram.user_says(chat, "/stop")
    await fake_telegram.wait_for_message(chat, "Nothing is running")


async def test_notifications_of_other_tasks_reach_the_linked_chat(
    api: httpx.AsyncClient,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    linked: LinkedChat,
) -> None:
    ann, chat = linked.account, linked.chat
    fake_claude.script(text("The report is ready."))
    created = await api.post(
        "/v1/tasks", json={"prompt": "weekly report", "notify": True}, headers=ann.headers
    )
    assert created.status_code == 202
    note = await fake_telegram.wait_for_message(chat, "The report is ready.")
    assert note["text"] == "Task completed: weekly report\n\nThe report is ready."


async def test_a_reminder_arrives_in_the_linked_chat(
    worker: Worker,
    fake_telegram: FakeTelegram,
    temporal_client: Client,
    linked: LinkedChat,
) -> None:
    ann, chat = linked.account, linked.chat
    reminder = await temporal_client.start_workflow(
        ReminderWorkflow.run,
        ReminderInput(user_id=ann.id, remind_at=utcnow(), text="water the plants"),
        id=f"reminder-{uuid.uuid4()}",
        task_queue=worker.task_queue,
    )
    note = await fake_telegram.wait_for_message(chat, "water the plants")
    assert note["text"] == "Reminder: water the plants"
    await assert_replays(reminder)


async def test_the_token_never_reaches_the_logs(
    api: httpx.AsyncClient,
    bot: None,
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = (root.handlers[:], root.level, httpx_logger.level)
    written = io.StringIO()
    configure_logging("DEBUG", "json")
    root.handlers[0].setStream(written)  # type: ignore[attr-defined]
    httpx_logger.setLevel(logging.DEBUG)  # it logs every request URL, token included
    try:
        ann = await make_account()
        chat = new_chat()
        await link(api, fake_telegram, ann, chat)
        fake_claude.script(text("Logged answer."))
        fake_telegram.user_says(chat, "hello")
        await fake_telegram.wait_for_message(chat, "Logged answer.")
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        httpx_logger.setLevel(saved[2])
    logs = written.getvalue()
    assert "sendMessage" in logs and "[redacted-token]" in logs  # URLs were logged...
    assert TOKEN not in logs and TOKEN.split(":")[1] not in logs  # ...without the token


async def test_webhook_mode_takes_updates_only_with_the_secret(
    settings: Settings,
    database_url: str,
    temporal_address: str,
    worker: Worker,
    fake_telegram: FakeTelegram,
) -> None:
    port = free_port()
    webhook = settings.model_copy(
        update={
            "telegram_webhook_url": f"http://127.0.0.1:{port}/telegram/updates",
            "telegram_webhook_secret": SecretStr("s3cret-token"),
            "telegram_webhook_port": port,
        }
    )
    chat = new_chat()
    update_json = {
        "update_id": random.randrange(10**12),
        "message": {
            "message_id": 1,
            "date": 0,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": False, "first_name": "Ann"},
            "text": "hi",
        },
    }
    async for _ in _run_bot(webhook, database_url, temporal_address):
        await fake_telegram.wait_for(lambda: "setWebhook" in fake_telegram.calls)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _attempt in range(100):  # the server comes up just after setWebhook
                try:
                    refused = await client.post("/telegram/updates", json=update_json)
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert refused.status_code == 403
            wrong = {"X-Telegram-Bot-Api-Secret-Token": "guess"}
            assert (
                await client.post("/telegram/updates", json=update_json, headers=wrong)
            ).status_code == 403
            right = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}
            assert (
                await client.post("/telegram/updates", json=update_json, headers=right)
            ).status_code == 200
        await fake_telegram.wait_for_message(chat, "not linked")
    assert len(fake_telegram.messages_to(chat)) == 1


def test_long_answers_are_split_under_telegrams_limit() -> None:
    paragraph = "a line of the answer, with an emoji 🙂\n" * 300
    parts = split_message(paragraph)
    assert len(parts) > 1
    assert all(len(part.encode("utf-16-le")) // 2 <= MESSAGE_LIMIT for part in parts)
    assert all(part.endswith("🙂") for part in parts)  # broken at line ends
    assert "\n".join(parts) == paragraph.strip()
    assert split_message("x" * 9000) == ["x" * MESSAGE_LIMIT] * 2 + ["x" * 1000]


async def test_keel_dev_runs_the_bot_as_a_new_user_meets_it(
    stack: DevStack,  # noqa: F811 (pytest passes the imported fixture)
    fake_telegram: FakeTelegram,
    fake_claude: FakeAnthropic,
) -> None:
    """The issue's whole story through `keel dev`: link, talk, approve, flood control."""
    stack.env |= {
        "KEEL_TELEGRAM_BOT_TOKEN": TOKEN,
        "KEEL_TELEGRAM_BASE_URL": fake_telegram.base_url,
    }
    await asyncio.to_thread(stack.start)  # the fake answers the bot meanwhile
    created = await asyncio.to_thread(stack.keel, "users", "create", "ann")
    headers = {"Authorization": f"Bearer {created.strip().splitlines()[-1]}"}
    chat = new_chat()
    fake_telegram.user_says(chat, "hello?")
    await fake_telegram.wait_for_message(chat, "not linked")

    async with httpx.AsyncClient(base_url=stack.url) as api:
        code = (await api.post("/v1/me/telegram-link", headers=headers)).json()["code"]
        fake_telegram.user_says(chat, f"/start {code}")
        await fake_telegram.wait_for_message(chat, "Linked")

        fake_claude.script(
            tool_use(ToolCall("notes_write", {"path": "old.md", "content": "stale"})),
            tool_use(ToolCall("notes_delete", {"path": "old.md"})),
            text("Wrote and deleted old.md."),
        )
        fake_telegram.flood(1, retry_after=1)  # the approval request meets flood control
        fake_telegram.user_says(chat, "tidy my notes")
        ask = await fake_telegram.wait_for_message(chat, "Approve notes_delete?", within=60)
        assert fake_telegram.flood_refusals == 1
        fake_telegram.press(ask, buttons(ask)[0][1])
        await fake_telegram.wait_for_message(chat, "Wrote and deleted old.md.", within=60)
        (task,) = (await api.get("/v1/tasks", headers=headers)).json()["items"]
    assert [
        (step["name"], step["outcome"]) for step in task["steps"] if step["kind"] == "tool"
    ] == [
        ("notes_write", "ok"),
        ("notes_delete", "ok"),
    ]
    assert await asyncio.to_thread(stack.terminate) == 0
    logs = stack.log.read_text()
    assert "telegram bot up" in logs
    assert TOKEN not in logs and TOKEN.split(":")[1] not in logs
