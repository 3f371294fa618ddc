"""The fake Messages API, driven by the real `anthropic` SDK over loopback.

These pin the wire format the fake speaks (so agent tests can trust it) and
how the SDK surfaces each scripted failure.
"""

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest
import pytest_asyncio
from anthropic.types import Message

from tests.fake_anthropic import (
    NO_SCRIPTED_REPLY,
    FakeAnthropic,
    Reply,
    ToolCall,
    Usage,
    cut_stream,
    error,
    hang,
    pause_turn,
    text,
    thinking_then_text,
    tool_use,
)

MODEL = "claude-test-model"
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeAnthropic) -> FakeAnthropic:
    """The module's fake server, emptied for this test."""
    fake_server.reset()
    return fake_server


@pytest_asyncio.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake.base_url, api_key="test", max_retries=0
    ) as sdk:
        yield sdk


@pytest.mark.asyncio
async def test_text_reply_non_streaming(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(text("Hello there!", usage=Usage(11, 7, 3, 2)))

    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", "Hello there!")
    ]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 11
    assert message.usage.output_tokens == 7
    assert message.usage.cache_creation_input_tokens == 3
    assert message.usage.cache_read_input_tokens == 2


@pytest.mark.asyncio
async def test_text_reply_streaming(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.script(text("Hello there, streaming world!", usage=Usage(12, 9, 4, 1)))

    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        pieces = [piece async for piece in stream.text_stream]
        message = await stream.get_final_message()

    assert len(pieces) > 1, "text should arrive in several deltas"
    assert "".join(pieces) == "Hello there, streaming world!"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello there, streaming world!"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    # message_start carries input usage, message_delta the final totals.
    assert (
        message.usage.input_tokens,
        message.usage.output_tokens,
        message.usage.cache_creation_input_tokens,
        message.usage.cache_read_input_tokens,
    ) == (12, 9, 4, 1)


@pytest.mark.asyncio
async def test_create_with_stream_true_yields_raw_events_in_order(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(text("ab"))

    stream = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True)
    kinds = [event.type async for event in stream]

    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert fake.requests[0]["stream"] is True


@pytest.mark.asyncio
async def test_tool_use_two_calls_streamed(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    first = {"path": "todo.md", "content": "buy milk", "tags": ["a", "b"]}
    second: dict[str, Any] = {}
    fake.script(
        tool_use(
            ToolCall("notes_write", first, id="toolu_fixed"),
            ToolCall("get_time", second),
            text="On it.",
        )
    )

    json_chunks: dict[int, int] = {}
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_chunks[event.index] = json_chunks.get(event.index, 0) + 1
        message = await stream.get_final_message()

    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    calls = [block for block in message.content if block.type == "tool_use"]
    assert [(call.name, call.input) for call in calls] == [
        ("notes_write", first),
        ("get_time", second),
    ]
    assert calls[0].id == "toolu_fixed"
    assert calls[1].id.startswith("toolu_")
    # Partial JSON must be accumulated by the SDK, not handed over whole.
    assert json_chunks[1] >= 2
    assert json_chunks[2] >= 2


@pytest.mark.asyncio
async def test_tool_use_non_streaming_has_input_object(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(tool_use(ToolCall("search", {"query": "temporal"})))

    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    (call,) = message.content
    assert call.type == "tool_use"
    assert call.input == {"query": "temporal"}
    assert message.stop_reason == "tool_use"


@pytest.mark.asyncio
@pytest.mark.parametrize("streaming", [False, True])
async def test_thinking_block_round_trip(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic, streaming: bool
) -> None:
    fake.script(thinking_then_text("Let me think it over.", "sig-123", "Answer: 4"))

    message: Message
    if streaming:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
            message = await stream.get_final_message()
    else:
        message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    thinking, answer = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Let me think it over."
    assert thinking.signature == "sig-123"
    assert answer.type == "text"
    assert answer.text == "Answer: 4"


@pytest.mark.asyncio
async def test_pause_turn(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.script(pause_turn("still working"))

    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert message.stop_reason == "pause_turn"
    assert message.content[0].type == "text"


@pytest.mark.asyncio
async def test_error_400_raises_bad_request(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(error(400, "invalid_request_error", "messages: bad shape"))

    with pytest.raises(anthropic.BadRequestError) as raised:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert raised.value.status_code == 400
    assert raised.value.type == "invalid_request_error"
    assert raised.value.api_message == "messages: bad shape"
    assert raised.value.request_id is not None


@pytest.mark.asyncio
async def test_error_429_raises_rate_limit_with_retry_after(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(error(429, "rate_limit_error", "slow down", headers={"retry-after": "1"}))

    with pytest.raises(anthropic.RateLimitError) as raised:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert raised.value.response.headers["retry-after"] == "1"
    assert raised.value.type == "rate_limit_error"


@pytest.mark.asyncio
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_529_raises_status_error(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic, streaming: bool
) -> None:
    fake.script(error(529, "overloaded_error", "Overloaded"))

    with pytest.raises(anthropic.APIStatusError) as raised:
        if streaming:
            async with client.messages.stream(
                model=MODEL, max_tokens=100, messages=HELLO
            ) as stream:
                await stream.get_final_message()
        else:
            await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert raised.value.status_code == 529
    assert raised.value.type == "overloaded_error"


@pytest.mark.asyncio
async def test_cut_stream_raises_mid_stream(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(cut_stream("partial answer"))

    received: list[str] = []
    # SDK 2.12 lets the transport error escape the event iterator unwrapped
    # (httpx2.RemoteProtocolError: "incomplete chunked read"); a later SDK
    # may wrap it as APIConnectionError, so accept either.
    with pytest.raises(
        (anthropic.APIConnectionError, httpx.TransportError, _httpx2_transport_error())
    ):
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
            async for piece in stream.text_stream:
                received.append(piece)

    assert "".join(received) == "partial answer"


@pytest.mark.asyncio
async def test_cut_stream_non_streaming_is_connection_error(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(cut_stream())

    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)


@pytest.mark.asyncio
async def test_hang_outlasts_client_timeout(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(hang(5), text("next"))

    with pytest.raises(anthropic.APITimeoutError):
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, timeout=0.2)

    # The abandoned hang does not block the next request.
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert message.content[0].type == "text"
    assert message.content[0].text == "next"


@pytest.mark.asyncio
async def test_requests_are_recorded_in_order_including_errors(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(error(400, "invalid_request_error", "no"), text("ok"))

    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "first"}]
        )
    await client.messages.create(
        model=MODEL,
        max_tokens=20,
        system="be brief",
        messages=[{"role": "user", "content": "second"}],
    )

    assert [body["messages"][0]["content"] for body in fake.requests] == ["first", "second"]
    assert fake.requests[1]["system"] == "be brief"
    assert fake.requests[1]["max_tokens"] == 20


@pytest.mark.asyncio
async def test_respond_with_computes_reply_from_body(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    def echo(body: dict[str, Any]) -> Reply:
        return text(f"echo: {body['messages'][-1]['content']}")

    fake.respond_with(echo)
    replies = [
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": word}]
        )
        for word in ("one", "two")
    ]
    assert [
        message.content[0].text for message in replies if message.content[0].type == "text"
    ] == [
        "echo: one",
        "echo: two",
    ]

    # script() clears the responder; with the queue empty the default shows.
    fake.script()
    message = await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert message.content[0].type == "text"
    assert message.content[0].text == NO_SCRIPTED_REPLY


@pytest.mark.asyncio
async def test_unscripted_request_gets_plain_default(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert message.content[0].type == "text"
    assert message.content[0].text == NO_SCRIPTED_REPLY


@pytest.mark.asyncio
async def test_missing_credentials_answer_401(fake: FakeAnthropic) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/messages", json={"model": MODEL, "max_tokens": 1, "messages": HELLO}
        )

    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_count_tokens(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "x" * 400}]

    counted = await client.messages.count_tokens(model=MODEL, messages=messages)

    assert 100 <= counted.input_tokens <= 120
    assert fake.requests == []  # only /v1/messages bodies are recorded


def test_sync_client_and_context_manager() -> None:
    with FakeAnthropic() as fake:
        fake.script(text("from a sync test"))
        with anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0) as sdk:
            message = sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        assert message.content[0].type == "text"
        assert message.content[0].text == "from a sync test"

    with pytest.raises(RuntimeError):
        _ = fake.base_url  # stopped


def _httpx2_transport_error() -> type[Exception]:
    """Return httpx2.TransportError, the transport the anthropic 2.x SDK uses (httpx's if absent)."""
    try:
        import httpx2
    except ImportError:
        return httpx.TransportError
    error_class: type[Exception] = httpx2.TransportError
    return error_class
