"""A remote codec endpoint (Temporal's codec server protocol) so the Temporal Web UI and CLI
can show operators the payloads Keel encrypts in Temporal's history.

Admins only: a payload carries no owner, so whoever may decode may read every user's
prompts and results; that is an operator's power, not a user's."""

import base64
from typing import Annotated

from fastapi import APIRouter, Cookie, Depends, HTTPException, Request, Response, status
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload

from api.deps import AppSettings, BearerCredentials, user_for_key
from core.encryption import EncryptionCodec, UndecryptablePayload
from schemas.api import CodecPayload, CodecPayloads
from schemas.tables import User

PATH_PREFIX = "/codec"
COOKIE_SECONDS = 8 * 3600

router = APIRouter(prefix=PATH_PREFIX, tags=["codec"])


class CodecCors:
    """CORS for the codec routes only, so the Web UI's origin can call them from the browser
    (with the Authorization header or the codec cookie); the rest of the API stays
    same-origin."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=["Authorization", "Content-Type", "X-Namespace"],
            allow_credentials=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PATH_PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def get_operator(
    request: Request,
    settings: AppSettings,
    credentials: BearerCredentials,
    keel_codec: Annotated[str | None, Cookie(description="set by POST /codec/session")] = None,
) -> User:
    """An admin, by the Bearer API key or (for the Web UI in a browser) the codec cookie."""
    key = credentials.credentials if credentials is not None else keel_codec
    user = await user_for_key(request, settings, key)
    if not user.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "the codec endpoint is for admins: decoding reveals every user's payloads",
        )
    return user


Operator = Annotated[User, Depends(get_operator)]


def _codec(request: Request) -> EncryptionCodec:
    codec: EncryptionCodec | None = request.app.state.codec
    if codec is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "encryption is off (KEEL_ENCRYPTION_KEYS is unset)"
        )
    return codec


def _from_json(body: CodecPayloads) -> list[Payload]:
    try:
        return [
            Payload(
                metadata={
                    name: base64.b64decode(value, validate=True)
                    for name, value in item.metadata.items()
                },
                data=base64.b64decode(item.data, validate=True),
            )
            for item in body.payloads
        ]
    except ValueError:  # not base64, or not even ASCII
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "payloads: metadata values and data must be base64",
        ) from None


def _to_json(payloads: list[Payload]) -> CodecPayloads:
    return CodecPayloads(
        payloads=[
            CodecPayload(
                metadata={
                    name: base64.b64encode(value).decode()
                    for name, value in payload.metadata.items()
                },
                data=base64.b64encode(payload.data).decode(),
            )
            for payload in payloads
        ]
    )


@router.post("/session", status_code=status.HTTP_204_NO_CONTENT)
async def open_session(
    response: Response, _operator: Operator, credentials: BearerCredentials
) -> None:
    """For the Web UI: sets the `keel_codec` cookie (HttpOnly, for /codec only, 8 hours) to
    the admin key this request used, so the browser can call the codec endpoint with the
    UI's "Include cross-origin credentials" setting. Call it from the browser (e.g. /docs)."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send the admin key as a Bearer key")
    response.set_cookie(
        "keel_codec",
        credentials.credentials,
        max_age=COOKIE_SECONDS,
        path=PATH_PREFIX,
        httponly=True,
        secure=True,
        samesite="none",
    )


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
async def close_session(response: Response) -> None:
    """Forget the `keel_codec` cookie."""
    response.delete_cookie(
        "keel_codec", path=PATH_PREFIX, httponly=True, secure=True, samesite="none"
    )


@router.post("/encode", response_model=CodecPayloads)
async def encode(body: CodecPayloads, request: Request, _operator: Operator) -> CodecPayloads:
    """Encrypt payloads with the current key (Temporal's remote codec protocol)."""
    codec = _codec(request)
    return _to_json(await codec.encode(_from_json(body)))


@router.post("/decode", response_model=CodecPayloads)
async def decode(body: CodecPayloads, request: Request, _operator: Operator) -> CodecPayloads:
    """Decrypt payloads (Temporal's remote codec protocol); unencrypted ones come back as
    they are."""
    codec = _codec(request)
    try:
        return _to_json(await codec.decode(_from_json(body)))
    except UndecryptablePayload as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"payloads: {exc}") from None
