"""Sessions end to end: the REST routes with real API keys, SessionWorkflow on the real
worker, real Postgres, and the real SDK talking to the fake Messages API. Workflow tests
replay every run they produced."""

import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.worker import Worker

from activities.context import SUMMARY_SHARE, estimate_tokens
from activities.offline_model import OFFLINE_LABEL
from core.session_client import (
    SessionNotFound,
    post_message,
    session_workflow_id,
    start_new_conversation,
)
from core.settings import Settings
from schemas.session import SessionInput
from tests.conftest import Account, MakeAccount, assert_replays, eventually, wait_for_status
from tests.fake_anthropic import FakeAnthropic, Reply, text
from workers.worker import build_worker
from workflows.agent_task import task_workflow_id
from workflows.session import SessionWorkflow

BRIEF_BUDGET = 300
AGENTS = f"""
[assistant]
system_prompt = "You are a test assistant."
tools = ["get_current_time"]

[brief]
system_prompt = "You are a test assistant with a short memory."
tools = []
context_tokens = {BRIEF_BUDGET}
"""


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """This module's settings: its own task queue, and an agent with a small context."""
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    return Settings(
        task_queue=f"test-{uuid.uuid4()}", database_url=database_url, agents_file=agents
    )


def last_user_text(body: dict[str, Any]) -> str:
    """What the user said last (after any summary block that precedes it)."""
    last_block: dict[str, Any] = body["messages"][-1]["content"][-1]
    return str(last_block.get("text", ""))


def all_text(body: dict[str, Any]) -> str:
    return " ".join(
        block.get("text", "")
        for message in body["messages"]
        for block in message["content"]
        if isinstance(block, dict)
    )


def is_summary_request(body: dict[str, Any]) -> bool:
    # Task steps send the system prompt as cacheable blocks; the summariser as plain text.
    return isinstance(body.get("system"), str)


def echo(delays: dict[str, float] | None = None) -> Any:
    """A model that answers "re: <message>", slowly for the messages in `delays`, and
    summarises by listing what it folds."""

    def respond(body: dict[str, Any]) -> Reply:
        said = last_user_text(body)
        if is_summary_request(body):
            return text(f"summary of {said.count('User:')} turns")
        return text(f"re: {said}", delay=(delays or {}).get(said, 0.0))

    return respond


async def create_session(api: httpx.AsyncClient, account: Account, **body: Any) -> str:
    created = await api.post("/v1/sessions", json=body, headers=account.headers)
    assert created.status_code == 201, created.text
    session_id: str = created.json()["id"]
    return session_id


async def say(api: httpx.AsyncClient, account: Account, session_id: str, said: str) -> str:
    posted = await api.post(
        f"/v1/sessions/{session_id}/messages", json={"text": said}, headers=account.headers
    )
    assert posted.status_code == 202, posted.text
    task_id: str = posted.json()["task_id"]
    return task_id


async def transcript(api: httpx.AsyncClient, account: Account, session_id: str) -> list[Any]:
    response = await api.get(f"/v1/sessions/{session_id}/messages", headers=account.headers)
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def wait_for_answers(
    api: httpx.AsyncClient, account: Account, session_id: str, turns: int, within: float = 30.0
) -> list[Any]:
    """The transcript once `turns` turns have ended."""

    async def answered() -> list[Any]:
        items = await transcript(api, account, session_id)
        ended = [item for item in items if item["state"] not in ("queued", "running")]
        return items if len(ended) >= turns else []

    items: list[Any] = await eventually(
        answered, within, f"session {session_id} answering {turns} turns"
    )
    return items


async def post_as(
    client: Client,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    account: Account,
    session_id: str,
    said: str,
) -> str:
    """Post as the Telegram bot or a schedule would, with the shared entry point."""
    return await post_message(
        client,
        sessions,
        settings,
        session_id=session_id,
        user_id=account.id,
        text=said,
        channel="api",
    )


async def replay_every_run(client: Client, workflow_id: str, first_run_id: str) -> int:
    """Replay each run of a workflow, following continue-as-new; how many runs there were."""
    run_id: str | None = first_run_id
    runs = 0
    while run_id is not None:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        await assert_replays(handle)
        runs += 1
        last = (await handle.fetch_history()).events[-1]
        run_id = None
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return runs


