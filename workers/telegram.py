"""`keel telegram`: the Telegram bot, python-telegram-bot over long polling (or a webhook).

Inbound only: it links chats, posts their messages into each chat's session
(`telegram-<chat id>`), and sends approvals and answers into the running tasks through the
same code path as the REST API. Everything the
agent says back arrives through the notification service (`TelegramDeliveryWorkflow`).
The bot keeps no per-user state in memory: links, seen updates and sent messages are in
Postgres, so any number of restarts (or a webhook behind several replicas) behave alike."""

import asyncio
import contextlib
import secrets
from datetime import timedelta
from urllib.parse import urlparse

import structlog
import uvicorn
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import BotCommand, Chat, Update
from telegram import User as TelegramUser
from telegram.constants import ChatAction
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from activities import events
from core.channels import TELEGRAM, LinkRefused, linked_user, redeem_link_code, unlink
from core.db import create_engine, session_factory, session_scope
from core.limits import TooManyTasks, check_task_quota
from core.session_client import SessionNotFound, post_message, start_new_conversation
from core.settings import Settings
from core.task_control import TaskUpdateRefused, answer_question, cancel_task, decide_approval
from core.temporal import connect_temporal
from schemas.agent_task import (
    TERMINAL_STATUSES,
    AnswerQuestionInput,
    DecideApprovalInput,
    TaskStatus,
)
from schemas.tables import (
    Approval,
    SessionTurn,
    Task,
    TaskEvent,
    TelegramMessage,
    TelegramUpdate,
    User,
    utcnow,
)
from workflows.agent_task import AgentTaskWorkflow, task_workflow_id

log = structlog.get_logger(__name__)

# Telegram shows "typing…" for about five seconds per chat action.
TYPING_REFRESH = timedelta(seconds=4)
TYPING_LIMIT = timedelta(minutes=10)
# Long polling: how long one getUpdates call waits for news.
POLL_TIMEOUT = timedelta(seconds=30)
RECENT_TASKS = 10

NOT_LINKED = (
    "This chat is not linked to a Keel account yet, so I can't do anything here.\n\n"
    "To link it: get a code with POST /v1/me/telegram-link (your API key as Bearer), "
    "then send /link CODE here. Codes work once and expire after 15 minutes."
)

COMMANDS = [
    BotCommand("new", "start a fresh conversation"),
    BotCommand("stop", "stop the answer in progress"),
    BotCommand("tasks", "your recent tasks"),
    BotCommand("link", "link this chat to your Keel account: /link CODE"),
    BotCommand("unlink", "unlink this chat"),
    BotCommand("help", "what I can do"),
]

HELP = (
    "Talk to your Keel agent: send a message and I answer here.\n\n"
    + "\n".join(f"/{command.command} - {command.description}" for command in COMMANDS)
    + "\n\nWhen your agent wants to do something risky you get Approve / Reject buttons; "
    "when it asks you something, reply to its question."
)

OTHER_ACCOUNT = (
    "This chat's conversation belongs to the Keel account it was linked to before, so I "
    "can't continue it for this one."
)

UNAVAILABLE = "Keel can't reach its task service right now; please try again in a minute."


def _chat(update: Update) -> Chat:
    assert update.effective_chat is not None  # every handler here is for chat updates
    return update.effective_chat


def _sender(update: Update) -> TelegramUser:
    assert update.effective_user is not None
    return update.effective_user


