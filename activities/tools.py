"""The activity that runs one tool call."""

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities import events
from activities.tool_registry import ToolContext, ToolError, ToolRegistry
from activities.transcript import read_messages, tool_result_block, write_message
from core.db import autocommit
from schemas.agent_task import ToolCallInput, ToolCallResult

PREVIEW_CHARS = 200
EVENT_RESULT_CHARS = 4000


class ToolActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], tools: ToolRegistry) -> None:
        self._sessions = sessions
        self._tools = tools

    @activity.defn
    async def run_tool(self, request: ToolCallInput) -> ToolCallResult:
        """Run the tool and write its result into the transcript. Bad arguments and the
        tool's own expected errors become `is_error` results for Claude to see."""
        started = events.event(
            events.TOOL_STARTED,
            tool=request.call.name,
            tool_use_id=request.call.id,
            arguments=request.call.arguments,
        )
        async with autocommit(self._sessions) as connection:
            done = await read_messages(
                connection, request.task_id, request.result_seq, request.result_seq, started
            )
        if done and done[0].seq == request.result_seq:
            block = done[0].content[0]
            return ToolCallResult(
                is_error=block["is_error"], preview=block["content"][:PREVIEW_CHARS]
            )
        tool = self._tools.get(request.call.name)
        if tool is None:
            raise ValueError(f"tool {request.call.name!r} is not registered on this worker")
        context = ToolContext(
            user_id=request.user_id,
            task_id=request.task_id,
            tool_use_id=request.call.id,
            sessions=self._sessions,
        )
        try:
            arguments = tool.args_model.model_validate(request.call.arguments)
            text, is_error = await tool.handler(context, arguments), False
        except ValidationError as exc:
            text, is_error = f"invalid arguments for {tool.name}: {exc}", True
        except ToolError as exc:
            text, is_error = str(exc), True
        finished = events.event(
            events.TOOL_FINISHED,
            tool=tool.name,
            tool_use_id=request.call.id,
            outcome="error" if is_error else "ok",
            result=text[:EVENT_RESULT_CHARS],
        )
        async with autocommit(self._sessions) as connection:
            await write_message(
                connection,
                request.task_id,
                request.result_seq,
                "user",
                [tool_result_block(request.call.id, text, is_error)],
                finished,
            )
        return ToolCallResult(is_error=is_error, preview=text[:PREVIEW_CHARS])
