"""Claude calls through Keel's real worker: real Temporal, real Postgres, and the real
`anthropic` SDK streaming from the fake Messages API. Which errors end a task at once and
which Temporal retries (honouring `retry-after`), prompt caching, usage with cache tokens,
`pause_turn` continuations and thinking blocks. Every test replays its history."""

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from core.agents import AgentCatalog
from core.db import session_scope
from core.settings import Settings
from schemas.agent_task import AgentTaskResult, TaskStatus, Usage
from schemas.tables import Task
from tests.conftest import MakeAccount, assert_replays, start_task
from tests.fake_anthropic import (
    FakeAnthropic,
    Reply,
    ToolCall,
    cut_stream,
    error,
    hang,
    pause_turn,
    text,
    tool_use,
)
from tests.fake_anthropic import Usage as WireUsage
from workers.worker import build_worker
from workflows.agent_task import AgentTaskWorkflow
from workflows.timeouts import LLM_RETRY

# Long enough that nothing in this file comes near it, so only the rows that mean to
# time out do.
DEFAULT_CLIENT_TIMEOUT = 60.0
# No test here should take longer than this; a hung task fails the test instead.
TASK_DEADLINE = 30.0
# Temporal's first retry waits the policy's initial interval (less a little for clocks).
FIRST_RETRY_GAP = LLM_RETRY.initial_interval.total_seconds() * 0.9


async def finish(handle: WorkflowHandle[AgentTaskWorkflow, AgentTaskResult]) -> AgentTaskResult:
    async with asyncio.timeout(TASK_DEADLINE):
        return await handle.result()


