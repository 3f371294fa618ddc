"""Typed tools: a pydantic argument model, a policy, a timeout, a retry bound, a handler.
The registry produces Claude's tool specs and runs a call by name."""

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.agent_task import DEFAULT_APPROVAL_TIMEOUT_SECONDS, ToolGrant, ToolPolicy


class ToolError(Exception):
    """An expected failure a tool reports back to Claude (as an `is_error` result)."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may use: whose call it is, which call, and the database."""

    user_id: str
    task_id: str
    tool_use_id: str  # Claude's id for this call, the same on every retry: a key for idempotency
    sessions: async_sessionmaker[AsyncSession]


Handler = Callable[[ToolContext, Any], Awaitable[str]]


@functools.cache
def _input_schema(args_model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, built once: pydantic rebuilds it on every call, and every
    Claude call sends the specs. Shared, so callers must not change it."""
    return args_model.model_json_schema()


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    policy: ToolPolicy
    args_model: type[BaseModel]
    handler: Handler
    timeout_seconds: float = 30.0
    max_attempts: int = 3
    # How long a confirm-tier call waits for a person (and `ask_user` for an answer).
    approval_timeout_seconds: float = DEFAULT_APPROVAL_TIMEOUT_SECONDS
    # Quick work on Keel's own database: run as a local activity, in the workflow's worker,
    # without a round trip through the task queue.
    local: bool = False

    def spec(self) -> dict[str, Any]:
        """The tool as the Messages API describes it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": _input_schema(self.args_model),
        }

    def grant(self) -> ToolGrant:
        return ToolGrant(
            name=self.name,
            policy=self.policy,
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            approval_timeout_seconds=self.approval_timeout_seconds,
            local=self.local,
        )


class ToolRegistry:
    """Tools by name."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def all(self) -> list[Tool]:
        return list(self._tools.values())

    def require(self, names: list[str]) -> list[Tool]:
        """The named tools, or a ValueError naming those that do not exist."""
        unknown = [name for name in names if name not in self._tools]
        if unknown:
            raise ValueError(f"unknown tools: {', '.join(unknown)}")
        return [self._tools[name] for name in names]
