"""The caller's API keys: list them, create one, revoke one."""

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import CurrentUser, DbSession
from core.api_keys import create_api_key, list_api_keys, revoke_api_key
from schemas.api import ApiKeyCreated, ApiKeyRevoked, ApiKeyView, CreateApiKeyRequest
from schemas.tables import ApiKey

router = APIRouter(prefix="/v1/me/keys", tags=["keys"])


def _view(key: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


@router.get("", response_model=list[ApiKeyView])
async def list_keys(user: CurrentUser, session: DbSession) -> list[ApiKeyView]:
    """The caller's API keys, oldest first, revoked ones included; never their secrets."""
    return [_view(key) for key in await list_api_keys(session, user.id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_key(
    body: CreateApiKeyRequest, user: CurrentUser, session: DbSession
) -> ApiKeyCreated:
    """A new API key for the caller; `key` is the secret, shown in this answer only."""
    key, secret = await create_api_key(session, user.id, body.name)
    await session.commit()  # before answering, so the key works at once
    return ApiKeyCreated(**_view(key).model_dump(), key=secret)


@router.delete("/{key_id}", response_model=ApiKeyRevoked)
async def revoke_key(
    key_id: str, request: Request, user: CurrentUser, session: DbSession
) -> ApiKeyRevoked:
    """Revoke one of the caller's keys: requests with it get 401 at once. Revoking the key
    this request uses is allowed, and the answer says so."""
    key = await revoke_api_key(session, key_id, user.id)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no API key {key_id}")
    await session.commit()  # before answering, so the key is refused at once
    current = key.id == request.state.api_key_id
    detail = (
        "revoked the key this request used: later requests with it get 401"
        if current
        else "revoked: requests with this key get 401"
    )
    return ApiKeyRevoked(**_view(key).model_dump(), revoked_current_key=current, detail=detail)
