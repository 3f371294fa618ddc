"""The built-in tools against real Postgres: memories, note deletion, and the registry's
specs. Handlers are called with a ToolContext, or run through the real tool activity."""

import asyncio
import re
import uuid

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.testing import ActivityEnvironment

from activities.builtin_tools import (
    MemoryContent,
    NotePath,
    NoteWrite,
    RecallQuery,
    builtin_registry,
    notes_delete,
    notes_write,
    recall,
    remember,
)
from activities.tool_registry import ToolContext, ToolError
from activities.tools import ToolActivities
from core.db import session_scope
from core.records import insert_task_row
from schemas.agent_task import (
    StartAgentTaskInput,
    ToolCall,
    ToolCallInput,
    ToolCallResult,
    ToolPolicy,
)
from schemas.tables import Memory, Message, Note
from tests.conftest import Account, MakeAccount

Sessions = async_sessionmaker[AsyncSession]


def context(sessions: Sessions, account: Account) -> ToolContext:
    return ToolContext(
        user_id=account.id,
        task_id=str(uuid.uuid4()),
        tool_use_id=f"toolu_{uuid.uuid4().hex}",
        sessions=sessions,
    )


async def memories_of(sessions: Sessions, account: Account) -> list[str]:
    async with session_scope(sessions) as session:
        rows = await session.exec(
            select(Memory.content).where(Memory.user_id == account.id).order_by(col(Memory.id))
        )
        return list(rows)


class ToolRunner:
    """Runs tool calls for one user through the real `run_tool` activity, in one task."""

    def __init__(self, sessions: Sessions, account: Account) -> None:
        self.sessions = sessions
        self.account = account
        self.task_id = str(uuid.uuid4())
        self.activities = ToolActivities(sessions, builtin_registry())
        self.seq = 0

    async def start(self) -> "ToolRunner":
        task = StartAgentTaskInput(task_id=self.task_id, user_id=self.account.id, prompt="test")
        async with session_scope(self.sessions) as session:
            await insert_task_row(session, task)
        return self

    async def run(self, name: str, **arguments: object) -> tuple[ToolCallResult, str]:
        """The activity's result and the tool result text written to the transcript."""
        self.seq += 1
        call = ToolCall(id=f"call-{self.seq}", name=name, arguments=arguments)
        request = ToolCallInput(
            task_id=self.task_id, user_id=self.account.id, call=call, result_seq=self.seq
        )
        result = await ActivityEnvironment().run(self.activities.run_tool, request)
        async with session_scope(self.sessions) as session:
            row = (
                await session.exec(
                    select(Message).where(Message.task_id == self.task_id, Message.seq == self.seq)
                )
            ).one()
        block = row.content[0]
        assert (block["tool_use_id"], block["is_error"]) == (call.id, result.is_error)
        return result, block["content"]


# The registry


def test_every_tool_has_an_object_schema_and_the_documented_policy() -> None:
    tools = {tool.name: tool for tool in builtin_registry().all()}

    for tool in tools.values():
        spec = tool.spec()
        assert spec["name"] == tool.name and spec["description"]
        assert spec["input_schema"]["type"] == "object", tool.name
    assert {name: tool.policy for name, tool in tools.items()} == {
        "get_current_time": ToolPolicy.AUTO,
        "update_plan": ToolPolicy.AUTO,
        "ask_user": ToolPolicy.AUTO,
        "notes_list": ToolPolicy.AUTO,
        "notes_read": ToolPolicy.AUTO,
        "notes_write": ToolPolicy.AUTO,
        "notes_delete": ToolPolicy.CONFIRM,
        "remember": ToolPolicy.AUTO,
        "recall": ToolPolicy.AUTO,
        "http_fetch": ToolPolicy.CONFIRM,
        "send_notification": ToolPolicy.AUTO,
        "schedule_reminder": ToolPolicy.CONFIRM,
    }
    assert tools["http_fetch"].timeout_seconds == 20


# remember and recall


async def test_remembering_twice_stores_once(sessions: Sessions, make_account: MakeAccount) -> None:
    alice = await make_account()
    runner = await ToolRunner(sessions, alice).start()

    first, first_text = await runner.run("remember", content="Prefers tea to coffee")
    again, again_text = await runner.run("remember", content="  Prefers tea to coffee\n")

    assert not first.is_error and first_text == "remembered: Prefers tea to coffee"
    assert not again.is_error and again_text == "already remembered: Prefers tea to coffee"
    assert await memories_of(sessions, alice) == ["Prefers tea to coffee"]


