"""Activities that keep Keel's Postgres records of a task."""

import hashlib
import json
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities import events
from activities.tool_registry import ToolRegistry
from activities.transcript import tool_result_block, write_message
from core.agents import AgentCatalog
from core.db import autocommit, session_scope
from core.records import find_memories, insert_task_row
from core.settings import Settings
from schemas.agent_task import (
    TERMINAL_STATUSES,
    ApprovalRecord,
    ApprovalStatus,
    QuestionRecord,
    QuestionStatus,
    RecordToolResultInput,
    StartAgentTaskInput,
    TaskPlan,
    TaskProgress,
    TaskStatus,
)
from schemas.session import QueuedTasks, RecordedMessage, RecordSessionMessageInput, turn_task
from schemas.tables import (
    Approval,
    ChatSession,
    Message,
    SessionTurn,
    Task,
    TaskEvent,
    ToolPreference,
    User,
    utcnow,
)
from schemas.tool_preferences import effective_policy

PROMPT_SEQ = 0
# Memories whose text shares a word (of this length or more) with the prompt join the
# system prompt, newest first.
MEMORY_WORD_MIN = 4
PROMPT_MEMORIES = 10
# A session without a title takes the start of its first message.
TITLE_CHARS = 80


def _sha256(arguments: dict[str, Any]) -> str:
    """A stable fingerprint of a tool call's arguments, for the audit trail."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def system_prompt(personality: str, user: User, memories: list[str]) -> str:
    """The agent's system prompt: its profile, then who it helps and what it knows of them."""
    parts = [
        personality.strip(),
        f"You are helping {user.name}. Their timezone is {user.timezone}.",
    ]
    if user.instructions.strip():
        parts.append(f"Their standing instructions:\n{user.instructions.strip()}")
    if memories:
        parts.append(
            "What you remember about them:\n" + "\n".join(f"- {memory}" for memory in memories)
        )
    return "\n\n".join(parts)


# Records a task's end unless it has one (a retry writes nothing), closes the approvals
# nobody can decide any more, and announces it: one statement, one round trip.
_FINISHED = (
    update(Task)
    .where(
        col(Task.id) == bindparam("final_task"),
        col(Task.status).not_in([status.value for status in TERMINAL_STATUSES]),
    )
    .values(
        {
            name: bindparam(f"final_{name}")
            for name in ("status", "stop_reason", "result_text", "error", "usage", "steps", "plan")
        }
        | {"updated_at": bindparam("event_at")}
    )
    .returning(col(Task.id).label("task_id"))
    .cte("finished")
)
_FINISH = events.for_each(_FINISHED).add_cte(
    update(Approval)
    .where(
        col(Approval.task_id).in_(select(_FINISHED.c.task_id)),
        col(Approval.status) == ApprovalStatus.PENDING.value,
    )
    .values(
        status=ApprovalStatus.CANCELLED.value,
        decided_at=bindparam("event_at"),
        reason=bindparam("closing_reason"),
    )
    .cte("closed")
)


async def record_end(sessions: async_sessionmaker[AsyncSession], progress: TaskProgress) -> None:
    """Store a task's final state in its projection row, close its pending approvals and
    write its `task_finished` event, unless the row has ended already (one statement)."""
    status = progress.status.value
    params = {
        "final_task": progress.task_id,
        "final_status": status,
        "final_stop_reason": progress.stop_reason,
        "final_result_text": progress.result_text,
        "final_error": progress.error,
        "final_usage": progress.usage.model_dump(),
        "final_steps": [step.model_dump(mode="json") for step in progress.steps],
        "final_plan": [item.model_dump(mode="json") for item in progress.plan],
        "closing_reason": f"the task was {status} before anyone decided",
        **events.event(
            events.TASK_FINISHED,
            status=status,
            stop_reason=progress.stop_reason,
            result_text=progress.result_text,
            error=progress.error,
        ).params(),
    }
    async with autocommit(sessions) as connection:
        if (await connection.execute(_FINISH, params)).rowcount:
            return
        # Nothing written: a retry that finds it recorded already, or no row at all.
        if await connection.scalar(select(Task.id).where(col(Task.id) == progress.task_id)):
            return
    raise ValueError(f"task {progress.task_id} has no projection row")


