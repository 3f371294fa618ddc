"""AgentTaskWorkflow against the real worker: real activities, real Postgres, the real
anthropic SDK talking to the fake Messages API. Every test replays its history."""

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from core.db import session_scope
from schemas.agent_task import TaskStatus
from schemas.tables import Memory, Message, Note, Task, User
from tests.conftest import MakeAccount, assert_replays, start_task
from tests.fake_anthropic import FakeAnthropic, ToolCall, error, text, tool_use


async def transcript(sessions: async_sessionmaker[AsyncSession], task_id: str) -> list[Message]:
    async with session_scope(sessions) as session:
        rows = await session.exec(
            select(Message).where(Message.task_id == task_id).order_by(col(Message.seq))
        )
        return list(rows)


async def test_task_runs_tools_and_answers(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(
        tool_use(ToolCall("notes_write", {"path": "todo.md", "content": "buy milk"}, id="t1")),
        tool_use(
            ToolCall("notes_read", {"path": "todo.md"}, id="t2"),
            ToolCall("get_current_time", {}, id="t3"),
        ),
        text("Your note says: buy milk."),
    )
    handle = await start_task(temporal_client, worker, account, "Note that I must buy milk.")
    result = await handle.result()

    assert result.status is TaskStatus.COMPLETED
    assert result.text == "Your note says: buy milk."
    assert result.usage.input_tokens == 30 and result.usage.output_tokens == 15
    async with session_scope(sessions) as session:
        note = (await session.exec(select(Note).where(Note.user_id == account.id))).one()
        task_row = await session.get(Task, result.task_id)
    assert (note.path, note.content) == ("todo.md", "buy milk")
    assert task_row is not None and task_row.status == "completed"
    assert [step["name"] for step in task_row.steps] == [
        "claude-sonnet-5-5",
        "notes_write",
        "claude-sonnet-5-5",
        "notes_read",
        "get_current_time",
        "claude-sonnet-5-5",
    ]

    # The third request carried both tool results, in the order Claude asked for them.
    last_turn = fake_claude.requests[2]["messages"][-1]
    assert last_turn["role"] == "user"
    assert [block["tool_use_id"] for block in last_turn["content"]] == ["t2", "t3"]
    assert last_turn["content"][0]["content"] == "buy milk"
    # The transcript lives in Postgres: prompt, 3 replies, 3 tool results.
    rows = await transcript(sessions, result.task_id)
    assert [row.role for row in rows] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "user",
        "assistant",
    ]
    # Quick database-only tools and the store's writes (begin, finish) run as local
    # activities: a marker each in history, no round trip through the task queue; only the
    # Claude calls are scheduled as regular activities.
    history = await handle.fetch_history()
    scheduled = [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    markers = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    assert scheduled == ["call_model"] * 3
    assert len(markers) == 3 + 2 + 1  # tools, begin and finish, the patch that made it so
    await assert_replays(handle)


async def test_bad_tool_arguments_go_back_to_claude(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(
        tool_use(ToolCall("notes_read", {"wrong": 1}, id="bad")),
        tool_use(ToolCall("delete_everything", {}, id="unknown")),
        text("Sorry, I could not do that."),
    )
    handle = await start_task(temporal_client, worker, account, "Read my note")
    result = await handle.result()

    assert result.status is TaskStatus.COMPLETED
    invalid = fake_claude.requests[1]["messages"][-1]["content"][0]
    assert invalid["is_error"] is True and "invalid arguments for notes_read" in invalid["content"]
    unknown = fake_claude.requests[2]["messages"][-1]["content"][0]
    assert unknown["is_error"] is True and "not available to this agent" in unknown["content"]
    await assert_replays(handle)


async def test_permanent_claude_error_fails_fast(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(error(400, "invalid_request_error", "messages: bad shape"))
    handle = await start_task(temporal_client, worker, account, "hello")
    result = await handle.result()

    assert result.status is TaskStatus.FAILED
    assert result.error is not None and "ClaudeBadRequest" in result.error
    assert "messages: bad shape" in result.error
    assert len(fake_claude.requests) == 1
    await assert_replays(handle)


async def test_transient_claude_error_is_retried(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(
        error(529, "overloaded_error", "overloaded"),
        error(429, "rate_limit_error", "slow down", headers={"retry-after": "1"}),
        text("made it"),
    )
    handle = await start_task(temporal_client, worker, account, "hello")
    result = await handle.result()

    assert (result.status, result.text) == (TaskStatus.COMPLETED, "made it")
    assert len(fake_claude.requests) == 3
    await assert_replays(handle)


async def test_step_budget_stops_a_looping_agent(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.respond_with(
        lambda body: tool_use(
            ToolCall("get_current_time", {}), text=f"Still checking ({len(body['messages'])})."
        )
    )
    handle = await start_task(temporal_client, worker, account, "loop forever", max_steps=3)
    result = await handle.result()

    assert (result.status, result.stop_reason) == (TaskStatus.COMPLETED, "budget_exhausted")
    assert result.text == "Still checking (5)."  # the last thing Claude said
    assert len(fake_claude.requests) == 3
    await assert_replays(handle)


async def test_budget_exhausted_without_an_answer_fails(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.respond_with(lambda _body: tool_use(ToolCall("get_current_time", {})))
    handle = await start_task(temporal_client, worker, account, "loop silently", max_steps=2)
    result = await handle.result()

    assert (result.status, result.stop_reason) == (TaskStatus.FAILED, "budget_exhausted")
    assert result.error is not None and "budget" in result.error
    await assert_replays(handle)


async def test_plan_instructions_and_memories(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    async with session_scope(sessions) as session:
        user = await session.get(User, account.id)
        assert user is not None
        user.instructions = "Answer in French."
        session.add(user)
        session.add(Memory(user_id=account.id, content="prefers tea over coffee"))
        session.add(Memory(user_id=account.id, content="has a cat named Ada"))
    plan = [{"title": "Think about drinks", "status": "in_progress"}, {"title": "Answer"}]
    fake_claude.script(tool_use(ToolCall("update_plan", {"steps": plan})), text("Du thé."))
    handle = await start_task(temporal_client, worker, account, "Coffee this morning?")
    result = await handle.result()

    assert result.text == "Du thé."
    system = fake_claude.requests[0]["system"][0]["text"]
    assert "Answer in French." in system and "prefers tea over coffee" in system
    assert "cat named Ada" not in system  # only memories relevant to the prompt
    async with session_scope(sessions) as session:
        task_row = await session.get(Task, result.task_id)
    assert task_row is not None
    assert task_row.plan == [
        {"title": "Think about drinks", "status": "in_progress"},
        {"title": "Answer", "status": "pending"},
    ]
    await assert_replays(handle)
