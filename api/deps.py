"""Dependencies the routes declare: the database session, the Temporal client, the caller."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, Interceptor

from api.observability import ApiMetrics, identify_caller
from core.agents import AgentCatalog
from core.db import session_scope
from core.records import user_for_api_key
from core.settings import Settings
from core.temporal import connect_temporal
from schemas.tables import User


class ServiceUnavailable(Exception):
    """A backing service (Temporal or Postgres) cannot be reached; the API answers 503."""


class TemporalConnection:
    """Connects on first use and again after a failure, so the API starts and answers 503
    while Temporal is down instead of refusing to start."""

    def __init__(
        self, address: str | None = None, interceptors: Sequence[Interceptor] = ()
    ) -> None:
        self._address = address
        self._interceptors = interceptors
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await connect_temporal(
                        self._address, interceptors=self._interceptors
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


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_agents(request: Request) -> AgentCatalog:
    agents: AgentCatalog = request.app.state.agents
    return agents


def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


DbSession = Annotated[AsyncSession, Depends(get_db)]
TemporalClient = Annotated[Client, Depends(get_temporal)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Agents = Annotated[AgentCatalog, Depends(get_agents)]
Metrics = Annotated[ApiMetrics, Depends(get_metrics)]

_bearer = HTTPBearer(auto_error=False)


async def get_current_user(
    request: Request,
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>' (create one with `keel users create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = await user_for_api_key(session, credentials.credentials)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    identify_caller(request, user.id)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
