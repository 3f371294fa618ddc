"""The worker's limits come from settings, and a run evicted from the worker's cache (a task
parked for days) replays from its history and goes on when a person decides."""

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from core.db import session_scope
from core.settings import Settings
from schemas.agent_task import DecideApprovalInput, TaskStatus
from schemas.tables import Note
from tests.conftest import MakeAccount, assert_replays, eventually, start_task
from tests.fake_anthropic import FakeAnthropic, ToolCall, text, tool_use
from tests.test_claude_calls import claude_worker
from workers.worker import build_worker
from workflows.agent_task import AgentTaskWorkflow


async def test_settings_set_the_workers_limits(
    temporal_client: Client, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    limited = settings.model_copy(
        update={"worker_max_activities": 7, "worker_max_cached_workflows": 3}
    )
    config = build_worker(temporal_client, limited, sessions, None).config()
    assert (config["max_concurrent_activities"], config["max_cached_workflows"]) == (7, 3)
    # Explicit Temporal options win (a second worker needs a task queue of its own).
    overridden = build_worker(
        temporal_client, limited, sessions, None, f"{settings.task_queue}-2", max_cached_workflows=9
    )
    assert overridden.config()["max_cached_workflows"] == 9


async def test_a_task_evicted_from_the_cache_resumes_on_approval(
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    # No cache at all: every workflow task, the decision's included, replays the history.
    uncached = settings.model_copy(update={"worker_max_cached_workflows": 0})
    alice = await make_account()
    async with session_scope(sessions) as session:
        session.add(Note(user_id=alice.id, path="old.md", content="stale"))
    fake_claude.script(tool_use(ToolCall("notes_delete", {"path": "old.md"})), text("Deleted."))
    async with claude_worker(temporal_client, uncached, sessions, fake_claude) as worker:
        handle = await start_task(temporal_client, worker, alice, "Delete old.md")

        async def pending_approval() -> str | None:
            progress = await handle.query(AgentTaskWorkflow.progress)
            return progress.pending_approvals[0].id if progress.pending_approvals else None

        approval_id = await eventually(pending_approval)
        decided = await handle.execute_update(
            AgentTaskWorkflow.decide_approval,
            DecideApprovalInput(approval_id=approval_id, decision="approve", decided_by=alice.id),
        )
        assert decided.status.value == "approved"
        result = await handle.result()
    assert (result.status, result.text) == (TaskStatus.COMPLETED, "Deleted.")
    async with session_scope(sessions) as session:
        assert list(await session.exec(select(Note).where(Note.user_id == alice.id))) == []
    await assert_replays(handle)