async def test_concurrent_repeats_still_store_once(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    ctx = context(sessions, alice)
    await asyncio.gather(
        *(remember(ctx, MemoryContent(content="Lives in Lisbon")) for _ in range(8))
    )
    assert await memories_of(sessions, alice) == ["Lives in Lisbon"]


async def test_recall_never_shows_another_users_memories(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice, bob = await make_account(), await make_account()
    await remember(context(sessions, alice), MemoryContent(content="Allergic to peanuts"))
    await remember(context(sessions, bob), MemoryContent(content="Plays the cello"))

    bobs_recall = await recall(context(sessions, bob), RecallQuery())
    bobs_search = await recall(context(sessions, bob), RecallQuery(query="peanuts"))

    assert "peanuts" not in bobs_recall and "Plays the cello" in bobs_recall
    assert bobs_search == "(nothing remembered matches 'peanuts')"
    assert "Allergic to peanuts" in await recall(
        context(sessions, alice), RecallQuery(query="peanuts")
    )


async def test_recall_matches_any_word_newest_first(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    runner = await ToolRunner(sessions, alice).start()
    for fact in ("Works at ACME", "Has a dog named Rex", "Birthday is in May", "Likes DOGS"):
        await runner.run("remember", content=fact)

    result, listing = await runner.run("recall", query="dog acme")

    assert not result.is_error
    lines = listing.splitlines()
    assert [line.split(" (remembered")[0] for line in lines] == [
        "1. Likes DOGS",
        "2. Has a dog named Rex",
        "3. Works at ACME",
    ]


async def test_recall_without_a_query_lists_the_most_recent(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    ctx = context(sessions, alice)
    assert await recall(ctx, RecallQuery()) == "(nothing remembered yet)"
    for number in range(1, 6):
        await remember(ctx, MemoryContent(content=f"fact {number}"))

    listing = await recall(ctx, RecallQuery(limit=2))

    assert [line.split(" (remembered")[0] for line in listing.splitlines()] == [
        "1. fact 5",
        "2. fact 4",
    ]


async def test_recall_takes_wildcards_literally(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    ctx = context(sessions, alice)
    await remember(ctx, MemoryContent(content="Is 100% vegan"))
    await remember(ctx, MemoryContent(content="Uses snake_case"))
    await remember(ctx, MemoryContent(content="Unrelated"))

    percent = await recall(ctx, RecallQuery(query="%"))
    underscore = await recall(ctx, RecallQuery(query="_"))

    assert percent.splitlines()[0].startswith("1. Is 100% vegan") and len(percent.splitlines()) == 1
    assert underscore.startswith("1. Uses snake_case") and len(underscore.splitlines()) == 1


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("remember", {"content": "   "}),
        ("remember", {"content": "x" * 2001}),
        ("recall", {"limit": 0}),
        ("recall", {"limit": 51}),
    ],
)
async def test_out_of_range_arguments_go_back_to_claude(
    sessions: Sessions, make_account: MakeAccount, tool: str, arguments: dict[str, object]
) -> None:
    alice = await make_account()
    runner = await ToolRunner(sessions, alice).start()
    result, text = await runner.run(tool, **arguments)
    assert result.is_error and text.startswith(f"invalid arguments for {tool}")
    assert await memories_of(sessions, alice) == []


# notes_delete


async def test_notes_delete_deletes_only_the_callers_note(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice, bob = await make_account(), await make_account()
    for account in (alice, bob):
        await notes_write(
            context(sessions, account), NoteWrite(path="todo.md", content=account.name)
        )
    runner = await ToolRunner(sessions, alice).start()

    result, text = await runner.run("notes_delete", path="todo.md")

    assert (result.is_error, text) == (False, "deleted todo.md")
    async with session_scope(sessions) as session:
        owners = await session.exec(
            select(Note.user_id).where(col(Note.user_id).in_([alice.id, bob.id]))
        )
        assert list(owners) == [bob.id]


async def test_notes_delete_of_a_missing_note_names_the_path(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice = await make_account()
    with pytest.raises(ToolError, match=re.escape("no note at 'ideas/gone.md'")):
        await notes_delete(context(sessions, alice), NotePath(path="ideas/gone.md"))

    runner = await ToolRunner(sessions, alice).start()
    result, text = await runner.run("notes_delete", path="ideas/gone.md")
    assert result.is_error and "no note at 'ideas/gone.md'" in text


async def test_notes_delete_cannot_reach_another_users_note(
    sessions: Sessions, make_account: MakeAccount
) -> None:
    alice, bob = await make_account(), await make_account()
    await notes_write(context(sessions, alice), NoteWrite(path="diary.md", content="private"))

    with pytest.raises(ToolError, match=re.escape("no note at 'diary.md'")):
        await notes_delete(context(sessions, bob), NotePath(path="diary.md"))

    async with session_scope(sessions) as session:
        note = (await session.exec(select(Note).where(Note.user_id == alice.id))).one()
    assert (note.path, note.content) == ("diary.md", "private")
