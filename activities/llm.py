"""The activities that call Claude: one step of a task, reading and extending its transcript
in Postgres, and folding a session's older turns into its running summary."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

import anthropic
import httpx2
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import events
from activities.context import (
    PastTurn,
    clip,
    context_messages,
    load_session_context,
    next_fold,
    store_summary,
    summary_instructions,
    summary_request,
    summary_tokens,
)
from activities.offline_model import offline_reply, offline_summary
from activities.tool_registry import ToolRegistry
from activities.transcript import as_conversation, read_messages, write_message
from core.db import autocommit, session_scope
from schemas.agent_task import LlmCallInput, LlmCallResult, ToolCall, Usage
from schemas.session import FoldContextInput

# Statuses that no retry can fix, with the error type callers branch on.
PERMANENT_STATUSES = {
    400: "ClaudeBadRequest",
    401: "ClaudeAuthenticationFailed",
    403: "ClaudePermissionDenied",
    404: "ClaudeNotFound",
    413: "ClaudeRequestTooLarge",
}
SPEND_LIMIT_MARKERS = ("spend limit", "usage limit", "credit balance", "billing")
# The SDK names a spend-limit 429 by `error.details.error_code`; its message may change.
SPEND_LIMIT_CODES = ("enforced_spend_limit_reached", "contract_spend_limit_reached")
# An `error` event inside a stream that began with 200 has no status of its own; this is
# the status its error type stands for (an unknown type counts as a server error).
STREAM_ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
HEARTBEAT_INTERVAL_SECONDS = 1.0
OFFLINE_MODEL = "offline"
DELTA_FLUSH_SECONDS = 0.25


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
        said = exc.api_message or exc.message  # Claude's own words, not the SDK's dump
        status, message = exc.status_code, f"Claude answered {exc.status_code} {exc.type}: {said}"
        if status < 400:
            # e.g. overloaded_error mid-stream: transient, though the stream began with 200.
            status = STREAM_ERROR_STATUSES.get(str(exc.type), 500)
            message = f"Claude's stream ended with {exc.type}: {said}"
        if status in PERMANENT_STATUSES:
            return ApplicationError(message, type=PERMANENT_STATUSES[status], non_retryable=True)
        spend_limit = exc.error_code in SPEND_LIMIT_CODES or any(
            marker in said.lower() for marker in SPEND_LIMIT_MARKERS
        )
        if status == 429 and spend_limit:
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
    # The SDK says only "Connection error."; what the HTTP client saw is its cause.
    reason = exc.__cause__ or exc
    return ApplicationError(
        f"the connection to Claude failed: {type(reason).__name__}: {reason}",
        type="ClaudeUnreachable",
    )


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


@contextmanager
def claude_errors() -> Iterator[None]:
    """Turn the SDK's errors inside into classified ApplicationErrors."""
    try:
        yield
    except (anthropic.APIError, httpx2.TransportError) as exc:
        # A stream cut mid-response raises the SDK's HTTP client's (httpx2) own error.
        # Not `from exc`: the chain of HTTP client errors, tracebacks and all, is more
        # than Temporal keeps of a failure, and history would show only "Failure exceeds
        # size limit." instead of the reason. The message carries what matters.
        raise classify_claude_error(exc) from None


def _count_call(model: str, outcome: str, usage: Usage | None = None) -> None:
    """Record one model call (`outcome`: `ok` or the error type) and the tokens it spent,
    through the SDK's meter, so they reach the worker's metrics endpoint."""
    meter = activity.metric_meter()
    meter.create_counter("keel_llm_calls", "Model calls by model and outcome.", "calls").add(
        1, {"model": model, "outcome": outcome}
    )
    if usage is not None:
        tokens = meter.create_counter("keel_llm_tokens", "Tokens by model and kind.", "tokens")
        for kind, count in usage.model_dump().items():
            if count:
                tokens.add(count, {"model": model, "kind": kind.removesuffix("_tokens")})


@asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat on a clock while Claude works, even before its first byte: heartbeats are
    how a cancelled task's call is really stopped, and how a lost worker is noticed. The
    first beat comes after an interval, not at once: a quick call costs the server no
    heartbeat, and the SDK sends a first beat at once but holds later ones for most of the
    heartbeat timeout, so a cancel made early is delivered sooner this way."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()


