"""API keys: create, list, revoke, and authenticate a request with the key's rate limit.

The rate limit is a sliding-window counter kept on the key's row, so it holds across API
replicas: the requests admitted in the current minute plus the previous minute's, weighted
by how much of it still lies within the last 60 seconds, must stay under the limit. Looking
the key up, counting the request and deciding are one SQL statement."""

import hashlib
import math
import secrets
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.tables import ApiKey, User, from_row, utcnow

API_KEY_PREFIX = "keel_"
SHOWN_PREFIX_CHARS = 12


def hash_api_key(key: str) -> str:
    """Keys are 256-bit random strings, so a plain SHA-256 is a sound one-way store."""
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(session: AsyncSession, user_id: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for the user; the secret is returned once and only its hash kept."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        user_id=user_id,
        key_hash=hash_api_key(secret),
        prefix=secret[:SHOWN_PREFIX_CHARS],
        name=name,
    )
    session.add(key)
    await session.flush()
    return key, secret


async def list_api_keys(session: AsyncSession, user_id: str | None = None) -> list[ApiKey]:
    """The user's keys (every user's when `user_id` is None), oldest first, revoked included."""
    statement = select(ApiKey)
    if user_id is not None:
        statement = statement.where(ApiKey.user_id == user_id)
    return list(await session.exec(statement.order_by(col(ApiKey.created_at), col(ApiKey.id))))


async def revoke_api_key(
    session: AsyncSession, key_id: str, user_id: str | None = None
) -> ApiKey | None:
    """Revoke a key (only if it is `user_id`'s, when given): requests with it get 401 from
    now on. Revoking again keeps the first `revoked_at`. None if there is no such key."""
    statement = select(ApiKey).where(ApiKey.id == key_id).with_for_update()
    if user_id is not None:
        statement = statement.where(ApiKey.user_id == user_id)
    key = (await session.exec(statement)).first()
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
    return key


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, and whether their key's rate limit admits it."""

    user: User
    key_id: str
    admitted: bool
    retry_after_seconds: int


# One round trip: lock the key's row (so concurrent requests on any replica count one after
# another), roll its window forward, admit the request if the weighted count is under the
# limit, count it if admitted, and return the key's user.
_AUTHENTICATE = text(
    """
WITH key AS (
    SELECT id, user_id, date_trunc('minute', now()) AS minute,
           rate_window_start, rate_window_count, rate_previous_count
    FROM api_keys
    WHERE key_hash = :key_hash AND revoked_at IS NULL
    FOR UPDATE
), counts AS (
    SELECT id, user_id, minute,
           CASE WHEN rate_window_start = minute THEN rate_window_count ELSE 0 END AS current,
           CASE WHEN rate_window_start = minute THEN rate_previous_count
                WHEN rate_window_start = minute - interval '1 minute' THEN rate_window_count
                ELSE 0 END AS previous,
           extract(epoch FROM now() - minute)::float / 60 AS elapsed
    FROM key
), decided AS (
    SELECT *, (:limit = 0 OR previous * (1 - elapsed) + current < :limit) AS admitted
    FROM counts
), updated AS (
    UPDATE api_keys
    SET last_used_at = now(),
        rate_window_start = decided.minute,
        rate_previous_count = decided.previous,
        rate_window_count = decided.current + CASE WHEN decided.admitted THEN 1 ELSE 0 END
    FROM decided
    WHERE api_keys.id = decided.id
    RETURNING api_keys.id
)
SELECT users.*, decided.id AS key_id, decided.admitted, decided.elapsed,
       decided.previous, decided.current
FROM updated
JOIN decided ON decided.id = updated.id
JOIN users ON users.id = decided.user_id
"""
)


def _retry_after(limit: int, previous: int, current: int, elapsed: float) -> int:
    """Seconds until the weighted count falls under the limit again: when the previous
    minute's share has shrunk enough, or else when the current minute ends."""
    if current < limit and previous > 0:
        wait = 1 - (limit - current) / previous - elapsed
    else:
        wait = 1 - elapsed
    return max(1, math.ceil(wait * 60))


async def authenticate(connection: AsyncConnection, key: str, limit: int) -> Caller | None:
    """The caller owning this unrevoked key, with the rate limit (`limit` requests per
    minute, 0 for none) applied and this request counted; None for an unknown or revoked key.
    Run it on an autocommit connection, so the key's row is locked only for this statement."""
    row = (
        await connection.execute(_AUTHENTICATE, {"key_hash": hash_api_key(key), "limit": limit})
    ).first()
    if row is None:
        return None
    user = from_row(User, row._mapping)
    retry_after = 0 if row.admitted else _retry_after(limit, row.previous, row.current, row.elapsed)
    return Caller(
        user=user, key_id=row.key_id, admitted=row.admitted, retry_after_seconds=retry_after
    )
