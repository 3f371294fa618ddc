"""Keel's built-in tools."""

import contextlib
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.http_fetch import MAX_TEXT_CHARS, HttpFetcher
from activities.notify import AGENT_MESSAGE, write_notification
from activities.tool_registry import Handler, Tool, ToolContext, ToolError, ToolRegistry
from core.db import autocommit, session_scope
from core.records import find_memories
from schemas import search_attributes
from schemas.agent_task import NotificationInput, PlanUpdate, ToolPolicy
from schemas.schedules import ReminderInput
from schemas.tables import Memory, Note, Task, User, utcnow
from workflows.reminder import ReminderWorkflow

NOTE_PATH_PATTERN = r"^[A-Za-z0-9_\-./ ]{1,200}$"
NOTE_MAX_CHARS = 100_000
MEMORY_MAX_CHARS = 2000
RECALL_MAX_LIMIT = 50
URL_MAX_CHARS = 2000
NOTIFICATION_TITLE_MAX_CHARS = 200
NOTIFICATION_BODY_MAX_CHARS = 4000


class NoArguments(BaseModel):
    pass


class NotePath(BaseModel):
    path: str = Field(
        pattern=NOTE_PATH_PATTERN, description="The note's path, e.g. 'ideas/today.md'."
    )


class NoteWrite(NotePath):
    content: str = Field(max_length=NOTE_MAX_CHARS, description="The note's full new text.")


class MemoryContent(BaseModel):
    content: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MEMORY_MAX_CHARS)
    ] = Field(description="The fact to remember, in a sentence, e.g. 'Prefers tea to coffee'.")


class RecallQuery(BaseModel):
    query: str = Field(
        default="",
        max_length=500,
        description="Words to look for (any of them matches); empty for the most recent.",
    )
    limit: int = Field(default=10, ge=1, le=RECALL_MAX_LIMIT, description="At most this many.")


class FetchUrl(BaseModel):
    url: str = Field(min_length=1, max_length=URL_MAX_CHARS, description="The http(s) URL to GET.")


async def get_current_time(ctx: ToolContext, _args: NoArguments) -> str:
    async with autocommit(ctx.sessions) as connection:
        found = await connection.scalar(select(User.timezone).where(col(User.id) == ctx.user_id))
    timezone = found or "UTC"
    now = datetime.now(ZoneInfo(timezone))
    return f"{now.isoformat(timespec='seconds')} ({timezone}, {now:%A})"


class Question(BaseModel):
    question: str = Field(min_length=1, max_length=2000, description="What to ask the user.")


async def ask_user(_ctx: ToolContext, _args: Question) -> str:
    # The workflow itself asks and waits for the answer; no activity ever runs this.
    raise ToolError("ask_user is answered by the user through the task, not run as a tool")


async def update_plan(ctx: ToolContext, args: PlanUpdate) -> str:
    async with session_scope(ctx.sessions) as session:
        task = await session.get(Task, ctx.task_id)
        if task is None:
            raise ToolError(f"task {ctx.task_id} has no record")
        task.plan = [item.model_dump() for item in args.steps]
        session.add(task)
    return f"plan updated ({len(args.steps)} steps)"


async def notes_list(ctx: ToolContext, _args: NoArguments) -> str:
    async with session_scope(ctx.sessions) as session:
        rows = await session.exec(
            select(Note.path).where(Note.user_id == ctx.user_id).order_by(col(Note.path))
        )
        paths = list(rows)
    return "\n".join(paths) if paths else "(no notes yet)"


async def _find_note(session: AsyncSession, user_id: str, path: str) -> Note | None:
    return (
        await session.exec(select(Note).where(Note.user_id == user_id, Note.path == path))
    ).first()


def _no_note(path: str) -> ToolError:
    return ToolError(f"no note at {path!r}; notes_list shows the existing paths")


async def notes_read(ctx: ToolContext, args: NotePath) -> str:
    async with session_scope(ctx.sessions) as session:
        note = await _find_note(session, ctx.user_id, args.path)
    if note is None:
        raise _no_note(args.path)
    return note.content


