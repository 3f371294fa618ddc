"""The FastAPI app: routes, and a lifespan that builds the shared clients once."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from temporalio.service import RPCError

from activities.builtin_tools import builtin_registry
from api.deps import ServiceUnavailable, TemporalConnection
from api.limits import BodySizeLimit
from api.observability import install_observability
from api.routes import (
    analytics,
    approvals,
    catalog,
    codec,
    health,
    keys,
    me,
    notifications,
    schedules,
    sessions,
    tasks,
)
from core.agents import AgentCatalog
from core.db import create_engine, session_factory
from core.encryption import encryption_codec
from core.session_client import SessionNotFound
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
        # API-key lookups commit at once, so a key's rate-limit row is never held locked, and
        # do not wait for the WAL flush: a crash may forget a few counts, nothing else.
        auth_engine = create_engine(
            database_url, connect_args={"options": "-c synchronous_commit=off"}
        )
        app.state.autocommit_engine = auth_engine.execution_options(isolation_level="AUTOCOMMIT")
        app.state.temporal = TemporalConnection(
            temporal_address, settings, tracing_interceptors(settings.tracing, "keel-api")
        )
        app.state.agents = AgentCatalog.load(settings.agents_file)
        app.state.tools = builtin_registry()
        app.state.codec = encryption_codec(settings)
        app.state.request_log.start(engine)
        yield
        await app.state.request_log.close()
        await engine.dispose()
        await auth_engine.dispose()

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
    app.include_router(schedules.router)
    app.include_router(sessions.router)
    app.include_router(keys.router)
    app.include_router(codec.router)
    app.include_router(analytics.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(codec.CodecCors, origins=settings.codec_origins)
    # Last, so outermost: every answer (a 413 or 429 too) is counted, logged, and carries
    # its request id.
    install_observability(app)

    @app.exception_handler(SessionNotFound)
    async def session_not_found(_request: Request, exc: Exception) -> JSONResponse:
        """Another user's session is as absent as one that never existed."""
        return JSONResponse(
            {"detail": f"no session {exc.args[0]}"}, status_code=status.HTTP_404_NOT_FOUND
        )

    @app.exception_handler(DataError)
    async def unstorable_value(_request: Request, exc: Exception) -> JSONResponse:
        """A value Postgres cannot store (a NUL character in text, a number out of range):
        the request's fault, and its transaction rolled back, so 422 rather than 500."""
        assert isinstance(exc, DataError)
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        return JSONResponse(
            {"detail": f"a value in the request cannot be stored: {reason}"},
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )

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