class KeelBot:
    """The bot's handlers over Keel's database and Temporal."""

    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], client: Client
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._client = client

    def application(self, *, with_updater: bool = True) -> Application:
        """The python-telegram-bot Application with Keel's handlers; `with_updater=False`
        for webhook mode, where Keel's own server feeds the update queue."""
        assert self._settings.telegram_bot_token is not None
        builder = (
            Application.builder()
            .token(self._settings.telegram_bot_token.get_secret_value())
            .base_url(self._settings.telegram_base_url)
        )
        if not with_updater:
            builder = builder.updater(None)
        app = builder.build()
        # Group -1 runs first: a redelivered update stops there.
        app.add_handler(TypeHandler(Update, self._once_per_update), group=-1)
        app.add_handler(CommandHandler("start", self._start))
        app.add_handler(CommandHandler("link", self._link))
        app.add_handler(CommandHandler("unlink", self._unlink))
        app.add_handler(CommandHandler("help", self._help))
        app.add_handler(CommandHandler("new", self._new))
        app.add_handler(CommandHandler("stop", self._stop))
        app.add_handler(CommandHandler("tasks", self._tasks))
        app.add_handler(CallbackQueryHandler(self._button))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, self._text))
        app.add_handler(MessageHandler(filters.COMMAND, self._help))
        app.add_error_handler(self._on_error)
        return app

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A handler failed (Temporal or Postgres unreachable...): log it, and tell the chat
        rather than leave it wondering."""
        log.error("telegram update failed", error=repr(context.error), exc_info=context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            with contextlib.suppress(TelegramError):
                await update.effective_chat.send_message(UNAVAILABLE)

    async def _once_per_update(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """Record the update's id; one seen before is not handled again."""
        async with session_scope(self._sessions) as session:
            result = await session.exec(
                insert(TelegramUpdate)
                .values(update_id=update.update_id, received_at=utcnow())
                .on_conflict_do_nothing()
                .returning(col(TelegramUpdate.update_id))
            )
            first_time = result.first() is not None
        if not first_time:
            log.info("telegram update seen before, skipped", update_id=update.update_id)
            raise ApplicationHandlerStop

    async def _owner(self, update: Update) -> User | None:
        """The Keel user this chat is linked to; an unlinked chat is told how to link."""
        async with session_scope(self._sessions) as session:
            found = await linked_user(session, TELEGRAM, str(_chat(update).id))
        if found is None:
            await _chat(update).send_message(NOT_LINKED)
            return None
        return found[0]

    # --- linking ---------------------------------------------------------------------

    async def _start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """`/start CODE` from a deep link links the chat; a bare `/start` says hello."""
        if context.args:
            await self._link(update, context)
            return
        async with session_scope(self._sessions) as session:
            found = await linked_user(session, TELEGRAM, str(_chat(update).id))
        if found is None:
            await _chat(update).send_message("Hello! I'm your Keel agent's bot.\n\n" + NOT_LINKED)
        else:
            await _chat(update).send_message(f"Hello {found[0].name}!\n\n{HELP}")

    async def _link(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not context.args:
            await _chat(update).send_message(
                "Send /link CODE with a code from Keel.\n\n" + NOT_LINKED
            )
            return
        try:
            async with session_scope(self._sessions) as session:
                user = await redeem_link_code(
                    session,
                    context.args[0],
                    TELEGRAM,
                    address=str(_chat(update).id),
                    sender=str(_sender(update).id),
                )
        except LinkRefused as exc:
            await _chat(update).send_message(str(exc))
            return
        log.info("telegram chat linked", user_id=user.id, chat_id=_chat(update).id)
        await _chat(update).send_message(
            f"Linked: this chat now talks to Keel as {user.name}. "
            "Send me a message to ask your agent something; /help lists the commands."
        )

    async def _unlink(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        async with session_scope(self._sessions) as session:
            removed = await unlink(session, TELEGRAM, str(_chat(update).id))
        await _chat(update).send_message(
            "Unlinked: this chat no longer reaches your Keel account."
            if removed
            else "This chat was not linked."
        )

    async def _help(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        await _chat(update).send_message(HELP)

    # --- conversation ----------------------------------------------------------------

    async def _text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A message from a linked chat answers the agent's open question, if it asked one
        here; otherwise it goes to the chat's conversation, and "typing…" shows meanwhile."""
        user = await self._owner(update)
        message = update.effective_message
        if user is None or message is None or not message.text:
            return
        if await self._answered_question(update, message.text):
            return
        try:
            async with session_scope(self._sessions) as session:
                await check_task_quota(session, self._settings, user.id)
            task_id = await post_message(
                self._client,
                self._sessions,
                self._settings,
                session_id=chat_session_id(_chat(update).id),
                user_id=user.id,
                text=message.text,
                channel=TELEGRAM,
            )
        except SessionNotFound:
            await _chat(update).send_message(OTHER_ACCOUNT)
            return
        except TooManyTasks as exc:
            await _chat(update).send_message(f"Not now: {exc}.")
            return
        except ValueError as exc:  # e.g. longer than a message may be
            await _chat(update).send_message(f"I can't take that message: {exc}")
            return
        context.application.create_task(
            self._typing_while_running(context.application, _chat(update), task_id),
            name=f"typing for task {task_id}",
        )

    async def _answered_question(self, update: Update, text: str) -> bool:
        """Answer the question this message replies to, or else the latest question asked
        in this chat while it is still open. False when there is none to answer."""
        chat_id = _chat(update).id
        replied = update.effective_message.reply_to_message if update.effective_message else None
        statement = select(TelegramMessage).where(
            TelegramMessage.chat_id == chat_id, col(TelegramMessage.question_id).is_not(None)
        )
        if replied is not None:
            statement = statement.where(TelegramMessage.message_id == replied.message_id)
        async with session_scope(self._sessions) as session:
            asked = (
                await session.exec(statement.order_by(col(TelegramMessage.sent_at).desc()))
            ).first()
            if asked is None or asked.task_id is None or asked.question_id is None:
                return False
            settled = await session.exec(
                select(TaskEvent.id).where(
                    TaskEvent.task_id == asked.task_id,
                    TaskEvent.type == events.QUESTION_SETTLED,
                    col(TaskEvent.data)["id"].astext == asked.question_id,
                )
            )
            open_question = settled.first() is None
        if not open_question and replied is None:
            return False
        try:
            await answer_question(
                self._client,
                asked.task_id,
                AnswerQuestionInput(question_id=asked.question_id, text=text),
            )
        except TaskUpdateRefused as exc:
            if replied is None:
                return False  # the question closed meanwhile: this is a new message
            await _chat(update).send_message(f"Too late to answer that: {exc.message}.")
            return True
        await _chat(update).send_message("Thanks, I've passed your answer on.")
        return True

    async def _typing_while_running(
        self, application: Application, chat: Chat, task_id: str
    ) -> None:
        """Show "typing…" until the task stops running (done, or waiting for the user),
        or the bot stops."""
        handle = self._client.get_workflow_handle(task_workflow_id(task_id))
        deadline = asyncio.get_running_loop().time() + TYPING_LIMIT.total_seconds()
        while application.running and asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(TelegramError):
                await chat.send_action(ChatAction.TYPING)
            await asyncio.sleep(TYPING_REFRESH.total_seconds())
            try:
                progress = await handle.query(AgentTaskWorkflow.progress)
            except (RPCError, WorkflowQueryFailedError):
                continue  # not begun yet (queued behind an earlier turn): keep waiting
            if progress.status is not TaskStatus.RUNNING:
                return

    async def _new(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """The chat's next messages are answered without the turns before them."""
        user = await self._owner(update)
        if user is None:
            return
        try:
            await start_new_conversation(
                self._sessions, session_id=chat_session_id(_chat(update).id), user_id=user.id
            )
        except SessionNotFound:
            await _chat(update).send_message(OTHER_ACCOUNT)
            return
        await _chat(update).send_message("New conversation: I'll start afresh from here.")

    async def _stop(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """Cancel the turn this chat's conversation is answering (messages waiting behind
        it then get their turn)."""
        user = await self._owner(update)
        if user is None:
            return
        not_running = [status.value for status in (*TERMINAL_STATUSES, TaskStatus.QUEUED)]
        async with session_scope(self._sessions) as session:
            running = (
                await session.exec(
                    select(Task.id)
                    .join(SessionTurn, col(SessionTurn.task_id) == col(Task.id))
                    .where(
                        SessionTurn.session_id == chat_session_id(_chat(update).id),
                        Task.user_id == user.id,
                        col(Task.status).not_in(not_running),
                    )
                    .order_by(col(Task.created_at).desc())
                )
            ).first()
        if running is not None and await cancel_task(self._client, running):
            await _chat(update).send_message("Stopping the answer in progress.")
        else:
            await _chat(update).send_message("Nothing is running right now.")

    async def _tasks(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        user = await self._owner(update)
        if user is None:
            return
        async with session_scope(self._sessions) as session:
            rows = await session.exec(
                select(Task)
                .where(Task.user_id == user.id)
                .order_by(col(Task.created_at).desc())
                .limit(RECENT_TASKS)
            )
            lines = [
                f"{task.created_at:%b %d %H:%M} {task.status} ({task.channel}): "
                f"{' '.join(task.prompt.split())[:60]}"
                for task in rows
            ]
        await _chat(update).send_message(
            "Your recent tasks:\n" + "\n".join(lines) if lines else "You have no tasks yet."
        )

    # --- approvals -------------------------------------------------------------------

    async def _button(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """Approve / Reject: the decision goes to the task as the REST API sends it, and
        the message then says who decided what. Only the chat's linked owner may decide."""
        query = update.callback_query
        assert query is not None
        action, _sep, approval_id = (query.data or "").partition(":")
        chat = _chat(update)
        async with session_scope(self._sessions) as session:
            found = await linked_user(session, TELEGRAM, str(chat.id))
            approval = await session.get(Approval, approval_id)
        if (
            action not in ("approve", "reject")
            or found is None
            or approval is None
            or approval.user_id != found[0].id
            or str(query.from_user.id) != found[1].sender
        ):
            await query.answer("Only the person who linked this chat can decide.", show_alert=True)
            return
        user = found[0]
        decision = DecideApprovalInput(
            approval_id=approval_id,
            decision="approve" if action == "approve" else "reject",
            decided_by=user.id,
            channel=TELEGRAM,
        )
        original = query.message.text if query.message and hasattr(query.message, "text") else ""
        try:
            await decide_approval(self._client, approval.task_id, decision)
        except TaskUpdateRefused as exc:
            await query.answer(exc.message)
            with contextlib.suppress(TelegramError):  # e.g. a message too old to edit
                await query.edit_message_text(f"{original}\n\n{exc.message}.")
            return
        outcome = "Approved" if action == "approve" else "Rejected"
        await query.answer(outcome)
        with contextlib.suppress(TelegramError):
            await query.edit_message_text(
                f"{original}\n\n{outcome} by {query.from_user.full_name} ({user.name})."
            )
        log.info("approval decided in telegram", approval_id=approval_id, decision=action)


def chat_session_id(chat_id: int) -> str:
    """The chat's conversation: session `telegram-<chat id>`, answered by the workflow
    `session-telegram-<chat id>`."""
    return f"telegram-{chat_id}"


# --- process ---------------------------------------------------------------------------


def webhook_app(application: Application, path: str, secret: str) -> Starlette:
    """The endpoint Telegram posts updates to; a request without the secret token header
    Telegram was given (`X-Telegram-Bot-Api-Secret-Token`) is refused."""

    async def receive(request: Request) -> Response:
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not secrets.compare_digest(given.encode(), secret.encode()):
            return Response(status_code=403)
        update = Update.de_json(await request.json(), application.bot)
        await application.update_queue.put(update)
        return Response()

    return Starlette(routes=[Route(path, receive, methods=["POST"])])


async def _serve_webhook(
    application: Application,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    assert settings.telegram_webhook_url is not None
    if settings.telegram_webhook_secret is None:
        raise ValueError("KEEL_TELEGRAM_WEBHOOK_SECRET must be set with KEEL_TELEGRAM_WEBHOOK_URL")
    secret = settings.telegram_webhook_secret.get_secret_value()
    await application.bot.set_webhook(
        settings.telegram_webhook_url, secret_token=secret, allowed_updates=Update.ALL_TYPES
    )
    path = urlparse(settings.telegram_webhook_url).path or "/"
    server = uvicorn.Server(
        uvicorn.Config(
            webhook_app(application, path, secret),
            host=settings.telegram_webhook_host,
            port=settings.telegram_webhook_port,
            log_config=None,
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await serving


async def run_telegram(
    settings: Settings, database_url: str, stop: asyncio.Event, temporal_address: str | None = None
) -> None:
    """Run the bot until `stop` is set: long polling, or a webhook when
    KEEL_TELEGRAM_WEBHOOK_URL is set."""
    engine = create_engine(database_url)
    client = await connect_temporal(temporal_address, settings=settings)
    webhook = settings.telegram_webhook_url is not None
    application = KeelBot(settings, session_factory(engine), client).application(
        with_updater=not webhook
    )
    async with application:
        await application.bot.set_my_commands(COMMANDS)
        await application.start()
        log.info("telegram bot up", mode="webhook" if webhook else "polling")
        try:
            if webhook:
                await _serve_webhook(application, settings, stop)
            else:
                assert application.updater is not None
                await application.updater.start_polling(
                    timeout=POLL_TIMEOUT, allowed_updates=Update.ALL_TYPES
                )
                await stop.wait()
        finally:
            if application.updater is not None and application.updater.running:
                await application.updater.stop()
            await application.stop()
    await engine.dispose()
