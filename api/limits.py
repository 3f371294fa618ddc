"""Abuse limits: the request body cap (an ASGI middleware), the prompt size cap and the
per-user cap on unfinished tasks. The per-key rate limit is applied with the key lookup
(api/deps.py, core/api_keys.py)."""

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.limits import TooManyTasks, check_task_quota
from core.settings import Settings
from schemas.tables import User


class RequestTooLarge(HTTPException):
    """Raised while the body is read, so FastAPI passes it through (it turns other errors
    from reading the body into 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body too large: at most {max_bytes} bytes (KEEL_MAX_REQUEST_BYTES)",
        )


class BodySizeLimit:
    """Answers 413 to a body over `max_bytes`: at once from its Content-Length, and for a
    chunked body as soon as what has arrived passes the cap, before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = RequestTooLarge(self.max_bytes)
            response = JSONResponse({"detail": error.detail}, status_code=error.status_code)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def ensure_prompt_size(settings: Settings, prompt: str, field: str = "prompt") -> None:
    """422 naming `field` when the text is longer than KEEL_MAX_PROMPT_CHARS."""
    if len(prompt) > settings.max_prompt_chars:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field}: {len(prompt)} characters is too long; at most {settings.max_prompt_chars} "
            "(KEEL_MAX_PROMPT_CHARS)",
        )


async def ensure_task_quota(session: AsyncSession, settings: Settings, user: User) -> None:
    """429 when the user already has KEEL_MAX_RUNNING_TASKS_PER_USER unfinished tasks
    (see `check_task_quota`)."""
    try:
        await check_task_quota(session, settings, user.id)
    except TooManyTasks as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": "10"}
        ) from None
