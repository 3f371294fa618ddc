"""Outbound Telegram: the bot's messages, sent by an activity, each part at most once."""

import warnings
from datetime import timedelta

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter
from telegram.warnings import PTBDeprecationWarning
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.db import session_scope
from core.settings import Settings
from schemas.tables import TelegramMessage, utcnow
from schemas.telegram import TelegramDelivery

# Telegram's limit is 4096 UTF-16 code units per message; stay a little under it.
MESSAGE_LIMIT = 4000


def telegram_bot(settings: Settings) -> Bot:
    """A Bot API client for the configured token and server (`KEEL_TELEGRAM_BASE_URL`)."""
    assert settings.telegram_bot_token is not None
    return Bot(settings.telegram_bot_token.get_secret_value(), base_url=settings.telegram_base_url)


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """`text` in parts Telegram accepts, broken at a line end where one is near the limit."""
    parts: list[str] = []
    rest = text.strip() or "(empty)"
    while _utf16_length(rest) > limit:
        cut = 0
        size = 0
        for index, char in enumerate(rest):
            size += _utf16_length(char)
            if size > limit:
                break
            cut = index + 1
        line_end = rest.rfind("\n", 0, cut)
        if line_end > cut // 2:
            cut = line_end + 1
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    parts.append(rest)
    return parts


def retry_delay(error: RetryAfter) -> timedelta:
    """How long Telegram asked us to wait (its `retry_after`)."""
    with warnings.catch_warnings():
        # python-telegram-bot warns that the type will become timedelta; accept both.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


class TelegramActivities:
    def __init__(self, bot: Bot, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._bot = bot
        self._sessions = sessions

    @activity.defn
    async def send_message(self, delivery: TelegramDelivery) -> None:
        """Send the message (in parts if long, plain text so nothing needs escaping),
        recording each part under workflow ID + activity ID + part number: a retry skips
        what was sent. Flood control (429) retries after Telegram's `retry_after`; a chat
        Telegram refuses (blocked bot, unknown chat) fails without retrying."""
        info = activity.info()
        parts = split_message(delivery.text)
        for number, part in enumerate(parts):
            key = f"{info.workflow_id}:{info.activity_id}:{number}"
            async with session_scope(self._sessions) as session:
                if await session.get(TelegramMessage, key) is not None:
                    continue
            last = number == len(parts) - 1
            markup = None
            if last and delivery.buttons:
                markup = InlineKeyboardMarkup(
                    [[InlineKeyboardButton(b.text, callback_data=b.data) for b in delivery.buttons]]
                )
            try:
                sent = await self._bot.send_message(delivery.chat_id, part, reply_markup=markup)
            except RetryAfter as exc:
                raise ApplicationError(
                    "Telegram flood control: waiting as asked",
                    type="TelegramFlood",
                    next_retry_delay=retry_delay(exc),
                ) from None
            except (BadRequest, Forbidden, InvalidToken) as exc:
                raise ApplicationError(
                    f"Telegram refused the message to chat {delivery.chat_id}: {exc.message}",
                    type="TelegramRejected",
                    non_retryable=True,
                ) from None
            async with session_scope(self._sessions) as session:
                await session.exec(
                    insert(TelegramMessage)
                    .values(
                        key=key,
                        chat_id=delivery.chat_id,
                        message_id=sent.message_id,
                        task_id=delivery.task_id,
                        approval_id=delivery.approval_id if last else None,
                        question_id=delivery.question_id if last else None,
                        sent_at=utcnow(),
                    )
                    .on_conflict_do_nothing()
                )
