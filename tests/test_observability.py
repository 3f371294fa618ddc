"""Watching the API: readiness, Prometheus metrics, request ids in responses and logs, the
request log, and usage analytics per user and (for admins) across users."""

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.worker import Worker

from api.main import create_app
from api.routes.health import READY_CHECK_SECONDS
from core.db import session_scope
from core.records import create_user
from core.settings import Settings
from schemas.tables import RequestLog
from tests.conftest import (
    Account,
    MakeAccount,
    assert_replays,
    free_port,
    log_lines,
    metric_samples,
    wait_until_finished,
)
from tests.fake_anthropic import FakeAnthropic, ToolCall, Usage, text, tool_use


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, over HTTP; leaving it shuts the app down."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as client:
            yield client


# --- readiness ------------------------------------------------------------------------


async def test_readyz_is_ready_when_postgres_and_temporal_answer(api: httpx.AsyncClient) -> None:
    response = await api.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "postgres": "ok", "temporal": "ok"}
    assert (await api.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize("down", ["postgres", "temporal"])
async def test_readyz_names_what_is_down(
    down: str, settings: Settings, database_url: str, temporal_address: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    app = create_app(
        settings,
        f"postgresql+psycopg://keel:keel@{closed}/keel" if down == "postgres" else database_url,
        closed if down == "temporal" else temporal_address,
    )
    async with serving(app) as client:
        started = time.monotonic()
        response = await client.get("/readyz")
        elapsed = time.monotonic() - started
        assert (await client.get("/healthz")).status_code == 200  # the process is still up
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body[down].startswith("down: ")
    up = "temporal" if down == "postgres" else "postgres"
    assert body[up] == "ok"
    assert elapsed < READY_CHECK_SECONDS + 1


# --- metrics, request ids, logs ----------------------------------------------------------


async def test_metrics_count_requests_by_route_template(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    missing = str(uuid.uuid4())
    for _ in range(2):
        assert (await api.get(f"/v1/tasks/{missing}", headers=alice.headers)).status_code == 404
    assert (await api.get("/no/such/path")).status_code == 404

    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    requests = metric_samples(response.text, "keel_http_requests_total")
    route = {("method", "GET"), ("route", "/v1/tasks/{task_id}")}
    assert requests[frozenset(route | {("status", "404")})] == 2
    assert requests[frozenset({("method", "GET"), ("route", "unmatched"), ("status", "404")})] == 1
    assert missing not in response.text  # route templates, never raw paths
    latency = metric_samples(response.text, "keel_http_request_duration_seconds_count")
    assert latency[frozenset(route)] == 2
    assert metric_samples(response.text, "process_resident_memory_bytes")


async def test_tasks_started_counts_tasks_and_session_messages(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice = await make_account()
    fake_claude.respond_with(lambda body: text("Done."))
    chat = (await api.post("/v1/sessions", json={}, headers=alice.headers)).json()["id"]
    started = [
        await api.post("/v1/tasks", json={"prompt": "alone"}, headers=alice.headers),
        await api.post(f"/v1/sessions/{chat}/messages", json={"text": "hi"}, headers=alice.headers),
        await api.post(
            "/v1/tasks", json={"prompt": "more", "session_id": chat}, headers=alice.headers
        ),
    ]
    assert [response.status_code for response in started] == [202, 202, 202]
    refused = await api.post("/v1/tasks", json={"prompt": ""}, headers=alice.headers)
    assert refused.status_code == 422

    metrics = (await api.get("/metrics")).text
    assert metric_samples(metrics, "keel_tasks_started_total") == {
        frozenset({("agent", "assistant")}): 3
    }
    for response in started:
        task_id = response.json().get("id") or response.json()["task_id"]
        await wait_until_finished(api, task_id, alice.headers)


async def test_request_id_round_trip_and_log_line(
    api: httpx.AsyncClient, make_account: MakeAccount, json_logs: io.StringIO
) -> None:
    alice = await make_account()
    mine = await api.get("/v1/tasks", headers={**alice.headers, "X-Request-ID": "req-42.abc"})
    assert mine.status_code == 200
    assert mine.headers["X-Request-ID"] == "req-42.abc"
    fresh = (await api.get("/v1/tasks", headers=alice.headers)).headers["X-Request-ID"]
    assert len(fresh) == 32 and fresh != "req-42.abc"
    unsafe = await api.get("/healthz", headers={"X-Request-ID": 'x"}\n{"forged": 1'})
    assert len(unsafe.headers["X-Request-ID"]) == 32  # replaced, not echoed into logs

    lines = log_lines(json_logs)
    [line] = [line for line in lines if line.get("request_id") == "req-42.abc"]
    assert line["event"] == "request"
    assert line["user_id"] == alice.id
    assert line["route"] == "/v1/tasks"
    assert line["status"] == 200
    assert line["latency_ms"] > 0
    assert [line for line in lines if line.get("request_id") == fresh]
    assert alice.key not in json_logs.getvalue()


async def request_log_rows(
    sessions: async_sessionmaker[AsyncSession], request_ids: list[str]
) -> list[RequestLog]:
    async with session_scope(sessions) as session:
        rows = await session.exec(
            select(RequestLog).where(col(RequestLog.request_id).in_(request_ids))
        )
        return list(rows)


async def test_request_log_records_requests_and_flushes_on_shutdown(
    settings: Settings,
    database_url: str,
    temporal_address: str,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    app = create_app(settings, database_url, temporal_address)
    async with serving(app) as client:
        missing = f"/v1/tasks/{uuid.uuid4()}"
        first = await client.get(missing, headers={**alice.headers, "X-Request-ID": "log-1"})
        assert first.status_code == 404
        deadline = time.monotonic() + 10
        while not await request_log_rows(sessions, ["log-1"]):  # written in the background
            assert time.monotonic() < deadline, "the request log row never appeared"
            await asyncio.sleep(0.1)
        await client.get("/v1/tasks", headers={"X-Request-ID": "log-2"})  # no key: 401
        await client.get("/readyz", headers={"X-Request-ID": "log-probe"})
    # Shut down at once: the last row is written on the way out, not lost.
    rows = {row.request_id: row for row in await request_log_rows(sessions, ["log-1", "log-2"])}
    assert rows["log-1"].user_id == alice.id
    assert rows["log-1"].route == "/v1/tasks/{task_id}"
    assert (rows["log-1"].method, rows["log-1"].status) == ("GET", 404)
    assert rows["log-1"].latency_ms > 0
    assert (rows["log-2"].user_id, rows["log-2"].status) == (None, 401)
    assert not await request_log_rows(sessions, ["log-probe"])  # probes are not API use


# --- analytics --------------------------------------------------------------------------


async def make_admin(sessions: async_sessionmaker[AsyncSession]) -> Account:
    async with session_scope(sessions) as session:
        user, key = await create_user(session, f"admin-{uuid.uuid4().hex[:8]}", is_admin=True)
    return Account(user.id, user.name, key)


async def run_task(api: httpx.AsyncClient, account: Account, prompt: str) -> str:
    """Start a task over REST and wait until it has completed; its id."""
    created = await api.post("/v1/tasks", json={"prompt": prompt}, headers=account.headers)
    assert created.status_code == 202, created.text
    task_id: str = created.json()["id"]
    finished = await wait_until_finished(api, task_id, account.headers)
    assert finished["status"] == "completed", finished
    return task_id


async def test_analytics_counts_tasks_tool_calls_and_tokens(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice, bob = await make_account(), await make_account()
    spent = Usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=7)
    fake_claude.script(
        tool_use(ToolCall("notes_write", {"path": "a.md", "content": "hi"}), usage=spent),
        text("Saved.", usage=spent),
        tool_use(ToolCall("notes_read", {"path": "missing.md"}), usage=spent),  # no such note
        text("There is no such note.", usage=spent),
        text("Hello Bob.", usage=spent),
    )
    await run_task(api, alice, "Save a note")
    failed_tool_task = await run_task(api, alice, "Read a note")
    await run_task(api, bob, "Say hello")

    response = await api.get("/v1/analytics", headers=alice.headers)
    assert response.status_code == 200, response.text
    mine = response.json()
    assert mine["scope"] == "user" and mine["days"] == 7
    assert mine["tasks_by_status"] == {"completed": 2}
    tools = {entry["tool"]: entry for entry in mine["tool_calls"]}
    assert set(tools) == {"notes_write", "notes_read"}
    assert tools["notes_write"] | {"mean_latency_ms": None} == {
        "tool": "notes_write",
        "calls": 1,
        "succeeded": 1,
        "success_rate": 1.0,
        "mean_latency_ms": None,
        "outcomes": {"ok": 1},
    }
    assert tools["notes_read"]["succeeded"] == 0
    assert tools["notes_read"]["success_rate"] == 0.0
    assert tools["notes_read"]["outcomes"] == {"error": 1}
    assert tools["notes_write"]["mean_latency_ms"] > 0
    assert tools["notes_read"]["mean_latency_ms"] > 0
    days = mine["tokens_by_day"]
    assert len(days) == 7 and days[0]["day"] == mine["since"][:10]
    assert all(day["llm_calls"] == 0 for day in days[:-1])
    assert days[-1] == {
        "day": days[-1]["day"],
        "llm_calls": 4,
        "input_tokens": 400,
        "output_tokens": 80,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 28,
    }
    # The request log (written in the background) shows alice's API use by route.
    deadline = time.monotonic() + 10
    while True:
        routes = {
            (entry["method"], entry["route"]): entry
            for entry in (await api.get("/v1/analytics", headers=alice.headers)).json()["requests"]
        }
        if ("POST", "/v1/tasks") in routes or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert routes[("POST", "/v1/tasks")]["requests"] == 2
    assert routes[("POST", "/v1/tasks")]["server_errors"] == 0
    assert routes[("GET", "/v1/tasks/{task_id}")]["requests"] >= 2

    bobs = (await api.get("/v1/analytics?days=1", headers=bob.headers)).json()
    assert bobs["tasks_by_status"] == {"completed": 1}
    assert bobs["tool_calls"] == []
    assert [day["llm_calls"] for day in bobs["tokens_by_day"]] == [1]
    await assert_replays(temporal_client.get_workflow_handle(f"task-{failed_tool_task}"))


async def test_analytics_across_users_is_for_admins(
    api: httpx.AsyncClient,
    worker: Worker,
    fake_claude: FakeAnthropic,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice, admin = await make_account(), await make_admin(sessions)
    fake_claude.script(text("Hi."))
    await run_task(api, alice, "Say hi")

    refused = await api.get("/v1/analytics?all_users=true", headers=alice.headers)
    assert refused.status_code == 403
    assert "all_users" in refused.json()["detail"]

    own = (await api.get("/v1/analytics", headers=admin.headers)).json()
    assert own["tasks_by_status"] == {}
    everyone = (await api.get("/v1/analytics?all_users=true", headers=admin.headers)).json()
    assert everyone["scope"] == "all_users"
    assert everyone["tasks_by_status"].get("completed", 0) >= 1
    assert sum(day["llm_calls"] for day in everyone["tokens_by_day"]) >= 1


@pytest.mark.parametrize("days", ["0", "91", "week"])
async def test_analytics_days_out_of_range_is_422(
    api: httpx.AsyncClient, make_account: MakeAccount, days: str
) -> None:
    alice = await make_account()
    response = await api.get(f"/v1/analytics?days={days}", headers=alice.headers)
    assert response.status_code == 422
    assert "days" in json.dumps(response.json())