class _DeltaBuffer:
    """Streamed text, written as `text_delta` events in batches rather than per token."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], request: LlmCallInput) -> None:
        self._sessions = sessions
        self._request = request
        self._pending: list[str] = []
        self._last_flush = time.monotonic()

    async def add(self, text: str) -> None:
        self._pending.append(text)
        if time.monotonic() - self._last_flush >= DELTA_FLUSH_SECONDS:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            text, self._pending = "".join(self._pending), []
            async with autocommit(self._sessions) as connection:
                await events.emit(
                    connection,
                    self._request.task_id,
                    events.TEXT_DELTA,
                    seq=self._request.assistant_seq,
                    text=text,
                )
        self._last_flush = time.monotonic()


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
        seq = request.assistant_seq
        started = events.event(
            events.LLM_STARTED, seq=seq, model=request.model, attempt=activity.info().attempt
        )
        async with autocommit(self._sessions) as connection:
            rows = await read_messages(connection, request.task_id, 0, seq, started)
        stored = next((row for row in rows if row.seq == seq), None)
        if stored is not None:
            usage = Usage.model_validate(stored.usage or {})
            return _result(stored.content, stored.stop_reason or "end_turn", usage)
        conversation = await self._with_session_context(request, as_conversation(rows))

        if self._client is None:
            content, stop_reason = offline_reply(conversation, request.tool_names, seq)
            usage = Usage()
            _count_call(OFFLINE_MODEL, "ok")
        else:
            try:
                async with _heartbeating():
                    content, stop_reason, usage = await self._ask_claude(request, conversation)
            except ApplicationError as error:
                _count_call(request.model, error.type or "error")
                raise
            _count_call(request.model, "ok", usage)

        spent = usage.model_dump()
        finished = events.event(
            events.LLM_FINISHED,
            seq=seq,
            stop_reason=stop_reason,
            usage=spent,
            tools=[block["name"] for block in content if block.get("type") == "tool_use"],
        )
        async with autocommit(self._sessions) as connection:
            await write_message(
                connection,
                request.task_id,
                seq,
                "assistant",
                content,
                finished,
                stop_reason=stop_reason,
                usage=spent,
            )
        return _result(content, stop_reason, usage)

    async def _with_session_context(
        self, request: LlmCallInput, own: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The task's transcript, after what fits of its session's earlier turns (a task of
        no session is called with no `context_tokens`)."""
        if request.context_tokens is None:
            return own
        async with session_scope(self._sessions) as session:
            found = await load_session_context(session, request.task_id)
        if found is None:
            return own
        return context_messages(found, own, request.context_tokens)

    async def _ask_claude(
        self, request: LlmCallInput, conversation: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], str, Usage]:
        assert self._client is not None
        tools = [tool.spec() for tool in self._tools.require(request.tool_names)]
        # The system prompt and tool specs are the stable prefix: mark it cacheable.
        if tools:
            tools[-1]["cache_control"] = {"type": "ephemeral"}
        system = [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]
        with claude_errors():
            async with self._client.messages.stream(
                model=request.model,
                max_tokens=request.max_output_tokens,
                system=system,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
                messages=conversation,  # type: ignore[arg-type]
            ) as stream:
                deltas = _DeltaBuffer(self._sessions, request)
                async for event in stream:
                    if event.type == "text":
                        await deltas.add(event.text)
                await deltas.flush()
                message = await stream.get_final_message()
        content = [block.model_dump(mode="json", exclude_none=True) for block in message.content]
        return content, message.stop_reason or "end_turn", _usage(message.usage)

    @activity.defn
    async def fold_session_context(self, request: FoldContextInput) -> Usage:
        """Fold the session's oldest turns into its running summary (a Claude call per
        chunk, each stored before the next) until the turns before this task's fit the
        budget. A retry goes on from the last stored summary."""
        spent = Usage()
        while True:
            async with session_scope(self._sessions) as session:
                found = await load_session_context(session, request.task_id)
            turns = next_fold(found, request.context_tokens) if found else []
            if found is None or not turns:
                return spent
            summary, usage = await self._summarize(request, found.summary, turns)
            spent += usage
            async with session_scope(self._sessions) as session:
                await store_summary(session, found, summary, through=turns[-1].seq)

    async def _summarize(
        self, request: FoldContextInput, summary: str | None, turns: list[PastTurn]
    ) -> tuple[str, Usage]:
        """The summary with `turns` folded in, clipped to its share of the budget."""
        budget = request.context_tokens
        limit = summary_tokens(budget)
        if self._client is None:
            return clip(
                offline_summary(summary, [(t.text, t.answer) for t in turns]), limit
            ), Usage()
        with claude_errors():
            async with _heartbeating():
                message = await self._client.messages.create(
                    model=request.model,
                    max_tokens=limit,
                    system=summary_instructions(budget),
                    messages=summary_request(summary, turns, budget),  # type: ignore[arg-type]
                )
        text = "".join(block.text for block in message.content if block.type == "text")
        return clip(text.strip(), limit), _usage(message.usage)


def _usage(usage: anthropic.types.Usage) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
        cache_read_input_tokens=usage.cache_read_input_tokens or 0,
    )
