"""Activities that talk into a user's session on a workflow's behalf (a schedule's firing)."""

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.session_client import SessionNotFound, post_message
from core.settings import Settings
from schemas.schedules import PostToSessionInput


class SessionActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings

    @activity.defn
    async def post_to_session(self, post: PostToSessionInput) -> None:
        """Post the message into the session, as the user's own messages are posted; the
        caller's task id makes a retried post a no-op."""
        try:
            await post_message(
                activity.client(),
                self._sessions,
                self._settings,
                session_id=post.session_id,
                user_id=post.user_id,
                text=post.text,
                channel=post.channel,
                task_id=post.task_id,
            )
        except SessionNotFound:
            raise ApplicationError(
                f"session {post.session_id} is not this user's (or is gone)",
                type="SessionNotFound",
                non_retryable=True,
            ) from None
