"""A scriptable fake of the Anthropic Messages API for tests and benchmarks.

`FakeAnthropic` serves `POST /v1/messages` (plain JSON and server-sent-event
streaming) and `POST /v1/messages/count_tokens` on 127.0.0.1, on a free port,
so that the real `anthropic` SDK can be pointed at it::

    with FakeAnthropic() as fake:
        fake.script(text("hello"), tool_use(ToolCall("search", {"q": "x"})))
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test", max_retries=0)
        ...

Each request pops the next scripted `Reply`; `respond_with` computes replies
from the request body instead (useful when many tasks run at once).

The server is starlette on uvicorn, running its own event loop in a daemon
thread. That lets sync and async tests share it, and a single loop serves
thousands of concurrent (delayed) requests without a thread per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "FakeAnthropic",
    "Reply",
    "ToolCall",
    "Usage",
    "cut_stream",
    "error",
    "hang",
    "pause_turn",
    "text",
    "thinking_then_text",
    "tool_use",
]

NO_SCRIPTED_REPLY = "(fake) no scripted reply"
"""Text answered when neither the queue nor the responder has a reply."""

Responder = Callable[[dict[str, Any]], "Reply | None"]

# Streamed text and tool JSON are split into about this many deltas, so the
# SDK's accumulation of partial chunks is exercised on every streamed reply.
_STREAM_CHUNKS = 3


@dataclass
class Usage:
    """Token counts reported in a reply's `usage` (all four fields always sent)."""

    input_tokens: int = 10
    output_tokens: int = 5
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def to_json(self) -> dict[str, int]:
        """Return the wire form of this usage."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


@dataclass
class ToolCall:
    """One tool_use block the fake model emits; `id` is generated ("toolu_...") when None."""

    name: str
    input: dict[str, Any]
    id: str | None = None


@dataclass
class Reply:
    """One scripted answer to one /v1/messages request.

    Build these with the helper functions (`text`, `tool_use`, `error`, ...)
    rather than by hand. `content` holds blocks in the non-streaming wire
    shape; a tool_use block whose "id" is None gets a fresh id per response.
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    usage: Usage = field(default_factory=Usage)
    # Seconds to wait before answering at all (status line included).
    delay: float = 0.0
    # 200 answers a message; anything else answers an API error body.
    status: int = 200
    error_type: str = ""
    error_message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # Drop the connection instead of completing the answer (see `cut_stream`).
    cut: bool = False


def text(
    text: str,
    *,
    stop_reason: str = "end_turn",
    usage: Usage | None = None,
    delay: float = 0.0,
) -> Reply:
    """Reply with a single text block."""
    return Reply(
        content=[{"type": "text", "text": text}],
        stop_reason=stop_reason,
        usage=usage or Usage(),
        delay=delay,
    )


def tool_use(
    *calls: ToolCall,
    text: str | None = None,
    usage: Usage | None = None,
    delay: float = 0.0,
) -> Reply:
    """Reply with stop_reason "tool_use": an optional text block, then one tool_use block per call, in order."""
    if not calls:
        raise ValueError("tool_use() needs at least one ToolCall")
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    for call in calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
    return Reply(content=content, stop_reason="tool_use", usage=usage or Usage(), delay=delay)


def thinking_then_text(thinking: str, signature: str, text: str) -> Reply:
    """Reply with a thinking block (carrying `signature`) followed by a text block."""
    return Reply(
        content=[
            {"type": "thinking", "thinking": thinking, "signature": signature},
            {"type": "text", "text": text},
        ]
    )


def pause_turn(text: str) -> Reply:
    """Reply with a text block and stop_reason "pause_turn"."""
    return Reply(content=[{"type": "text", "text": text}], stop_reason="pause_turn")


