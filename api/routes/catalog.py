"""What a deployment offers: its tools and its agent profiles."""

from fastapi import APIRouter, Request

from activities.tool_registry import ToolRegistry
from api.deps import Agents, AppSettings, CurrentUser
from schemas.api import AgentView, ToolView

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/tools", response_model=list[ToolView])
async def list_tools(request: Request, _user: CurrentUser) -> list[ToolView]:
    """Every tool, with its policy (`auto`, `confirm`, `never`) and argument schema."""
    tools: ToolRegistry = request.app.state.tools
    return [
        ToolView(
            name=tool.name,
            description=tool.description,
            policy=tool.policy,
            timeout_seconds=tool.timeout_seconds,
            input_schema=tool.args_model.model_json_schema(),
        )
        for tool in tools.all()
    ]


@router.get("/agents", response_model=list[AgentView])
async def list_agents(agents: Agents, settings: AppSettings, _user: CurrentUser) -> list[AgentView]:
    """The agent profiles tasks can run as (`agent` in POST /v1/tasks)."""
    return [
        AgentView(
            name=profile.name,
            description=profile.description,
            model=profile.model or settings.default_model,
            tools=profile.tools,
            max_steps=profile.max_steps or settings.default_max_steps,
            max_tokens=profile.max_tokens or settings.default_max_tokens,
            context_tokens=profile.context_tokens or settings.default_context_tokens,
        )
        for profile in agents.all()
    ]
