"""Payload models of Telegram delivery. Durable contracts: add fields only with defaults."""

from pydantic import BaseModel, Field


class TelegramButton(BaseModel):
    """An inline button; pressing it sends `data` (at most 64 bytes) back to the bot."""

    text: str
    data: str = Field(max_length=64)


class TelegramDelivery(BaseModel):
    """One message for one chat, plain text (split by the sender if it is too long), with
    buttons under its last part. The IDs say what the message is about, so a reply to it
    or a press of its buttons reaches the right task."""

    chat_id: int
    text: str
    buttons: list[TelegramButton] = Field(default_factory=list)
    task_id: str | None = None
    approval_id: str | None = None
    question_id: str | None = None