async def notes_write(ctx: ToolContext, args: NoteWrite) -> str:
    async with session_scope(ctx.sessions) as session:
        note = await _find_note(session, ctx.user_id, args.path)
        if note is None:
            note = Note(user_id=ctx.user_id, path=args.path, content=args.content)
        else:
            note.content = args.content
            note.updated_at = utcnow()
        session.add(note)
    return f"saved {args.path} ({len(args.content)} characters)"


async def notes_delete(ctx: ToolContext, args: NotePath) -> str:
    async with session_scope(ctx.sessions) as session:
        note = await _find_note(session, ctx.user_id, args.path)
        if note is None:
            raise _no_note(args.path)
        await session.delete(note)
    return f"deleted {args.path}"


async def remember(ctx: ToolContext, args: MemoryContent) -> str:
    async with session_scope(ctx.sessions) as session:
        # One writer per user at a time, so a retried or repeated call cannot slip a second
        # copy in between the check and the insert.
        await session.exec(
            select(
                func.pg_advisory_xact_lock(
                    func.hashtext("keel.memories"), func.hashtext(ctx.user_id)
                )
            )
        )
        existing = (
            await session.exec(
                select(Memory.id).where(
                    Memory.user_id == ctx.user_id, Memory.content == args.content
                )
            )
        ).first()
        if existing is not None:
            return f"already remembered: {_preview(args.content)}"
        session.add(Memory(user_id=ctx.user_id, content=args.content))
    return f"remembered: {_preview(args.content)}"


def _preview(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def recall(ctx: ToolContext, args: RecallQuery) -> str:
    words = args.query.split()
    async with session_scope(ctx.sessions) as session:
        memories = await find_memories(session, ctx.user_id, words, args.limit)
    if not memories:
        return (
            f"(nothing remembered matches {args.query!r})" if words else "(nothing remembered yet)"
        )
    return "\n".join(
        f"{number}. {' '.join(memory.content.split())} (remembered {memory.created_at:%Y-%m-%d})"
        for number, memory in enumerate(memories, start=1)
    )


NotificationBody = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NOTIFICATION_BODY_MAX_CHARS),
]


class NotificationMessage(BaseModel):
    title: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=NOTIFICATION_TITLE_MAX_CHARS
        ),
    ] = Field(description="A short headline, e.g. 'Your report is ready'.")
    body: NotificationBody = Field(description="The message itself.")


async def send_notification(ctx: ToolContext, args: NotificationMessage) -> str:
    # Keyed by the tool call: a retried call finds its notification and sends no second one.
    note = NotificationInput(
        user_id=ctx.user_id,
        kind=AGENT_MESSAGE,
        title=args.title,
        body=args.body,
        task_id=ctx.task_id,
        dedupe_key=f"tool:{ctx.task_id}:{ctx.tool_use_id}",
    )
    async with session_scope(ctx.sessions) as session:
        await write_notification(session, note)
    return f"notification sent: {_preview(args.title)}"


class ReminderRequest(BaseModel):
    when: AwareDatetime = Field(
        description="When to remind: a future ISO 8601 time with its UTC offset, "
        "e.g. '2026-12-01T09:00:00+01:00' (get_current_time tells the user's timezone)."
    )
    text: NotificationBody = Field(description="What to remind the user of.")


async def _workflow_exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def schedule_reminder(ctx: ToolContext, args: ReminderRequest) -> str:
    # One reminder per tool call: a retried call finds its workflow (waiting or done)
    # under the same ID and starts no second one.
    reminder_id = f"reminder-{ctx.task_id}-{ctx.tool_use_id}"
    client = activity.client()
    if args.when <= datetime.now(UTC) and not await _workflow_exists(client, reminder_id):
        raise ToolError(f"`when` ({args.when.isoformat()}) is not in the future; give a later time")
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            ReminderWorkflow.run,
            ReminderInput(
                user_id=ctx.user_id, remind_at=args.when, text=args.text, task_id=ctx.task_id
            ),
            id=reminder_id,
            task_queue=activity.info().task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(search_attributes.USER_ID, ctx.user_id)]
            ),
            static_summary=f"remind at {args.when.isoformat()}: {_preview(args.text, 60)}",
        )
    return f"reminder set for {args.when.isoformat()}: {_preview(args.text)}"


