"""A fake Telegram Bot API on loopback, for the real python-telegram-bot to talk to.

Point the library at it with `base_url=fake.base_url` (Keel: `KEEL_TELEGRAM_BASE_URL`).
It answers the methods Keel's bot uses, records what the bot sent, hands out queued
updates through long-polled `getUpdates` (as Telegram does: an update is handed out
until an `offset` past it confirms it), and can answer `sendMessage` with flood control
(429 with `retry_after`). It runs as a task on the test's own event loop::

    async with FakeTelegram(TOKEN) as fake:
        fake.user_says(chat_id=42, text="/start CODE")
        reply = await fake.wait_for_message(42, "Linked")
"""

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BOT_USER = {"id": 7000001, "is_bot": True, "first_name": "Keel", "username": "keel_test_bot"}
# Parameters the library sends as text; every other parameter is JSON-encoded.
_TEXT_PARAMETERS = {"text", "callback_query_id", "url", "secret_token"}
# Held getUpdates calls return after at most this long, so the bot stops promptly.
_LONG_POLL_CAP = 1.0


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.sent: list[dict[str, Any]] = []  # messages the bot sent, as Telegram stored them
        self.edits: list[dict[str, Any]] = []  # editMessageText calls
        self.callback_answers: list[dict[str, Any]] = []
        self.chat_actions: list[dict[str, Any]] = []
        self.flood_refusals = 0  # sendMessage calls answered 429
        self.calls: list[str] = []  # every method called, in order
        self.commands: list[dict[str, str]] = []  # the bot's command menu
        self._flood_left = 0
        self._flood_after = 0
        self._blocked: set[int] = set()
        self._retry_after = 1
        self._updates: list[dict[str, Any]] = []
        self._news = asyncio.Event()
        self._changed = asyncio.Event()
        # Unique across fakes: the bot remembers update ids it has seen in the database.
        self._next_update_id = time.time_ns() // 1000
        self._next_message_id = 1
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        """python-telegram-bot's `base_url` (the token is appended to it)."""
        return f"http://127.0.0.1:{self._port}/bot"

    async def __aenter__(self) -> "FakeTelegram":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/bot{token}/{method}", self._call, methods=["GET", "POST"])])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # noqa: ASYNC110 (uvicorn offers only a flag)
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._serving is not None
        self._server.should_exit = True
        await self._serving

    # --- what users do ------------------------------------------------------------------

    def user_says(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a message from a user in a private chat (a leading /command is marked as
        one, as Telegram does); returns the update."""
        message: dict[str, Any] = {
            "message_id": self._message_id(),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": "Ann"},
            "from": _person(user_id or chat_id),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        return self.queue({"update_id": self._update_id(), "message": message})

    def press(
        self, message: dict[str, Any], data: str, *, user_id: int | None = None
    ) -> dict[str, Any]:
        """Queue a press of an inline button under `message` (one the bot sent)."""
        presser = user_id or message["chat"]["id"]
        query = {
            "id": f"cb{self._update_id()}",
            "from": _person(presser),
            "chat_instance": "fake",
            "message": message,
            "data": data,
        }
        return self.queue({"update_id": self._update_id(), "callback_query": query})

    def queue(self, *updates: dict[str, Any]) -> dict[str, Any]:
        """Queue updates as they are (the same one twice simulates a redelivery)."""
        self._updates.extend(updates)
        self._news.set()
        return updates[-1]

    def block(self, chat_id: int) -> None:
        """The user blocks the bot: sending to `chat_id` answers 403 from now on."""
        self._blocked.add(chat_id)

    def flood(self, count: int, retry_after: int = 1, after: int = 0) -> None:
        """Answer `count` sendMessage calls with 429 and this `retry_after`, once `after`
        more messages have gone through."""
        self._flood_left = count
        self._flood_after = after
        self._retry_after = retry_after

    # --- what tests check ---------------------------------------------------------------

    def messages_to(self, chat_id: int) -> list[dict[str, Any]]:
        return [message for message in self.sent if message["chat"]["id"] == chat_id]

    async def wait_for(self, found: Callable[[], Any], within: float = 30.0) -> Any:
        """Wait until `found()` returns something truthy; return it."""
        deadline = asyncio.get_running_loop().time() + within
        while not (result := found()):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; the bot sent {[m['text'] for m in self.sent]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return result

    async def wait_for_message(
        self, chat_id: int, containing: str, within: float = 30.0
    ) -> dict[str, Any]:
        """The first message to `chat_id` whose text contains `containing`."""

        def found() -> dict[str, Any] | None:
            matches = [m for m in self.messages_to(chat_id) if containing in m["text"]]
            return matches[0] if matches else None

        result: dict[str, Any] = await self.wait_for(found, within)
        return result

    # --- the Bot API ----------------------------------------------------------------------

    async def _call(self, request: Request) -> JSONResponse:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.path_params["method"]
        params = await _parameters(request)
        self.calls.append(method)
        try:
            if method == "getUpdates":
                return _ok(await self._get_updates(params))
            handler = {
                "getMe": self._get_me,
                "deleteWebhook": self._delete_webhook,
                "setWebhook": self._set_webhook,
                "setMyCommands": self._set_my_commands,
                "sendChatAction": self._send_chat_action,
                "answerCallbackQuery": self._answer_callback_query,
                "sendMessage": self._send_message,
                "editMessageText": self._edit_message_text,
            }.get(method)
            if handler is None:
                return _error(404, "Not Found: method not found")
            response: JSONResponse = handler(params)
            return response
        finally:
            self._changed.set()

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            self._news.clear()
            timeout = min(float(params.get("timeout") or 0), _LONG_POLL_CAP)
            try:
                await asyncio.wait_for(self._news.wait(), timeout)
            except TimeoutError:
                return []
        return self._updates[: int(params.get("limit") or 100)]

    def _get_me(self, params: dict[str, Any]) -> JSONResponse:
        return _ok(BOT_USER)

    def _delete_webhook(self, params: dict[str, Any]) -> JSONResponse:
        return _ok(True)

    def _set_webhook(self, params: dict[str, Any]) -> JSONResponse:
        return _ok(True)

    def _set_my_commands(self, params: dict[str, Any]) -> JSONResponse:
        self.commands = params["commands"]
        return _ok(True)

    def _send_chat_action(self, params: dict[str, Any]) -> JSONResponse:
        self.chat_actions.append(params)
        return _ok(True)

    def _answer_callback_query(self, params: dict[str, Any]) -> JSONResponse:
        self.callback_answers.append(params)
        return _ok(True)

    def _send_message(self, params: dict[str, Any]) -> JSONResponse:
        if self._flood_left > 0 and self._flood_after > 0:
            self._flood_after -= 1
        elif self._flood_left > 0:
            self._flood_left -= 1
            self.flood_refusals += 1
            return _error(
                429,
                f"Too Many Requests: retry after {self._retry_after}",
                parameters={"retry_after": self._retry_after},
            )
        if int(params["chat_id"]) in self._blocked:
            return _error(403, "Forbidden: bot was blocked by the user")
        if len(str(params["text"])) > 4096:
            return _error(400, "Bad Request: message is too long")
        message: dict[str, Any] = {
            "message_id": self._message_id(),
            "date": int(time.time()),
            "chat": {"id": int(params["chat_id"]), "type": "private", "first_name": "Ann"},
            "from": BOT_USER,
            "text": str(params["text"]),
        }
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        self.sent.append(message)
        return _ok(message)

    def _edit_message_text(self, params: dict[str, Any]) -> JSONResponse:
        self.edits.append(params)
        for message in self.sent:
            if message["message_id"] == int(params["message_id"]):
                message["text"] = str(params["text"])
                message.pop("reply_markup", None)
                return _ok(message)
        return _error(400, "Bad Request: message to edit not found")

    def _update_id(self) -> int:
        self._next_update_id += 1
        return self._next_update_id

    def _message_id(self) -> int:
        self._next_message_id += 1
        return self._next_message_id


def _person(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": "Ann", "last_name": f"#{user_id}"}


async def _parameters(request: Request) -> dict[str, Any]:
    """The call's parameters: form fields (as python-telegram-bot sends them, non-text
    values JSON-encoded) or a JSON body."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body: dict[str, Any] = await request.json()
        return body
    return {key: _value(key, text) for key, text in parse_qsl((await request.body()).decode())}


def _value(key: str, text: str) -> Any:
    if key in _TEXT_PARAMETERS:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # a plain string, e.g. a chat action


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result})


def _error(code: int, description: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error_code": code, "description": description, **extra}, status_code=code
    )
