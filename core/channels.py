"""Linked channels: one-time link codes, and which chat belongs to which user."""

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.tables import ChannelLinkCode, User, UserChannel, utcnow

TELEGRAM = "telegram"
LINK_CODE_TTL = timedelta(minutes=15)


class LinkRefused(Exception):
    """A link code that cannot link: unknown, expired or already used. The message says
    which, and what to do."""


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


async def create_link_code(
    session: AsyncSession, user_id: str, channel: str
) -> tuple[str, datetime]:
    """A new one-time code linking a chat on `channel` to the user; only its hash is kept.
    Letters, digits, `-` and `_` only, so it fits a Telegram deep link."""
    code = secrets.token_urlsafe(12)
    expires_at = utcnow() + LINK_CODE_TTL
    session.add(
        ChannelLinkCode(
            code_hash=_code_hash(code), user_id=user_id, channel=channel, expires_at=expires_at
        )
    )
    return code, expires_at


async def redeem_link_code(
    session: AsyncSession, code: str, channel: str, address: str, sender: str
) -> User:
    """Use the code to link `address` (e.g. a chat id) to the code's user, replacing any
    earlier link of that address. The code works once."""
    row = (
        await session.exec(
            select(ChannelLinkCode)
            .where(
                ChannelLinkCode.code_hash == _code_hash(code), ChannelLinkCode.channel == channel
            )
            .with_for_update()
        )
    ).first()
    again = "ask for a new one with POST /v1/me/telegram-link"
    if row is None:
        raise LinkRefused(f"That link code is not valid; {again}.")
    if row.used_at is not None:
        raise LinkRefused(f"That link code was already used; {again}.")
    now = utcnow()
    if row.expires_at <= now:
        raise LinkRefused(f"That link code has expired; {again}.")
    row.used_at = now
    session.add(row)
    await session.exec(
        insert(UserChannel)
        .values(
            user_id=row.user_id, channel=channel, address=address, sender=sender, created_at=now
        )
        .on_conflict_do_update(
            index_elements=["channel", "address"],
            set_={"user_id": row.user_id, "sender": sender, "created_at": now},
        )
    )
    user = await session.get(User, row.user_id)
    assert user is not None  # the foreign key guarantees it
    return user


async def linked_user(
    session: AsyncSession, channel: str, address: str
) -> tuple[User, UserChannel] | None:
    """The user `address` is linked to on `channel`, with the link; None when unlinked."""
    found = (
        await session.exec(
            select(User, UserChannel)
            .join(UserChannel)
            .where(UserChannel.channel == channel, UserChannel.address == address)
        )
    ).first()
    return None if found is None else (found[0], found[1])


async def unlink(session: AsyncSession, channel: str, address: str) -> bool:
    """Remove the link of `address`; False when there was none."""
    result = await session.exec(
        delete(UserChannel).where(
            col(UserChannel.channel) == channel, col(UserChannel.address) == address
        )
    )
    return bool(result.rowcount)


async def linked_addresses(session: AsyncSession, user_id: str, channel: str) -> list[str]:
    """Every address (chat) the user has linked on `channel`."""
    rows = await session.exec(
        select(UserChannel.address).where(
            UserChannel.user_id == user_id, UserChannel.channel == channel
        )
    )
    return list(rows)
