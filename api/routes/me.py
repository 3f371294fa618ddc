"""The caller's own settings: per-tool approval preferences, linking Telegram."""

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, delete, select

from activities.tool_registry import Tool, ToolRegistry
from api.deps import CurrentUser, DbSession
from core.channels import TELEGRAM, create_link_code
from schemas.agent_task import ToolPolicy
from schemas.api import TelegramLinkCode, ToolPreferenceRequest, ToolPreferenceView
from schemas.tables import ToolPreference, utcnow
from schemas.tool_preferences import ToolPreferenceValue

router = APIRouter(prefix="/v1/me", tags=["me"])


def _known_tool(request: Request, name: str) -> Tool:
    """The registered tool called `name`, or 404 naming it."""
    tools: ToolRegistry = request.app.state.tools
    tool = tools.get(name)
    if tool is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no tool {name!r}; GET /v1/tools lists the tools"
        )
    return tool


@router.get("/tool-preferences", response_model=list[ToolPreferenceView])
async def list_tool_preferences(user: CurrentUser, session: DbSession) -> list[ToolPreferenceView]:
    """The caller's tool preferences, by tool name; a tool not listed keeps its own policy."""
    rows = await session.exec(
        select(ToolPreference)
        .where(ToolPreference.user_id == user.id)
        .order_by(col(ToolPreference.tool))
    )
    return [
        ToolPreferenceView(tool=row.tool, preference=row.preference, updated_at=row.updated_at)
        for row in rows
    ]


@router.put("/tool-preferences/{tool}", response_model=ToolPreferenceView)
async def set_tool_preference(
    tool: str, body: ToolPreferenceRequest, request: Request, user: CurrentUser, session: DbSession
) -> ToolPreferenceView:
    """Set (or replace) the caller's preference for a tool: `always_allow` runs its calls
    without asking, `always_ask` asks before every call. Applies to tasks begun afterwards;
    a tool disabled by policy (`never`) cannot be allowed."""
    registered = _known_tool(request, tool)
    if (
        registered.policy is ToolPolicy.NEVER
        and body.preference is ToolPreferenceValue.ALWAYS_ALLOW
    ):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"preference: tool {tool!r} is disabled by policy (never) and cannot be always allowed",
        )
    now = utcnow()
    await session.exec(
        insert(ToolPreference)
        .values(user_id=user.id, tool=tool, preference=body.preference.value, updated_at=now)
        .on_conflict_do_update(
            index_elements=["user_id", "tool"],
            set_={"preference": body.preference.value, "updated_at": now},
        )
    )
    return ToolPreferenceView(tool=tool, preference=body.preference, updated_at=now)


@router.delete("/tool-preferences/{tool}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_tool_preference(
    tool: str, request: Request, user: CurrentUser, session: DbSession
) -> Response:
    """Remove the caller's preference for a tool, so the tool's own policy applies again."""
    result = await session.exec(
        delete(ToolPreference).where(
            col(ToolPreference.user_id) == user.id, col(ToolPreference.tool) == tool
        )
    )
    if result.rowcount == 0:
        _known_tool(request, tool)  # an unknown tool says so; a known one has no preference
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no preference set for tool {tool!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/telegram-link", status_code=status.HTTP_201_CREATED, response_model=TelegramLinkCode)
async def create_telegram_link(user: CurrentUser, session: DbSession) -> TelegramLinkCode:
    """A one-time code that links a Telegram chat to you: send `/link CODE` to the bot, or
    open `https://t.me/<bot>?start=CODE`. It expires after 15 minutes."""
    code, expires_at = await create_link_code(session, user.id, TELEGRAM)
    return TelegramLinkCode(code=code, expires_at=expires_at)