@contextlib.asynccontextmanager
async def claude_worker(
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake: FakeAnthropic,
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> AsyncIterator[Worker]:
    """Keel's real worker over a Claude client with the given timeout (and HTTP transport),
    pointed at the fake."""
    claude = anthropic.AsyncAnthropic(
        api_key="test-key",
        base_url=fake.base_url,
        max_retries=0,
        timeout=client_timeout,
        http_client=anthropic.DefaultAsyncHttpxClient(transport=transport) if transport else None,
    )
    try:
        async with build_worker(temporal_client, settings, sessions, claude) as running:
            yield running
    finally:
        await claude.close()


class TimedReplies:
    """A responder that answers with `replies` in order and records when each request
    arrived (the fake records bodies, not times)."""

    def __init__(self, *replies: Reply) -> None:
        self._replies = collections.deque(replies)
        self.arrivals: list[float] = []

    def __call__(self, _body: dict[str, Any]) -> Reply | None:
        self.arrivals.append(time.monotonic())
        return self._replies.popleft() if self._replies else None


def drop_before_response() -> Reply:
    """Close the connection before a single byte of the answer is sent.

    The fake does this only on its non-streaming path (`cut_stream`), and Keel always
    streams. A header value that h11 refuses to serialise makes uvicorn fail on the status
    line and close the connection with nothing written, which is what a client sees when a
    proxy drops it.
    """
    return Reply(headers={"x-fake-drop": "\r\n"})


class AnswerFirstRequest(httpx2.AsyncBaseTransport):
    """An HTTP transport for the Claude client that answers the first request with
    `first` and sends every later one to the fake over loopback. For answers the fake
    cannot give: an `error` event inside a stream that began 200, an error with `details`."""

    def __init__(self, first: httpx2.Response) -> None:
        self._first: httpx2.Response | None = first
        self._loopback = httpx2.AsyncHTTPTransport()
        self.answered = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._first is None:
            return await self._loopback.handle_async_request(request)
        first, self._first = self._first, None
        self.answered += 1
        return first

    async def aclose(self) -> None:
        await self._loopback.aclose()


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def task_row(sessions: async_sessionmaker[AsyncSession], task_id: str) -> Task:
    async with session_scope(sessions) as session:
        row = await session.get(Task, task_id)
    assert row is not None
    return row


async def retried_failure_type(
    handle: WorkflowHandle[AgentTaskWorkflow, AgentTaskResult],
) -> str:
    """The error type of the `call_model` attempt that Temporal retried, from history."""
    history = await handle.fetch_history()
    for event in history.events:
        started = event.activity_task_started_event_attributes
        if event.HasField("activity_task_started_event_attributes") and started.attempt == 2:
            failure = started.last_failure
            if failure.HasField("application_failure_info"):
                return failure.application_failure_info.type
            return failure.message
    raise AssertionError("no activity was retried")


# -- errors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermanentError:
    status: int
    claude_type: str
    message: str
    keel_type: str


PERMANENT_ERRORS = [
    PermanentError(
        400,
        "invalid_request_error",
        "messages.1.content.0.tool_use_id: unexpected tool_use_id",
        "ClaudeBadRequest",
    ),
    PermanentError(401, "authentication_error", "invalid x-api-key", "ClaudeAuthenticationFailed"),
    PermanentError(
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
        "ClaudePermissionDenied",
    ),
    PermanentError(404, "not_found_error", "model: claude-sonnet-5-5", "ClaudeNotFound"),
    PermanentError(
        413, "request_too_large", "Request exceeds the maximum size", "ClaudeRequestTooLarge"
    ),
    PermanentError(
        429,
        "rate_limit_error",
        "You have reached your specified API usage limits. "
        "You will regain access on 2026-08-01 at 00:00 UTC.",
        "ClaudeSpendLimit",
    ),
]


@pytest.mark.parametrize("row", PERMANENT_ERRORS, ids=lambda row: f"{row.status}-{row.keel_type}")
async def test_permanent_claude_error_fails_the_task_after_one_request(
    row: PermanentError,
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(error(row.status, row.claude_type, row.message))
    async with claude_worker(temporal_client, settings, sessions, fake_claude) as worker:
        handle = await start_task(temporal_client, worker, account, "hello")
        result = await finish(handle)

    assert (result.status, result.stop_reason) == (TaskStatus.FAILED, "error")
    assert result.error is not None
    assert result.error.startswith(f"{row.keel_type}: ")
    assert row.message in result.error
    assert len(fake_claude.requests) == 1
    # What GET /v1/tasks/{id} shows is the same failure.
    stored = await task_row(sessions, result.task_id)
    assert (stored.status, stored.error) == ("failed", result.error)
    await assert_replays(handle)


@dataclass(frozen=True)
class TransientError:
    name: str
    failure: Reply
    # The error type of the attempt Temporal retried, as history shows it.
    failure_type: str
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    # The retry may not arrive sooner than this after the failed request.
    min_gap: float = FIRST_RETRY_GAP


TRANSIENT_ERRORS = [
    # retry-after is 2 s, not 1: the policy's first interval is 1 s anyway, so only a longer
    # wait shows that the retry honoured the header.
    TransientError(
        "429-retry-after",
        error(
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
            headers={"retry-after": "2"},
        ),
        "ClaudeRateLimited",
        min_gap=1.9,
    ),
    TransientError(
        "529-overloaded",
        error(529, "overloaded_error", "Overloaded"),
        "ClaudeOverloaded",
    ),
    TransientError(
        "500-api-error",
        error(500, "api_error", "Internal server error"),
        "ClaudeServerError",
    ),
    TransientError(
        "connection-dropped",
        drop_before_response(),
        "ClaudeUnreachable",
    ),
    TransientError(
        "stream-cut",
        cut_stream("I will check the ti"),
        "ClaudeUnreachable",
    ),
    TransientError(
        "timeout",
        hang(10),
        "ClaudeTimeout",
        client_timeout=0.5,
    ),
]


@pytest.mark.parametrize("row", TRANSIENT_ERRORS, ids=lambda row: row.name)
async def test_transient_claude_error_is_retried_by_temporal(
    row: TransientError,
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    replies = TimedReplies(row.failure, text("recovered"))
    fake_claude.respond_with(replies)
    async with claude_worker(
        temporal_client, settings, sessions, fake_claude, row.client_timeout
    ) as worker:
        handle = await start_task(temporal_client, worker, account, "hello")
        result = await finish(handle)

    assert (result.status, result.text) == (TaskStatus.COMPLETED, "recovered")
    assert len(fake_claude.requests) == 2
    # Temporal made the second attempt (the SDK never retries), after its backoff.
    assert await retried_failure_type(handle) == row.failure_type
    first, second = replies.arrivals
    assert second - first >= row.min_gap
    await assert_replays(handle)


async def test_claude_retries_are_bounded(
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    """A Claude that stays overloaded is retried, but not forever. Waiting out all the
    attempts takes minutes of real backoff, so this watches two and reads the bound the
    server enforces from the activity's retry policy in history."""
    assert LLM_RETRY.maximum_attempts > 0  # 0 would mean unlimited
    account = await make_account()
    fake_claude.respond_with(lambda _body: error(529, "overloaded_error", "Overloaded"))
    async with claude_worker(temporal_client, settings, sessions, fake_claude) as worker:
        handle = await start_task(temporal_client, worker, account, "hello")
        async with asyncio.timeout(TASK_DEADLINE):
            while True:
                description = await handle.describe()
                pending = [
                    activity
                    for activity in description.raw_description.pending_activities
                    if activity.activity_type.name == "call_model"
                ]
                if pending and pending[0].attempt > 2:
                    break
                await asyncio.sleep(0.05)
        await handle.terminate("the test has seen enough attempts")

    (call_model,) = pending
    assert len(fake_claude.requests) >= 2
    assert call_model.maximum_attempts == LLM_RETRY.maximum_attempts
    assert call_model.last_failure.application_failure_info.type == "ClaudeOverloaded"
    history = await handle.fetch_history()
    scheduled = [
        event.activity_task_scheduled_event_attributes
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
        and event.activity_task_scheduled_event_attributes.activity_type.name == "call_model"
    ]
    assert len(scheduled) == 1
    policy = scheduled[0].retry_policy
    assert policy.maximum_attempts == LLM_RETRY.maximum_attempts
    assert policy.initial_interval.ToTimedelta() == LLM_RETRY.initial_interval
    await assert_replays(handle)


async def test_overloaded_error_inside_a_stream_is_retried(
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    """Under load the API can answer 200 and then send an `error` event in the stream; the
    SDK raises that as an APIStatusError with status 200. It is as transient as a 529."""
    account = await make_account()
    started = {
        "type": "message_start",
        "message": {
            "id": "msg_overloaded",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-5-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
    }
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    transport = AnswerFirstRequest(
        httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=sse("message_start", started) + sse("error", overloaded),
        )
    )
    fake_claude.script(text("recovered"))
    async with claude_worker(
        temporal_client, settings, sessions, fake_claude, transport=transport
    ) as worker:
        handle = await start_task(temporal_client, worker, account, "hello")
        result = await finish(handle)

    assert (result.status, result.text) == (TaskStatus.COMPLETED, "recovered")
    assert (transport.answered, len(fake_claude.requests)) == (1, 1)
    assert await retried_failure_type(handle) == "ClaudeOverloaded"
    await assert_replays(handle)


async def test_spend_limit_named_only_by_its_error_code_fails_at_once(
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    """The SDK names a spend-limit 429 by `error.details.error_code` and warns that the
    message's wording may change: one whose message has none of Keel's markers still ends
    the task at once."""
    account = await make_account()
    message = "The organization has crossed the monthly API usage threshold of its API tier."
    transport = AnswerFirstRequest(
        httpx2.Response(
            429,
            json={
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": message,
                    "details": {"error_code": "enforced_spend_limit_reached"},
                },
            },
        )
    )
    async with claude_worker(
        temporal_client, settings, sessions, fake_claude, transport=transport
    ) as worker:
        handle = await start_task(temporal_client, worker, account, "hello")
        result = await finish(handle)

    assert result.status is TaskStatus.FAILED
    assert result.error is not None and result.error.startswith("ClaudeSpendLimit: ")
    assert message in result.error
    assert (transport.answered, len(fake_claude.requests)) == (1, 0)
    await assert_replays(handle)


# -- what is sent and what is counted -----------------------------------------------------


async def test_system_prompt_and_tools_are_marked_for_prompt_caching(
    temporal_client: Client,
    worker: Worker,
    settings: Settings,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(tool_use(ToolCall("get_current_time", {})), text("It is noon."))
    handle = await start_task(temporal_client, worker, account, "What time is it?")
    result = await finish(handle)

    assert result.status is TaskStatus.COMPLETED
    profile = AgentCatalog.load(settings.agents_file).get("assistant")
    first, second = fake_claude.requests
    assert first["stream"] is True
    (system,) = first["system"]
    assert system["type"] == "text" and profile.system_prompt.strip() in system["text"]
    assert system["cache_control"] == {"type": "ephemeral"}
    assert [tool["name"] for tool in first["tools"]] == profile.tools
    # One breakpoint after the last tool caches the whole tool list; the others stay bare.
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in tool for tool in first["tools"][:-1])
    # A cache hit needs the prefix byte for byte the same on the next step.
    assert (second["system"], second["tools"]) == (first["system"], first["tools"])
    await assert_replays(handle)


async def test_usage_sums_every_kind_of_token_across_steps(
    temporal_client: Client,
    worker: Worker,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(
        tool_use(
            ToolCall("get_current_time", {}),
            usage=WireUsage(
                input_tokens=12,
                output_tokens=34,
                cache_creation_input_tokens=1500,
                cache_read_input_tokens=0,
            ),
        ),
        text(
            "It is noon.",
            usage=WireUsage(
                input_tokens=56,
                output_tokens=7,
                cache_creation_input_tokens=80,
                cache_read_input_tokens=1500,
            ),
        ),
    )
    handle = await start_task(temporal_client, worker, account, "What time is it?")
    result = await finish(handle)

    expected = Usage(
        input_tokens=68,
        output_tokens=41,
        cache_creation_input_tokens=1580,
        cache_read_input_tokens=1500,
    )
    assert result.status is TaskStatus.COMPLETED
    assert result.usage == expected
    assert (await task_row(sessions, result.task_id)).usage == expected.model_dump()
    await assert_replays(handle)


# -- what is carried back to Claude -------------------------------------------------------


async def test_pause_turn_continues_from_the_paused_reply(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    fake_claude.script(pause_turn("Still searching the web for flights"), text("done"))
    handle = await start_task(temporal_client, worker, account, "Find me a flight")
    result = await finish(handle)

    assert (result.status, result.stop_reason, result.text) == (
        TaskStatus.COMPLETED,
        "end_turn",
        "done",
    )
    first, second = fake_claude.requests
    # The continuation is the same conversation ending with the paused assistant turn, so
    # Claude picks up where it stopped; nothing else is added.
    assert second["messages"] == [
        *first["messages"],
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Still searching the web for flights"}],
        },
    ]
    blocks = [block for message in second["messages"] for block in message["content"]]
    assert all(block["type"] != "tool_result" for block in blocks)
    await assert_replays(handle)


async def test_thinking_block_goes_back_unchanged_before_its_tool_use(
    temporal_client: Client,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    thought = "The user wants «the time».\nI should not guess — call get_current_time.  "
    signature = "EqQBCkYIBxgCKkBkJ3h2Zm9vYmFyLzE0MDAwMC8rPT0=" + "A" * 64
    fake_claude.script(
        Reply(
            content=[
                {"type": "thinking", "thinking": thought, "signature": signature},
                {"type": "tool_use", "id": "toolu_clock", "name": "get_current_time", "input": {}},
            ],
            stop_reason="tool_use",
        ),
        text("It is noon."),
    )
    handle = await start_task(temporal_client, worker, account, "What time is it?")
    result = await finish(handle)

    assert (result.status, result.text) == (TaskStatus.COMPLETED, "It is noon.")
    _prompt, assistant, tool_results = fake_claude.requests[1]["messages"]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": thought, "signature": signature},
            {"type": "tool_use", "id": "toolu_clock", "name": "get_current_time", "input": {}},
        ],
    }
    assert tool_results["role"] == "user"
    assert [block["tool_use_id"] for block in tool_results["content"]] == ["toolu_clock"]
    await assert_replays(handle)
