"""Liveness and readiness."""

from fastapi import APIRouter, Response, status
from sqlmodel import select

from api.deps import DbSession, TemporalClient

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(session: DbSession, client: TemporalClient, response: Response) -> dict[str, str]:
    """Postgres and Temporal both answer; 503 otherwise."""
    await session.exec(select(1))
    healthy = await client.service_client.check_health()
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "temporal unhealthy"}
    return {"status": "ready"}
