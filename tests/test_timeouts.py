"""Timer paths on Temporal's time-skipping test server: an approval nobody decides and a
question nobody answers expire after their (24 h) timeout, in moments of real time."""

import uuid

import anthropic
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.testing import WorkflowEnvironment

from core.db import session_scope
from core.settings import Settings
from schemas.agent_task import TaskStatus
from schemas.tables import Approval, Note
from tests.conftest import MakeAccount, start_task
from tests.fake_anthropic import FakeAnthropic, ToolCall, text, tool_use
from workers.worker import build_worker


async def test_unanswered_approval_and_question_expire(
    time_skipping: WorkflowEnvironment,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    async with session_scope(sessions) as session:
        session.add(Note(user_id=account.id, path="x.md", content="keep"))
    fake_claude.script(
        tool_use(ToolCall("notes_delete", {"path": "x.md"})),
        tool_use(ToolCall("ask_user", {"question": "Anything else?"})),
        text("Nobody answered, so I left everything as it was."),
    )
    claude = anthropic.AsyncAnthropic(api_key="test", base_url=fake_claude.base_url, max_retries=0)
    worker = build_worker(
        time_skipping.client, settings, sessions, claude, task_queue=f"skip-{uuid.uuid4()}"
    )
    async with worker:
        handle = await start_task(time_skipping.client, worker, account, "tidy up")
        result = await handle.result()  # time skips over both 24 h waits

    assert result.status is TaskStatus.COMPLETED
    expired_approval = fake_claude.requests[1]["messages"][-1]["content"][0]
    assert expired_approval["is_error"] and "expired" in expired_approval["content"]
    unanswered = fake_claude.requests[2]["messages"][-1]["content"][0]
    assert "did not answer" in unanswered["content"]
    async with session_scope(sessions) as session:
        note = (await session.exec(select(Note).where(Note.user_id == account.id))).one()
        audit = (await session.exec(select(Approval).where(Approval.user_id == account.id))).one()
    assert note.content == "keep"
    assert audit.status == "expired" and audit.decided_by is None
    await claude.close()
