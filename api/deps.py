"""Dependencies the routes declare: the database session, the Temporal client, the caller."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, Interceptor

from api.observability import ApiMetrics, identify_caller
from core.agents import AgentCatalog, UnknownAgent
from core.api_keys import authenticate
from core.db import session_scope
from core.settings import Settings
from core.temporal import connect_temporal
from schemas.tables import User


class ServiceUnavailable(Exception):
    """A backing service (Temporal or Postgres) cannot be reached; the API answers 503."""


class TemporalConnection:
    """Connects on first use and again after a failure, so the API starts and answers 503
    while Temporal is down instead of refusing to start."""

    def __init__(
        self,
        address: str | None = None,
        settings: Settings | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self._address = address
        self._settings = settings
        self._interceptors = interceptors
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await connect_temporal(
                        self._address, settings=self._settings, interceptors=self._interceptors
                    )
                except RuntimeError as exc:
                    raise ServiceUnavailable(f"Temporal is unreachable: {exc}") from exc
            return self._client


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with session_scope(request.app.state.sessions) as session:
        yield session


async def get_temporal(request: Request) -> Client:
    connection: TemporalConnection = request.app.state.temporal
    return await connection.get()


# The dependencies below are `async def` though they never wait: FastAPI runs a plain `def`
# dependency in its thread pool, a hand-off to another thread and back on every request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_agents(request: Request) -> AgentCatalog:
    agents: AgentCatalog = request.app.state.agents
    return agents


async def get_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return factory


def require_agent(agents: AgentCatalog, name: str) -> None:
    """422 naming `agent` unless the deployment has this agent profile."""
    try:
        agents.get(name)
    except UnknownAgent:
        names = ", ".join(profile.name for profile in agents.all())
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"agent: unknown agent {name!r}; known agents: {names}",
        ) from None


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


DbSession = Annotated[AsyncSession, Depends(get_db)]
# For work that commits on its own (e.g. posting into a session), not the request's session.
DbSessions = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_factory)]
TemporalClient = Annotated[Client, Depends(get_temporal)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Agents = Annotated[AgentCatalog, Depends(get_agents)]
Metrics = Annotated[ApiMetrics, Depends(get_metrics)]

_bearer = HTTPBearer(auto_error=False)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def user_for_key(request: Request, settings: Settings, key: str | None) -> User:
    """The owner of this API key, within the key's rate limit (429 past it); 401 for a
    missing, unknown or revoked key. The key's id is left in `request.state.api_key_id`."""
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>' (create one with `keel users create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    engine: AsyncEngine = request.app.state.autocommit_engine
    async with engine.connect() as connection:
        caller = await authenticate(connection, key, settings.rate_limit_per_minute)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    identify_caller(request, caller.user.id)
    if not caller.admitted:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit exceeded: at most {settings.rate_limit_per_minute} requests per minute "
            f"per API key; retry in {caller.retry_after_seconds} s",
            headers={"Retry-After": str(caller.retry_after_seconds)},
        )
    request.state.api_key_id = caller.key_id
    return caller.user


async def get_current_user(
    request: Request, settings: AppSettings, credentials: BearerCredentials
) -> User:
    """The caller, by the Bearer API key."""
    return await user_for_key(request, settings, credentials.credentials if credentials else None)


CurrentUser = Annotated[User, Depends(get_current_user)]


def admin_scope(user: User, all_users: bool) -> bool:
    """Whether a list spans every user: `all_users=true` asks for it, and only an admin
    may (403 otherwise)."""
    if all_users and not user.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "all_users: only admins may list across users"
        )
    return all_users
