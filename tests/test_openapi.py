"""The OpenAPI document: it lists every route, and Schemathesis, generating requests from it
against the real app with a real user's key, gets no server error from any of them."""

import importlib
import inspect
import pkgutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.python import asgi
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

import api.routes
from api.main import create_app
from core.db import session_scope
from core.encryption import generate_key
from core.records import create_user
from core.settings import Settings


@pytest.fixture(scope="module")
async def fuzzed_user(sessions: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    """The headers of the user Schemathesis acts as: an admin, so it reaches the codec
    endpoint and the lists across users too."""
    async with session_scope(sessions) as session:
        _user, key = await create_user(session, f"fuzz-{uuid.uuid4().hex[:8]}", is_admin=True)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keel_app(database_url: str, temporal_address: str) -> Iterator[FastAPI]:
    """The app Schemathesis calls (ASGI, lifespan included), with encryption on. No rate
    limit, so it explores rather than collects 429s; tasks it starts wait on a task queue no
    worker polls."""
    keel_settings = Settings(
        task_queue=f"fuzz-{uuid.uuid4()}",
        database_url=database_url,
        rate_limit_per_minute=0,
        encryption_keys=SecretStr(f"fuzz:{generate_key()}"),
        encryption_key_id="fuzz",
    )
    yield create_app(keel_settings, database_url, temporal_address)
    asgi.shutdown_lifespans()


# The document does not depend on settings or connections: read it from an app never started.
schema = schemathesis.openapi.from_dict(create_app(Settings(), "unused").openapi())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_gets_a_server_error(
    case: Any, keel_app: FastAPI, fuzzed_user: dict[str, str]
) -> None:
    case.call_and_validate(
        app=keel_app,
        headers=fuzzed_user,
        checks=[schemathesis.checks.not_a_server_error],
        timeout=10,
    )


def every_route() -> Iterator[APIRoute]:
    """Every route of every router in api/routes."""
    for module_info in pkgutil.iter_modules(api.routes.__path__):
        module = importlib.import_module(f"api.routes.{module_info.name}")
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            yield route


def test_the_document_lists_every_route() -> None:
    """Every route of every router in api/routes, and nothing else, is in the document."""
    routes = {(route.path, method) for route in every_route() for method in route.methods or ()}
    documented = {
        (path, method.upper())
        for path, operations in schema.raw_schema["paths"].items()
        for method in operations
    }
    assert routes == documented
    assert {("/v1/me/keys", "POST"), ("/codec/decode", "POST"), ("/readyz", "GET")} <= routes


def test_no_route_runs_in_the_thread_pool() -> None:
    """Every route and every dependency it declares is a coroutine: FastAPI runs a plain
    `def` one in its thread pool, a hand-off to another thread and back on every request."""
    in_thread_pool = set()
    for route in every_route():
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            pending += dependant.dependencies
            call = dependant.call
            if call is None:
                continue
            coroutine = inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
            method = getattr(call, "__call__", None)  # noqa: B004 (an instance, like HTTPBearer)
            if not coroutine and not inspect.iscoroutinefunction(method):
                in_thread_pool.add(f"{route.path}: {getattr(call, '__name__', call)}")
    assert not in_thread_pool
