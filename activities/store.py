"""Activities that keep Keel's Postgres records of a task."""

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.tool_registry import ToolRegistry
from activities.transcript import tool_result_block, write_message
from core.agents import AgentCatalog
from core.db import session_scope
from core.records import insert_task_row
from core.settings import Settings
from schemas.agent_task import (
    RecordToolResultInput,
    StartAgentTaskInput,
    TaskPlan,
    TaskProgress,
)
from schemas.tables import Task, User, utcnow

PROMPT_SEQ = 0


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
            await write_message(
                session, task.task_id, PROMPT_SEQ, "user", [{"type": "text", "text": task.prompt}]
            )
        system = (
            f"{profile.system_prompt.strip()}\n\n"
            f"You are helping {user.name}. Their timezone is {user.timezone}."
        )
        return TaskPlan(
            model=profile.model or self._settings.default_model,
            system=system,
            max_steps=task.max_steps or profile.max_steps or self._settings.default_max_steps,
            max_tokens=task.max_tokens or profile.max_tokens or self._settings.default_max_tokens,
            max_output_tokens=self._settings.llm_max_output_tokens,
            tools=[tool.grant() for tool in self._tools.require(profile.tools)],
        )

    @activity.defn
    async def record_tool_result(self, result: RecordToolResultInput) -> None:
        """Write a tool result the workflow decided (refused, unknown or failed tool)."""
        async with session_scope(self._sessions) as session:
            await write_message(
                session,
                result.task_id,
                result.result_seq,
                "user",
                [tool_result_block(result.tool_use_id, result.text, result.is_error)],
            )

    @activity.defn
    async def finish_task(self, progress: TaskProgress) -> None:
        """Store the task's final state in its projection row."""
        async with session_scope(self._sessions) as session:
            task = await session.get(Task, progress.task_id)
            if task is None:
                raise ValueError(f"task {progress.task_id} has no projection row")
            task.status = progress.status.value
            task.stop_reason = progress.stop_reason
            task.result_text = progress.result_text
            task.error = progress.error
            task.usage = progress.usage.model_dump()
            task.steps = [step.model_dump(mode="json") for step in progress.steps]
            task.updated_at = utcnow()
            session.add(task)