def error(
    status: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Answer an API error, e.g. error(429, "rate_limit_error", "slow down", headers={"retry-after": "1"})."""
    if status < 400:
        raise ValueError(f"error() needs a 4xx/5xx status, got {status}")
    return Reply(
        status=status, error_type=error_type, error_message=message, headers=dict(headers or {})
    )


def cut_stream(after_text: str = "partial") -> Reply:
    """Drop the connection mid-answer.

    A streaming request gets message_start and text deltas spelling
    `after_text`, then the connection closes without content_block_stop or
    message_stop. A non-streaming request is closed without any response.
    """
    return Reply(content=[{"type": "text", "text": after_text}], cut=True)


def hang(seconds: float) -> Reply:
    """Wait `seconds` before answering text("late"); for timeout and cancellation tests."""
    return text("late", delay=seconds)


class FakeAnthropic:
    """A fake Anthropic Messages API server on 127.0.0.1, run in a background thread.

    Use as `with FakeAnthropic() as fake:` or call `start()`/`stop()`.
    `requests` lists the JSON body of every /v1/messages request, in arrival
    order, including those answered with errors.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._queue: collections.deque[Reply] = collections.deque()
        self._responder: Responder | None = None
        # Guards the queue, responder and requests: tests script from their
        # own thread while the server thread pops replies.
        self._lock = threading.Lock()
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        # Open connections by client address, so a handler can drop its own
        # connection (ASGI offers no way to abort a response).
        self._transports: dict[tuple[str, int], asyncio.Transport] = {}

    # -- lifecycle -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Return the server's root URL, e.g. "http://127.0.0.1:54321" (pass as base_url)."""
        if self._port is None:
            raise RuntimeError("FakeAnthropic is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FakeAnthropic:
        """Start the server thread and wait until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeAnthropic is already started")
        # Binding here (port 0) picks a free port before the thread starts and
        # leaves no window in which another process could take it. The proto
        # must be IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on
        # accepted sockets whose proto says TCP, and without it Nagle plus
        # delayed ACKs add ~40 ms to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._build_app(),
            http=_transport_tracking_protocol(self._transports),
            lifespan="off",
            access_log=False,
            # None for both: leave the process's logging configuration alone.
            log_config=None,
            log_level=None,
            # Benchmarks open ~1000 connections at once.
            backlog=4096,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=self._run_server, args=(server, sock), name=f"fake-anthropic-{port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._server = self._thread = None
                sock.close()
                raise RuntimeError("FakeAnthropic server failed to start")
            time.sleep(0.005)
        self._port = port
        return self

    def stop(self) -> None:
        """Stop the server, dropping any requests still waiting out a delay."""
        server, thread, loop, stopping = self._server, self._thread, self._loop, self._stopping
        if server is None or thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            # Wake delayed handlers first so uvicorn's graceful shutdown does
            # not wait for a long hang() to run out.
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        server.should_exit = True
        thread.join(timeout=15)
        self._server = self._thread = self._loop = self._stopping = None
        self._port = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Replace the reply queue (and clear any responder); each request pops the next reply."""
        with self._lock:
            self._queue = collections.deque(replies)
            self._responder = None

    def respond_with(self, responder: Responder) -> None:
        """Compute replies from the request body once the queue is empty.

        The responder runs on the server's event loop, so it must be quick and
        must not block; returning None falls back to the "no scripted reply"
        text. `script()` and `reset()` clear it.
        """
        with self._lock:
            self._responder = responder

    def reset(self) -> None:
        """Empty the queue, drop the responder and clear recorded requests."""
        with self._lock:
            self._queue.clear()
            self._responder = None
            # In place, so a test holding `fake.requests` sees the reset.
            self.requests.clear()

    # -- server internals ----------------------------------------------------

    def _run_server(self, server: uvicorn.Server, sock: socket.socket) -> None:
        asyncio.run(self._serve(server, sock))

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            ],
            exception_handlers={HTTPException: _http_exception_as_api_error},
        )

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self._responder
        if responder is not None:
            # Called outside the lock: a responder may inspect `requests`.
            try:
                reply = responder(body)
            except Exception as exc:
                return error(500, "api_error", f"(fake) responder raised {exc!r}")
            if reply is not None:
                return reply
        return text(NO_SCRIPTED_REPLY)

    async def _messages(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return _error_response(
                400, "invalid_request_error", "request body is not a JSON object"
            )
        self._record(body)
        if not _has_credentials(request):
            return _error_response(401, "authentication_error", _NO_CREDENTIALS)
        missing = [name for name in ("model", "max_tokens", "messages") if name not in body]
        if missing:
            return _error_response(400, "invalid_request_error", f"{missing[0]}: Field required")
        return _ReplyResponse(self, self._next_reply(body), body)

    async def _count_tokens(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return _error_response(
                400, "invalid_request_error", "request body is not a JSON object"
            )
        if not _has_credentials(request):
            return _error_response(401, "authentication_error", _NO_CREDENTIALS)
        # A rough stand-in for tokenising: about four characters per token.
        return JSONResponse({"input_tokens": len(json.dumps(body.get("messages", []))) // 4})

    async def _pause(
        self, seconds: float, receive: Receive
    ) -> Literal["elapsed", "disconnected", "stopping"]:
        """Sleep, but give up early if the client goes away or the server stops."""
        assert self._stopping is not None
        sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiters = {sleeper, gone, stopping}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if stopping in done:
            return "stopping"
        if gone in done:
            return "disconnected"
        return "elapsed"

    async def _drop_connection(self, scope: Scope, receive: Receive) -> None:
        """Close this request's connection after flushing what was already sent."""
        client = scope.get("client")
        transport = self._transports.get((client[0], client[1])) if client else None
        if transport is None:
            return
        transport.close()
        # Returning before uvicorn notices the disconnect would make it log
        # "ASGI callable returned without completing response".
        try:
            await asyncio.wait_for(_wait_for_disconnect(receive), timeout=5)
        except TimeoutError:
            transport.abort()


class _ReplyResponse(Response):
    """Sends one `Reply` as JSON, as an SSE stream, or as a dropped connection."""

    def __init__(self, fake: FakeAnthropic, reply: Reply, body: dict[str, Any]) -> None:
        super().__init__()
        self.fake = fake
        self.reply = reply
        self.model = str(body.get("model", "claude-fake"))
        self.stream = body.get("stream") is True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = self.reply
        if reply.delay > 0:
            outcome = await self.fake._pause(reply.delay, receive)
            if outcome == "disconnected":
                return  # nobody to answer; uvicorn stays quiet about it
            if outcome == "stopping":
                await self.fake._drop_connection(scope, receive)
                return
        if reply.status != 200:
            response = _error_response(
                reply.status, reply.error_type, reply.error_message, reply.headers
            )
            await response(scope, receive, send)
            return
        message = _message_json(reply, self.model)
        if not self.stream:
            if reply.cut:
                await self.fake._drop_connection(scope, receive)
                return
            await JSONResponse(message, headers=_headers(reply.headers))(scope, receive, send)
            return

        headers = _headers(reply.headers) | {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            }
        )
        for event_name, data in _stream_events(message, reply.usage):
            if reply.cut and event_name == "content_block_stop":
                # Everything up to the first finished block is on the wire;
                # now vanish the way a dropped proxy connection would.
                await self.fake._drop_connection(scope, receive)
                return
            await send(
                {"type": "http.response.body", "body": _sse(event_name, data), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _transport_tracking_protocol(
    transports: dict[tuple[str, int], asyncio.Transport],
) -> type[H11Protocol]:
    """Return an H11Protocol subclass that records each connection's transport in `transports`."""

    class TransportTrackingH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client is not None:
                transports[self.client] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                transports.pop(self.client, None)
            super().connection_lost(exc)

    return TransportTrackingH11Protocol


_NO_CREDENTIALS = "x-api-key header (or Authorization: Bearer) is required"


def _has_credentials(request: Request) -> bool:
    # The real API takes x-api-key; anthropic SDK 2.x sends the api_key as
    # "Authorization: Bearer <key>" instead, so accept either.
    authorization = request.headers.get("authorization", "")
    return bool(request.headers.get("x-api-key")) or (
        authorization.lower().startswith("bearer ") and bool(authorization[7:].strip())
    )


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _headers(extra: dict[str, str]) -> dict[str, str]:
    # The SDK exposes request-id on responses and errors; send one like the real API.
    return {"request-id": _new_id("req")} | extra


def _error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    hdrs = _headers(headers or {})
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": hdrs["request-id"],
    }
    return JSONResponse(body, status_code=status, headers=hdrs)


async def _http_exception_as_api_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and methods answer in the API's error shape, so the SDK
    # raises NotFoundError etc. with a readable message.
    assert isinstance(exc, HTTPException)
    error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(
        exc.status_code, error_type, f"(fake) {request.method} {request.url.path}: {exc.detail}"
    )


def _message_json(reply: Reply, model: str) -> dict[str, Any]:
    """Return the complete non-streaming Message for `reply`, with fresh ids."""
    content = []
    for block in reply.content:
        block = dict(block)
        if block["type"] == "tool_use" and block.get("id") is None:
            block["id"] = _new_id("toolu")
        content.append(block)
    return {
        "id": _new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": reply.usage.to_json(),
    }


def _chunks(value: str, parts: int = _STREAM_CHUNKS) -> list[str]:
    """Split `value` into up to `parts` consecutive non-empty pieces."""
    if not value:
        return []
    size = -(-len(value) // parts)  # ceiling division
    return [value[i : i + size] for i in range(0, len(value), size)]


def _stream_events(message: dict[str, Any], usage: Usage) -> list[tuple[str, dict[str, Any]]]:
    """Return the SSE events (name, data) that stream `message`, in wire order."""
    start_message = dict(message, content=[], stop_reason=None, stop_sequence=None)
    # Like the real API: message_start reports input usage and a token or so
    # of output; message_delta carries the cumulative totals.
    start_message["usage"] = dict(usage.to_json(), output_tokens=min(1, usage.output_tokens))
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start_message}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        start: dict[str, Any]
        deltas: list[dict[str, Any]]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"])]
        elif block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": piece}
                for piece in _chunks(block["thinking"])
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif block["type"] == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw_input = json.dumps(block["input"])
            # At least two pieces, so the SDK must join partial JSON.
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _chunks(raw_input, max(2, _STREAM_CHUNKS))
            ]
        else:
            raise ValueError(f"cannot stream content block of type {block['type']!r}")
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": usage.to_json(),
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _sse(event_name: str, data: dict[str, Any]) -> bytes:
    return f"event: {event_name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