class StoreActivities:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        agents: AgentCatalog,
        tools: ToolRegistry,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._agents = agents
        self._tools = tools
        self._settings = settings

    @activity.defn
    async def begin_task(self, task: StartAgentTaskInput) -> TaskPlan:
        """Record the task and its prompt, and resolve the agent profile it runs with."""
        profile = self._agents.get(task.agent)
        async with session_scope(self._sessions) as session:
            user = await session.get(User, task.user_id)
            if user is None:
                raise ValueError(f"user {task.user_id} does not exist")
            await insert_task_row(session, task)
            # A task that waited for its `start_at` is running from now on.
            await session.exec(
                update(Task)
                .where(col(Task.id) == task.task_id, col(Task.status) == TaskStatus.SCHEDULED)
                .values(status=TaskStatus.RUNNING.value, updated_at=utcnow())
            )
            prompt = [{"type": "text", "text": task.prompt}]
            await write_message(
                await session.connection(),
                task.task_id,
                PROMPT_SEQ,
                "user",
                prompt,
                events.event(events.TASK_STARTED, agent=task.agent),
            )
            words = [word for word in task.prompt.split() if len(word) >= MEMORY_WORD_MIN]
            memories = await find_memories(session, user.id, words, PROMPT_MEMORIES)
            preferences = dict(
                (
                    await session.exec(
                        select(ToolPreference.tool, ToolPreference.preference).where(
                            ToolPreference.user_id == user.id
                        )
                    )
                ).all()
            )
        return TaskPlan(
            model=profile.model or self._settings.default_model,
            system=system_prompt(profile.system_prompt, user, [m.content for m in memories]),
            max_steps=task.max_steps or profile.max_steps or self._settings.default_max_steps,
            max_tokens=task.max_tokens or profile.max_tokens or self._settings.default_max_tokens,
            max_output_tokens=self._settings.llm_max_output_tokens,
            context_tokens=profile.context_tokens or self._settings.default_context_tokens,
            tools=[
                tool.grant().model_copy(
                    update={"policy": effective_policy(tool.policy, preferences.get(tool.name))}
                )
                for tool in self._tools.require(profile.tools)
            ],
        )

    @activity.defn
    async def record_session_message(self, record: RecordSessionMessageInput) -> RecordedMessage:
        """Put a message at the end of its session's transcript, as a queued task (so the
        task id given out for it answers at once). A message recorded before keeps its place."""
        message = record.message
        task = turn_task(record.session_id, record.user_id, record.agent, message)
        async with session_scope(self._sessions) as session:
            await insert_task_row(session, task, TaskStatus.QUEUED)
            seen = await session.exec(
                select(SessionTurn.seq).where(SessionTurn.task_id == message.task_id)
            )
            seq = seen.first()
            if seq is not None:
                return RecordedMessage(seq=seq, is_new=False)
            chat = (
                await session.exec(
                    select(ChatSession).where(ChatSession.id == record.session_id).with_for_update()
                )
            ).one()
            last = await session.exec(
                select(func.max(SessionTurn.seq)).where(SessionTurn.session_id == chat.id)
            )
            turn = SessionTurn(
                session_id=chat.id,
                seq=(last.one() or 0) + 1,
                task_id=message.task_id,
                fresh_context=chat.new_context_pending,
            )
            session.add(turn)
            chat.new_context_pending = False
            chat.title = chat.title or message.text[:TITLE_CHARS]
            chat.updated_at = utcnow()
            session.add(chat)
        return RecordedMessage(seq=turn.seq, is_new=True)

    @activity.defn
    async def cancel_queued_tasks(self, queued: QueuedTasks) -> None:
        """Record messages that will never get their turn as cancelled tasks."""
        async with session_scope(self._sessions) as session:
            await session.exec(
                update(Task)
                .where(
                    col(Task.id).in_(queued.task_ids),
                    col(Task.status) == TaskStatus.QUEUED.value,
                )
                .values(status=TaskStatus.CANCELLED.value, updated_at=utcnow())
            )

    @activity.defn
    async def record_tool_result(self, result: RecordToolResultInput) -> None:
        """Write a tool result the workflow decided (refused, unknown or failed tool)."""
        finished = events.event(
            events.TOOL_FINISHED,
            tool=result.tool_name,
            tool_use_id=result.tool_use_id,
            outcome=result.outcome,
            result=result.text,
        )
        async with autocommit(self._sessions) as connection:
            await write_message(
                connection,
                result.task_id,
                result.result_seq,
                "user",
                [tool_result_block(result.tool_use_id, result.text, result.is_error)],
                finished,
            )

    @activity.defn
    async def record_approval(self, record: ApprovalRecord) -> None:
        """Keep the audit row of an approval in step with the workflow: inserted when
        requested, updated once when decided or expired. Each transition is one event."""
        approval = record.approval
        async with session_scope(self._sessions) as session:
            if approval.status is ApprovalStatus.PENDING:
                statement: Any = (
                    insert(Approval)
                    .values(
                        id=approval.id,
                        task_id=record.task_id,
                        user_id=record.user_id,
                        tool=approval.tool,
                        tool_use_id=approval.tool_use_id,
                        arguments=approval.arguments,
                        arguments_sha256=_sha256(approval.arguments),
                        status=approval.status.value,
                        channel=record.channel,
                        requested_at=approval.requested_at,
                        expires_at=approval.expires_at,
                    )
                    .on_conflict_do_nothing()
                )
                event_type = events.APPROVAL_REQUESTED
            else:
                statement = (
                    update(Approval)
                    .where(
                        col(Approval.id) == approval.id,
                        col(Approval.status) == ApprovalStatus.PENDING.value,
                    )
                    .values(
                        status=approval.status.value,
                        decided_at=approval.decided_at,
                        decided_by=approval.decided_by,
                        channel=approval.decided_via or record.channel,
                        reason=approval.reason,
                    )
                )
                event_type = events.APPROVAL_DECIDED
            # RETURNING, not rowcount: an INSERT's rowcount here is -1 whatever it wrote.
            if (await session.exec(statement.returning(col(Approval.id)))).first() is not None:
                events.add_event(
                    session, record.task_id, event_type, **approval.model_dump(mode="json")
                )

    @activity.defn
    async def record_question(self, record: QuestionRecord) -> None:
        """One event when the agent asks, one when the question is answered or expires."""
        question = record.question
        event_type = (
            events.QUESTION_ASKED
            if question.status is QuestionStatus.PENDING
            else events.QUESTION_SETTLED
        )
        async with session_scope(self._sessions) as session:
            seen = await session.exec(
                select(TaskEvent.id).where(
                    TaskEvent.task_id == record.task_id,
                    TaskEvent.type == event_type,
                    col(TaskEvent.data)["id"].astext == question.id,
                )
            )
            if seen.first() is None:
                events.add_event(
                    session, record.task_id, event_type, **question.model_dump(mode="json")
                )

    @activity.defn
    async def last_reply_text(self, task_id: str) -> str | None:
        """The text of Claude's latest reply that had any, for a task whose budget ran out."""
        async with session_scope(self._sessions) as session:
            replies = await session.exec(
                select(Message)
                .where(Message.task_id == task_id, Message.role == "assistant")
                .order_by(col(Message.seq).desc())
            )
            for reply in replies:
                text = "".join(b.get("text", "") for b in reply.content if b.get("type") == "text")
                if text.strip():
                    return text
        return None

    @activity.defn
    async def finish_task(self, progress: TaskProgress) -> None:
        """Store the task's final state in its projection row (one statement)."""
        await record_end(self._sessions, progress)
