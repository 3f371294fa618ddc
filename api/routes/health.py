"""Liveness, readiness and metrics: the routes operators and their probes use."""

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.deps import Metrics, TemporalConnection
from schemas.api import Readiness

router = APIRouter(tags=["operations"])

# Each dependency must answer within this, so a probe never hangs on a dead host.
READY_CHECK_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _postgres(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        await session.exec(select(1))


async def _temporal(connection: TemporalConnection) -> None:
    client = await connection.get()
    if not await client.service_client.check_health(timeout=timedelta(seconds=READY_CHECK_SECONDS)):
        raise RuntimeError("Temporal reports itself unhealthy")


async def _check(probe: Awaitable[None]) -> str:
    """`ok`, or why not."""
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            await probe
    except TimeoutError:
        return f"down: no answer within {READY_CHECK_SECONDS:g} s"
    except Exception as exc:  # whatever the driver raises, the answer is "down"
        return f"down: {type(exc).__name__}: {exc}"
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Postgres or Temporal is down"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Postgres and Temporal both answer (each within 2 s); 503 naming what is down
    otherwise."""
    postgres, temporal = await asyncio.gather(
        _check(_postgres(request.app.state.sessions)),
        _check(_temporal(request.app.state.temporal)),
    )
    ready = postgres == "ok" and temporal == "ok"
    body = Readiness(
        status="ready" if ready else "unavailable", postgres=postgres, temporal=temporal
    )
    return JSONResponse(
        body.model_dump(),
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(api_metrics: Metrics) -> Response:
    """The API's Prometheus metrics (text format): requests by route template and status,
    latency histogram, tasks started."""
    return Response(api_metrics.render(), media_type=CONTENT_TYPE_LATEST)