def http_fetch_handler(fetcher: HttpFetcher) -> Handler:
    """The `http_fetch` tool's handler, fetching with `fetcher`."""

    async def http_fetch(_ctx: ToolContext, args: FetchUrl) -> str:
        page = await fetcher.fetch(args.url)
        return page.render()

    return http_fetch


def builtin_registry() -> ToolRegistry:
    """A registry holding every built-in tool."""
    registry = ToolRegistry()
    for tool in (
        Tool(
            name="get_current_time",
            description="The current date and time in the user's timezone.",
            policy=ToolPolicy.AUTO,
            args_model=NoArguments,
            handler=get_current_time,
            timeout_seconds=10,
            local=True,
        ),
        Tool(
            name="notes_list",
            description="List the paths of the user's notes.",
            policy=ToolPolicy.AUTO,
            args_model=NoArguments,
            handler=notes_list,
            local=True,
        ),
        Tool(
            name="notes_read",
            description="Read one of the user's notes by path.",
            policy=ToolPolicy.AUTO,
            args_model=NotePath,
            handler=notes_read,
            local=True,
        ),
        Tool(
            name="notes_write",
            description="Create or replace one of the user's notes.",
            policy=ToolPolicy.AUTO,
            args_model=NoteWrite,
            handler=notes_write,
            local=True,
        ),
        Tool(
            name="notes_delete",
            description="Delete one of the user's notes by path.",
            policy=ToolPolicy.CONFIRM,
            args_model=NotePath,
            handler=notes_delete,
            local=True,
        ),
        Tool(
            name="remember",
            description=(
                "Store a fact about the user in long-term memory, for later tasks to recall. "
                "Use it for lasting preferences and facts, not for the task at hand."
            ),
            policy=ToolPolicy.AUTO,
            args_model=MemoryContent,
            handler=remember,
            local=True,
        ),
        Tool(
            name="recall",
            description=(
                "Look up the user's long-term memories, newest first: those containing any "
                "of the query's words (case-insensitive), or the most recent if no query."
            ),
            policy=ToolPolicy.AUTO,
            args_model=RecallQuery,
            handler=recall,
            local=True,
        ),
        Tool(
            name="http_fetch",
            description=(
                "GET a public http(s) URL and return its status, content type and text "
                f"(at most {MAX_TEXT_CHARS} characters). Private, loopback and cloud "
                "metadata addresses are refused; up to 5 redirects are followed."
            ),
            policy=ToolPolicy.CONFIRM,
            args_model=FetchUrl,
            handler=http_fetch_handler(HttpFetcher()),
            timeout_seconds=20,
            max_attempts=2,
        ),
        Tool(
            name="update_plan",
            description=(
                "Set your step-by-step plan for this task (the whole plan each time), so the "
                "user can follow progress. Mark steps pending, in_progress or done."
            ),
            policy=ToolPolicy.AUTO,
            args_model=PlanUpdate,
            handler=update_plan,
            timeout_seconds=10,
            local=True,
        ),
        Tool(
            name="ask_user",
            description=(
                "Ask the user a question and wait for their answer, when you cannot go on "
                "without it. The answer comes back as this tool's result."
            ),
            policy=ToolPolicy.AUTO,
            args_model=Question,
            handler=ask_user,
        ),
        Tool(
            name="send_notification",
            description=(
                "Send the user a notification (to their inbox), for something they should "
                "see even when they are not following this task."
            ),
            policy=ToolPolicy.AUTO,
            args_model=NotificationMessage,
            handler=send_notification,
            timeout_seconds=10,
        ),
        Tool(
            name="schedule_reminder",
            description=(
                "Remind the user of something at a future time: the text arrives as a "
                "notification then. Needs the user's approval."
            ),
            policy=ToolPolicy.CONFIRM,
            args_model=ReminderRequest,
            handler=schedule_reminder,
            timeout_seconds=10,
        ),
    ):
        registry.add(tool)
    return registry
