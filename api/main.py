"""The FastAPI app: routes, and a lifespan that builds the shared clients once."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from temporalio.service import RPCError

from activities.builtin_tools import builtin_registry
from api.deps import ServiceUnavailable, TemporalConnection
from api.observability import install_observability
from api.routes import analytics, approvals, catalog, health, me, notifications, tasks
from core.agents import AgentCatalog
from core.db import create_engine, session_factory
from core.settings import Settings
from core.telemetry import tracing_interceptors

log = structlog.get_logger(__name__)


def create_app(
    settings: Settings, database_url: str, temporal_address: str | None = None
) -> FastAPI:
    """The API over this database and Temporal (`None`: Temporal's standard client config)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(database_url)
        app.state.settings = settings
        app.state.sessions = session_factory(engine)
        app.state.temporal = TemporalConnection(
            temporal_address, tracing_interceptors(settings.tracing, "keel-api")
        )
        app.state.agents = AgentCatalog.load(settings.agents_file)
        app.state.tools = builtin_registry()
        app.state.request_log.start(app.state.sessions)
        yield
        await app.state.request_log.close()
        await engine.dispose()

    app = FastAPI(
        title="Keel",
        summary="Durable AI agents on Temporal.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(tasks.router)
    app.include_router(catalog.router)
    app.include_router(approvals.router)
    app.include_router(me.router)
    app.include_router(notifications.router)
    app.include_router(analytics.router)
    install_observability(app)

    @app.exception_handler(ServiceUnavailable)
    @app.exception_handler(OperationalError)
    @app.exception_handler(RPCError)
    async def service_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        """Temporal or Postgres is down: 503, so clients retry, instead of a bare 500."""
        log.warning("backing service unavailable", error=str(exc))
        return JSONResponse(
            {"detail": "a backing service is unavailable; try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    return app
