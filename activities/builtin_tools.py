"""Keel's built-in tools."""

from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from sqlmodel import col, select

from activities.tool_registry import Tool, ToolContext, ToolError, ToolRegistry
from core.db import session_scope
from schemas.agent_task import ToolPolicy
from schemas.tables import Note, User, utcnow

NOTE_PATH_PATTERN = r"^[A-Za-z0-9_\-./ ]{1,200}$"
NOTE_MAX_CHARS = 100_000


class NoArguments(BaseModel):
    pass


class NotePath(BaseModel):
    path: str = Field(
        pattern=NOTE_PATH_PATTERN, description="The note's path, e.g. 'ideas/today.md'."
    )


class NoteWrite(NotePath):
    content: str = Field(max_length=NOTE_MAX_CHARS, description="The note's full new text.")


async def get_current_time(ctx: ToolContext, _args: NoArguments) -> str:
    async with session_scope(ctx.sessions) as session:
        user = await session.get(User, ctx.user_id)
    timezone = user.timezone if user is not None else "UTC"
    now = datetime.now(ZoneInfo(timezone))
    return f"{now.isoformat(timespec='seconds')} ({timezone}, {now:%A})"


async def notes_list(ctx: ToolContext, _args: NoArguments) -> str:
    async with session_scope(ctx.sessions) as session:
        rows = await session.exec(
            select(Note.path).where(Note.user_id == ctx.user_id).order_by(col(Note.path))
        )
        paths = list(rows)
    return "\n".join(paths) if paths else "(no notes yet)"


async def notes_read(ctx: ToolContext, args: NotePath) -> str:
    async with session_scope(ctx.sessions) as session:
        note = (
            await session.exec(
                select(Note).where(Note.user_id == ctx.user_id, Note.path == args.path)
            )
        ).first()
    if note is None:
        raise ToolError(f"no note at {args.path!r}; notes_list shows the existing paths")
    return note.content


async def notes_write(ctx: ToolContext, args: NoteWrite) -> str:
    async with session_scope(ctx.sessions) as session:
        note = (
            await session.exec(
                select(Note).where(Note.user_id == ctx.user_id, Note.path == args.path)
            )
        ).first()
        if note is None:
            note = Note(user_id=ctx.user_id, path=args.path, content=args.content)
        else:
            note.content = args.content
            note.updated_at = utcnow()
        session.add(note)
    return f"saved {args.path} ({len(args.content)} characters)"


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
        ),
        Tool(
            name="notes_list",
            description="List the paths of the user's notes.",
            policy=ToolPolicy.AUTO,
            args_model=NoArguments,
            handler=notes_list,
        ),
        Tool(
            name="notes_read",
            description="Read one of the user's notes by path.",
            policy=ToolPolicy.AUTO,
            args_model=NotePath,
            handler=notes_read,
        ),
        Tool(
            name="notes_write",
            description="Create or replace one of the user's notes.",
            policy=ToolPolicy.AUTO,
            args_model=NoteWrite,
            handler=notes_write,
        ),
    ):
        registry.add(tool)
    return registry
