"""The baselines Keel's step overhead is measured against: the same agent loop on bare
temporalio, and in plain asyncio without Temporal.

Both make the same Claude call as Keel's `LlmActivities.call_model` (streamed, system prompt
and tool specs marked cacheable, through the same `anthropic` client), then run a trivial
tool. Neither keeps a Postgres transcript or task records: the bare workflow carries the
conversation in its own history, the plain loop in memory. The workflow lives in a module of
its own so that Temporal's sandbox re-imports as little as it does for Keel's workflow."""

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import anthropic

    from activities.tool_registry import ToolRegistry
    from core.agents import AgentCatalog
    from core.settings import Settings


class BareTaskInput(BaseModel):
    prompt: str
    model: str
    system: str
    tool_names: list[str]
    max_output_tokens: int
    max_steps: int


class BareTaskResult(BaseModel):
    text: str | None
    model_calls: int


class BareLlmInput(BaseModel):
    model: str
    system: str
    tool_names: list[str]
    max_output_tokens: int
    messages: list[dict[str, Any]]


class BareLlmResult(BaseModel):
    content: list[dict[str, Any]]
    stop_reason: str


class BareToolInput(BaseModel):
    name: str
    arguments: dict[str, Any]


def task_like_keel(settings: Settings, prompt: str, max_steps: int) -> BareTaskInput:
    """A bare task that sends what Keel's `begin_task` makes of the default agent profile:
    the same model, system prompt (give or take the user's name), tools and output limit."""
    profile = AgentCatalog.load(settings.agents_file).get("assistant")
    return BareTaskInput(
        prompt=prompt,
        model=profile.model or settings.default_model,
        system=f"{profile.system_prompt.strip()}\n\nYou are helping bench-user. Their timezone is UTC.",
        tool_names=list(profile.tools),
        max_output_tokens=settings.llm_max_output_tokens,
        max_steps=max_steps,
    )


def tool_specs(tools: ToolRegistry, names: list[str]) -> list[dict[str, Any]]:
    """Claude's tool specs, the last marked cacheable, as Keel sends them."""
    specs = [tool.spec() for tool in tools.require(names)]
    if specs:
        specs[-1]["cache_control"] = {"type": "ephemeral"}
    return specs


async def ask_claude(
    client: anthropic.AsyncAnthropic,
    specs: list[dict[str, Any]],
    request: BareLlmInput,
) -> BareLlmResult:
    """One streamed Messages API call, shaped as Keel's `_ask_claude` shapes it."""
    system = [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]
    async with client.messages.stream(
        model=request.model,
        max_tokens=request.max_output_tokens,
        system=system,  # type: ignore[arg-type]
        tools=specs,  # type: ignore[arg-type]
        messages=request.messages,  # type: ignore[arg-type]
    ) as stream:
        async for _event in stream:
            pass
        message = await stream.get_final_message()
    content = [block.model_dump(mode="json", exclude_none=True) for block in message.content]
    return BareLlmResult(content=content, stop_reason=message.stop_reason or "end_turn")


def current_time() -> str:
    """The trivial tool both baselines run: the time, with no database read."""
    now = datetime.now(UTC)
    return f"{now.isoformat(timespec='seconds')} (UTC, {now:%A})"


def tool_results(content: list[dict[str, Any]], run: dict[str, str]) -> list[dict[str, Any]]:
    """The user turn that answers each tool_use block, from `run` (tool_use id -> output)."""
    return [
        {"type": "tool_result", "tool_use_id": block["id"], "content": run[block["id"]]}
        for block in content
        if block.get("type") == "tool_use"
    ]


def final_text(content: list[dict[str, Any]]) -> str:
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")


class BareActivities:
    """The model call and the tool, as activities over one shared SDK client."""

    def __init__(self, client: anthropic.AsyncAnthropic, tools: ToolRegistry) -> None:
        self._client = client
        self._tools = tools
        self._specs: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def _specs_for(self, names: list[str]) -> list[dict[str, Any]]:
        key = tuple(names)
        if key not in self._specs:
            self._specs[key] = tool_specs(self._tools, names)
        return self._specs[key]

    @activity.defn(name="bare_call_model")
    async def call_model(self, request: BareLlmInput) -> BareLlmResult:
        return await ask_claude(self._client, self._specs_for(request.tool_names), request)

    @activity.defn(name="bare_run_tool")
    async def run_tool(self, request: BareToolInput) -> str:
        return current_time()


@workflow.defn
class BareAgentWorkflow:
    """Ask Claude, run the tools it asks for, repeat until it answers."""

    @workflow.run
    async def run(self, task: BareTaskInput) -> BareTaskResult:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": task.prompt}]}
        ]
        for model_calls in range(1, task.max_steps + 1):
            reply = await workflow.execute_activity_method(
                BareActivities.call_model,
                BareLlmInput(
                    model=task.model,
                    system=task.system,
                    tool_names=task.tool_names,
                    max_output_tokens=task.max_output_tokens,
                    messages=messages,
                ),
                start_to_close_timeout=timedelta(minutes=10),
            )
            messages.append({"role": "assistant", "content": reply.content})
            if reply.stop_reason != "tool_use":
                return BareTaskResult(text=final_text(reply.content), model_calls=model_calls)
            outputs: dict[str, str] = {}
            for block in reply.content:
                if block.get("type") == "tool_use":
                    outputs[block["id"]] = await workflow.execute_activity_method(
                        BareActivities.run_tool,
                        BareToolInput(name=block["name"], arguments=block.get("input") or {}),
                        start_to_close_timeout=timedelta(seconds=10),
                    )
            messages.append({"role": "user", "content": tool_results(reply.content, outputs)})
        return BareTaskResult(text=None, model_calls=task.max_steps)


async def run_in_process(
    client: anthropic.AsyncAnthropic, tools: ToolRegistry, task: BareTaskInput
) -> BareTaskResult:
    """The same loop as `BareAgentWorkflow`, as plain asyncio calls: no Temporal at all."""
    specs = tool_specs(tools, task.tool_names)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": task.prompt}]}
    ]
    for model_calls in range(1, task.max_steps + 1):
        reply = await ask_claude(
            client,
            specs,
            BareLlmInput(
                model=task.model,
                system=task.system,
                tool_names=task.tool_names,
                max_output_tokens=task.max_output_tokens,
                messages=messages,
            ),
        )
        messages.append({"role": "assistant", "content": reply.content})
        if reply.stop_reason != "tool_use":
            return BareTaskResult(text=final_text(reply.content), model_calls=model_calls)
        outputs = {
            block["id"]: current_time()
            for block in reply.content
            if block.get("type") == "tool_use"
        }
        messages.append({"role": "user", "content": tool_results(reply.content, outputs)})
    return BareTaskResult(text=None, model_calls=task.max_steps)
