"""Temporal history stays small: the transcript lives in Postgres, so what each step adds
to history does not grow with the conversation or with the size of tool results."""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.worker import Worker

from core.db import session_scope
from schemas.agent_task import TaskStatus
from schemas.tables import Note
from tests.conftest import Account, MakeAccount, assert_replays, start_task
from tests.fake_anthropic import FakeAnthropic, Reply, ToolCall, text, tool_use

TOOL_RESULT_BYTES = 20_000
PAYLOAD_LIMIT = 256 * 1024


def read_note_until(steps: int) -> Callable[[dict[str, object]], Reply]:
    """A model that reads the big note once per step, then answers at step `steps`."""

    def respond(body: dict[str, object]) -> Reply:
        messages = body["messages"]
        assert isinstance(messages, list)
        if len(messages) // 2 + 1 >= steps:
            return text("done reading")
        return tool_use(ToolCall("notes_read", {"path": "big.md"}))

    return respond


async def history_bytes(
    client: Client, worker: Worker, fake: FakeAnthropic, account: Account, steps: int
) -> tuple[int, int]:
    """Total history bytes and the largest event, for a task of `steps` model calls."""
    fake.respond_with(read_note_until(steps))
    handle = await start_task(client, worker, account, "read it", max_steps=100)
    result = await handle.result()
    assert (result.status, result.text) == (TaskStatus.COMPLETED, "done reading")
    history = await handle.fetch_history()
    sizes = [event.ByteSize() for event in history.events]
    await assert_replays(handle)
    return sum(sizes), max(sizes)


async def test_history_per_step_is_flat_with_big_tool_results(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    async with session_scope(sessions) as session:
        session.add(Note(user_id=account.id, path="big.md", content="x" * TOOL_RESULT_BYTES))

    short, short_max = await history_bytes(temporal_client, worker, fake_claude, account, 5)
    mid, mid_max = await history_bytes(temporal_client, worker, fake_claude, account, 20)
    long, long_max = await history_bytes(temporal_client, worker, fake_claude, account, 40)

    early_step = (mid - short) / 15  # bytes a step adds while the conversation is short
    late_step = (long - mid) / 20  # ...and once it is long
    assert late_step <= early_step * 1.1, (early_step, late_step)
    # Tool results (20 KB each) never pass through history.
    assert late_step < TOOL_RESULT_BYTES / 4, late_step
    assert max(short_max, mid_max, long_max) < PAYLOAD_LIMIT