async def test_messages_are_answered_in_order_one_at_a_time(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo(delays={"first": 1.5}))
    session_id = await create_session(api, alice, title="errands")

    first = await say(api, alice, session_id, "first")
    second = await say(api, alice, session_id, "second")

    # While the first is answered, the second waits its turn, and shows so.
    waiting = await transcript(api, alice, session_id)
    assert [(item["turn"], item["task_id"], item["text"]) for item in waiting] == [
        (1, first, "first"),
        (2, second, "second"),
    ]
    assert waiting[1]["state"] == "queued"
    queued_task = await api.get(f"/v1/tasks/{second}", headers=alice.headers)
    assert queued_task.json()["status"] == "queued"

    items = await wait_for_answers(api, alice, session_id, 2)
    assert [(item["state"], item["answer"]) for item in items] == [
        ("answered", "re: first"),
        ("answered", "re: second"),
    ]
    # Claude was asked in order, and the second turn saw the first.
    asked = [last_user_text(body) for body in fake_claude.requests]
    assert asked == ["first", "second"]
    assert "re: first" in all_text(fake_claude.requests[1])

    listed = await api.get("/v1/sessions", headers=alice.headers)
    assert [item["title"] for item in listed.json()["items"]] == ["errands"]
    handle = temporal_client.get_workflow_handle(session_workflow_id(session_id))
    await assert_replays(handle)
    await assert_replays(temporal_client.get_workflow_handle(task_workflow_id(second)))


async def test_a_task_posted_with_session_id_is_a_turn_of_it(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo())
    session_id = await create_session(api, alice)
    await say(api, alice, session_id, "my name is Alice")

    created = await api.post(
        "/v1/tasks",
        json={"prompt": "what is my name?", "session_id": session_id},
        headers=alice.headers,
    )
    assert created.status_code == 202, created.text
    items = await wait_for_answers(api, alice, session_id, 2)
    assert items[1]["task_id"] == created.json()["id"]
    assert "my name is Alice" in all_text(fake_claude.requests[1])

    refused = await api.post(
        "/v1/tasks",
        json={"prompt": "hi", "session_id": session_id, "max_steps": 3},
        headers=alice.headers,
    )
    assert refused.status_code == 422 and "max_steps" in refused.json()["detail"]


async def test_another_users_session_is_not_found(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_account: MakeAccount,
) -> None:
    alice, mallory = await make_account(), await make_account()
    fake_claude.respond_with(echo())
    session_id = await create_session(api, alice)
    await say(api, alice, session_id, "secret plans")

    routes = [
        ("GET", f"/v1/sessions/{session_id}", None),
        ("GET", f"/v1/sessions/{session_id}/messages", None),
        ("POST", f"/v1/sessions/{session_id}/messages", {"text": "mine now"}),
        ("POST", "/v1/tasks", {"prompt": "mine now", "session_id": session_id}),
        ("GET", "/v1/sessions/no-such-session", None),
    ]
    for method, path, body in routes:
        response = await api.request(method, path, json=body, headers=mallory.headers)
        assert response.status_code == 404, (path, response.text)
    listed = await api.get("/v1/sessions", headers=mallory.headers)
    assert listed.json()["items"] == []
    # The functions the Telegram bot and schedules call refuse the same way.
    with pytest.raises(SessionNotFound):
        await post_message(
            temporal_client,
            sessions,
            settings,
            session_id=session_id,
            user_id=mallory.id,
            text="mine now",
            channel="telegram",
        )
    with pytest.raises(SessionNotFound):
        await start_new_conversation(sessions, session_id=session_id, user_id=mallory.id)
    items = await wait_for_answers(api, alice, session_id, 1)
    assert [item["text"] for item in items] == ["secret plans"]


