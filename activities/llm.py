"""The activity that makes one Claude call, reading and extending the transcript in Postgres."""

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import anthropic
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.offline_model import offline_reply
from activities.tool_registry import ToolRegistry
from activities.transcript import find_message, load_conversation, write_message
from core.db import session_scope
from schemas.agent_task import LlmCallInput, LlmCallResult, ToolCall, Usage

# Statuses that no retry can fix, with the error type callers branch on.
PERMANENT_STATUSES = {
    400: "ClaudeBadRequest",
    401: "ClaudeAuthenticationFailed",
    403: "ClaudePermissionDenied",
    404: "ClaudeNotFound",
    413: "ClaudeRequestTooLarge",
}
SPEND_LIMIT_MARKERS = ("spend limit", "usage limit", "credit balance", "billing")


def _retry_after(headers: Mapping[str, str]) -> timedelta | None:
    value = headers.get("retry-after")
    try:
        return timedelta(seconds=float(value)) if value is not None else None
    except ValueError:
        return None


def classify_claude_error(exc: Exception) -> ApplicationError:
    """Map an SDK error to an ApplicationError: permanent ones non-retryable, transient ones
    retryable after the server's `retry-after` when it gives one."""
    if isinstance(exc, anthropic.APIStatusError):
        status, message = exc.status_code, f"Claude answered {exc.status_code}: {exc.message}"
        if status in PERMANENT_STATUSES:
            return ApplicationError(message, type=PERMANENT_STATUSES[status], non_retryable=True)
        if status == 429 and any(m in str(exc.message).lower() for m in SPEND_LIMIT_MARKERS):
            return ApplicationError(message, type="ClaudeSpendLimit", non_retryable=True)
        if status == 429:
            error_type = "ClaudeRateLimited"
        elif status == 529:
            error_type = "ClaudeOverloaded"
        elif status >= 500:
            error_type = "ClaudeServerError"
        else:
            return ApplicationError(message, type="ClaudeRequestRejected", non_retryable=True)
        return ApplicationError(
            message, type=error_type, next_retry_delay=_retry_after(exc.response.headers)
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return ApplicationError(f"Claude timed out: {exc}", type="ClaudeTimeout")
    return ApplicationError(f"could not reach Claude: {exc}", type="ClaudeUnreachable")


def _result(content: list[dict[str, Any]], stop_reason: str, usage: Usage) -> LlmCallResult:
    calls = [
        ToolCall(id=block["id"], name=block["name"], arguments=block.get("input") or {})
        for block in content
        if block.get("type") == "tool_use"
    ]
    final = stop_reason not in ("tool_use", "pause_turn")
    text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    return LlmCallResult(
        stop_reason=stop_reason, tool_calls=calls, text=text if final else None, usage=usage
    )


class LlmActivities:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic | None,
        sessions: async_sessionmaker[AsyncSession],
        tools: ToolRegistry,
    ) -> None:
        """`client` None means the offline scripted model."""
        self._client = client
        self._sessions = sessions
        self._tools = tools

    @activity.defn
    async def call_model(self, request: LlmCallInput) -> LlmCallResult:
        """Send the task's transcript to Claude and store the reply at `assistant_seq`. A
        retry after the reply was stored returns it instead of calling Claude again."""
        async with session_scope(self._sessions) as session:
            stored = await find_message(session, request.task_id, request.assistant_seq)
            conversation = [] if stored else await load_conversation(session, request.task_id)
        if stored is not None:
            usage = Usage.model_validate(stored.usage or {})
            return _result(stored.content, stored.stop_reason or "end_turn", usage)

        if self._client is None:
            content, stop_reason = offline_reply(
                conversation, request.tool_names, request.assistant_seq
            )
            usage = Usage()
        else:
            content, stop_reason, usage = await self._ask_claude(request, conversation)

        async with session_scope(self._sessions) as session:
            await write_message(
                session,
                request.task_id,
                request.assistant_seq,
                "assistant",
                content,
                stop_reason=stop_reason,
                usage=usage.model_dump(),
            )
        return _result(content, stop_reason, usage)

    async def _ask_claude(
        self, request: LlmCallInput, conversation: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], str, Usage]:
        assert self._client is not None
        tools = [tool.spec() for tool in self._tools.require(request.tool_names)]
        # The system prompt and tool specs are the stable prefix: mark it cacheable.
        if tools:
            tools[-1]["cache_control"] = {"type": "ephemeral"}
        system = [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]
        try:
            async with self._client.messages.stream(
                model=request.model,
                max_tokens=request.max_output_tokens,
                system=system,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
                messages=conversation,  # type: ignore[arg-type]
            ) as stream:
                async for _event in stream:
                    activity.heartbeat()
                message = await stream.get_final_message()
        except anthropic.APIError as exc:
            raise classify_claude_error(exc) from exc
        # A stream cut mid-response raises the HTTP client's own error, which Temporal
        # retries as it is.
        content = [block.model_dump(mode="json", exclude_none=True) for block in message.content]
        usage = Usage(
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            cache_creation_input_tokens=message.usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=message.usage.cache_read_input_tokens or 0,
        )
        return content, message.stop_reason or "end_turn", usage