async def test_bad_input_is_refused_naming_the_field(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    unknown = await api.post("/v1/sessions", json={"agent": "nobody"}, headers=alice.headers)
    assert unknown.status_code == 422 and "agent" in unknown.json()["detail"]
    session_id = await create_session(api, alice)
    for said in ("", "   "):
        empty = await api.post(
            f"/v1/sessions/{session_id}/messages", json={"text": said}, headers=alice.headers
        )
        assert empty.status_code == 422
        assert empty.json()["detail"][0]["loc"] == ["body", "text"]
    assert await transcript(api, alice, session_id) == []


async def test_continue_as_new_keeps_the_queue(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo(delays={"one": 1.5}))
    session_id = await create_session(api, alice)
    # A run that continues as new after every turn, as it would when Temporal suggests it.
    first_run = await temporal_client.start_workflow(
        SessionWorkflow.run,
        SessionInput(session_id=session_id, user_id=alice.id, turns_per_run=1),
        id=session_workflow_id(session_id),
        task_queue=settings.task_queue,
    )
    for said in ("one", "two", "three"):
        await post_as(temporal_client, sessions, settings, alice, session_id, said)

    items = await wait_for_answers(api, alice, session_id, 3)
    assert [item["answer"] for item in items] == ["re: one", "re: two", "re: three"]
    assert [last_user_text(body) for body in fake_claude.requests] == ["one", "two", "three"]
    assert first_run.first_execution_run_id is not None
    runs = await replay_every_run(
        temporal_client, session_workflow_id(session_id), first_run.first_execution_run_id
    )
    assert runs >= 3


async def test_an_idle_session_closes_and_the_next_message_revives_it(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo())
    session_id = await create_session(api, alice)
    quick = settings.model_copy(update={"session_idle_seconds": 1.0})

    await post_as(temporal_client, sessions, quick, alice, session_id, "remember the blue door")
    await wait_for_answers(api, alice, session_id, 1)
    handle = temporal_client.get_workflow_handle_for(
        SessionWorkflow.run, session_workflow_id(session_id)
    )
    closed = await handle.result()
    assert closed.turns_answered == 1
    first_run = (await handle.describe()).run_id

    await post_as(temporal_client, sessions, quick, alice, session_id, "which door?")
    items = await wait_for_answers(api, alice, session_id, 2)
    assert [item["state"] for item in items] == ["answered", "answered"]
    assert "remember the blue door" in all_text(fake_claude.requests[-1])
    revived = await handle.describe()
    assert revived.run_id != first_run and revived.status in (
        WorkflowExecutionStatus.RUNNING,
        WorkflowExecutionStatus.COMPLETED,
    )
    await assert_replays(temporal_client.get_workflow_handle(handle.id, run_id=first_run))
    await assert_replays(handle)


async def test_a_long_session_is_summarised_and_stays_within_its_budget(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo())
    session_id = await create_session(api, alice, agent="brief")
    said = [f"fact {n}: the {n}th shelf holds " + "books " * 12 for n in range(1, 9)]
    for message in said:
        await say(api, alice, session_id, message)

    items = await wait_for_answers(api, alice, session_id, len(said))
    assert [item["answer"] for item in items] == [f"re: {message}" for message in said]
    for body in fake_claude.requests:
        assert estimate_tokens(body["messages"]) <= BRIEF_BUDGET, body["messages"]

    chat = (await api.get(f"/v1/sessions/{session_id}", headers=alice.headers)).json()
    assert chat["summary"] and chat["summary"].startswith("summary of")
    assert 1 <= chat["summary_through_turn"] < len(said)
    summaries = [body for body in fake_claude.requests if is_summary_request(body)]
    assert summaries and "fact 1:" in all_text(summaries[0])
    # The last turn saw the summary and, verbatim, the turn just before it.
    last = [body for body in fake_claude.requests if not is_summary_request(body)][-1]
    assert chat["summary"] in all_text(last) and said[-2] in all_text(last)
    assert said[0] not in all_text(last)
    # History carries references: no earlier turn passes through the last turn's history.
    last_task = temporal_client.get_workflow_handle(task_workflow_id(items[-1]["task_id"]))
    history = await last_task.fetch_history()
    assert not any(said[0][:20].encode() in event.SerializeToString() for event in history.events)
    await assert_replays(last_task)
    await assert_replays(temporal_client.get_workflow_handle(session_workflow_id(session_id)))


async def test_the_offline_model_summarises_too(
    api: httpx.AsyncClient,
    temporal_client: Client,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    session_id = await create_session(api, alice, agent="brief")
    async with build_worker(temporal_client, settings, sessions, claude=None):
        for n in range(1, 7):
            await say(api, alice, session_id, f"note {n}: " + "words " * 15)
        items = await wait_for_answers(api, alice, session_id, 6)
    assert all(item["answer"].startswith(OFFLINE_LABEL) for item in items)
    chat = (await api.get(f"/v1/sessions/{session_id}", headers=alice.headers)).json()
    assert chat["summary"].startswith(OFFLINE_LABEL) and "note 1" in chat["summary"]
    assert estimate_tokens(chat["summary"]) <= BRIEF_BUDGET * SUMMARY_SHARE


async def test_a_fresh_conversation_forgets_but_keeps_the_transcript(
    api: httpx.AsyncClient,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo())
    session_id = await create_session(api, alice)
    await say(api, alice, session_id, "my cat is called Tom")
    await wait_for_answers(api, alice, session_id, 1)

    await start_new_conversation(sessions, session_id=session_id, user_id=alice.id)
    await say(api, alice, session_id, "what is my cat called?")
    await say(api, alice, session_id, "are you sure?")
    items = await wait_for_answers(api, alice, session_id, 3)

    assert [item["fresh_context"] for item in items] == [False, True, False]
    fresh, after = fake_claude.requests[1], fake_claude.requests[2]
    assert "Tom" not in all_text(fresh) and "Tom" not in all_text(after)
    assert "what is my cat called?" in all_text(after)


async def test_cancelled_turns_and_a_cancelled_session(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo(delays={"one": 5.0, "three": 5.0}))
    session_id = await create_session(api, alice)
    one = await say(api, alice, session_id, "one")
    await say(api, alice, session_id, "two")
    await wait_for_status(api, one, alice.headers, frozenset({"running"}))
    await wait_until_llm_started(api, alice, one)

    # Cancelling one turn's task: the session goes on with the next message.
    cancelled = await api.post(f"/v1/tasks/{one}/cancel", headers=alice.headers)
    assert cancelled.status_code == 202, cancelled.text
    items = await wait_for_answers(api, alice, session_id, 2)
    assert [item["state"] for item in items] == ["cancelled", "answered"]

    # Cancelling a message still waiting: it is dropped, and never reaches Claude.
    three = await say(api, alice, session_id, "three")
    waiting = await say(api, alice, session_id, "never mind")
    await say(api, alice, session_id, "four")
    dropped = await api.post(f"/v1/tasks/{waiting}/cancel", headers=alice.headers)
    assert dropped.json() == {"id": waiting, "status": "cancelled"}

    # Cancelling the session: the turn in progress and the messages waiting end cancelled.
    await wait_until_llm_started(api, alice, three)
    handle = temporal_client.get_workflow_handle(session_workflow_id(session_id))
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    items = await wait_for_answers(api, alice, session_id, 5)
    assert [item["state"] for item in items] == ["cancelled", "answered"] + ["cancelled"] * 3
    assert "never mind" not in [last_user_text(body) for body in fake_claude.requests]
    await assert_replays(handle)


async def wait_until_llm_started(api: httpx.AsyncClient, account: Account, task_id: str) -> None:
    """Until the task's first Claude call is under way."""

    async def steps() -> list[Any]:
        task = (await api.get(f"/v1/tasks/{task_id}", headers=account.headers)).json()
        found: list[Any] = task["steps"]
        return found

    await eventually(steps, what=f"task {task_id} calling Claude")


async def test_history_per_turn_does_not_grow_with_the_transcript(
    api: httpx.AsyncClient,
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.respond_with(echo())
    session_id = await create_session(api, alice)
    handle = temporal_client.get_workflow_handle(session_workflow_id(session_id))
    sizes = []
    for n in range(1, 8):
        # Each message (and its echoed answer) is 1 KB: carried in history, the transcript
        # would add kilobytes to every later turn.
        await say(api, alice, session_id, f"{n} " + "x" * 1000)
        await wait_for_answers(api, alice, session_id, n)
        history = await handle.fetch_history()
        sizes.append(sum(event.ByteSize() for event in history.events))

    per_turn = [later - earlier for earlier, later in pairwise(sizes)]
    early, late = sum(per_turn[:3]) / 3, sum(per_turn[-3:]) / 3
    assert late <= early * 1.25, per_turn
    assert "x" * 1000 in all_text(fake_claude.requests[-1])  # ...though Claude saw it
    await assert_replays(handle)
