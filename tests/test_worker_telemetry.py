"""Watching the worker: its Prometheus endpoint (Temporal's SDK metrics and Keel's own),
its JSON logs carrying workflow and activity ids, and optional OpenTelemetry tracing."""

import asyncio
import io
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowHandle

from core.settings import Settings
from core.telemetry import tracing_interceptors
from core.temporal import connect_temporal
from schemas.agent_task import (
    AgentTaskResult,
    DecideApprovalInput,
    StartAgentTaskInput,
    TaskStatus,
)
from tests.conftest import (
    MakeAccount,
    assert_replays,
    free_port,
    log_lines,
    metric_samples,
    start_task,
)
from tests.fake_anthropic import FakeAnthropic, ToolCall, Usage, error, text, tool_use
from workers.worker import build_worker, run_worker
from workflows.agent_task import AgentTaskWorkflow


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of counter `name`'s samples whose labels include `labels`. (The parser
    names counter samples `<name>_total`, however the exporter spells them.)"""
    wanted = set(labels.items())
    return sum(
        value
        for sample_labels, value in metric_samples(metrics_text, f"{name}_total").items()
        if wanted <= sample_labels
    )


@pytest.fixture
async def metrics_worker(
    settings: Settings,
    database_url: str,
    temporal_address: str,
    fake_claude: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[str]:
    """`run_worker` as `keel worker` runs it, Claude at the fake through the SDK's standard
    variables, serving metrics on a port of its own; yields the metrics URL."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-secret")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_claude.base_url)
    port = free_port()
    configured = settings.model_copy(update={"worker_metrics_port": port})
    stop = asyncio.Event()
    running = asyncio.create_task(run_worker(configured, database_url, stop, temporal_address))
    yield f"http://127.0.0.1:{port}/metrics"
    stop.set()
    await running


async def wait_for_pending_approval(
    handle: WorkflowHandle[AgentTaskWorkflow, AgentTaskResult],
) -> str:
    for _ in range(300):
        progress = await handle.query(AgentTaskWorkflow.progress)
        if progress.pending_approvals:
            return progress.pending_approvals[0].id
        await asyncio.sleep(0.05)
    raise AssertionError("the task never asked for approval")


async def test_worker_metrics_endpoint_serves_temporal_and_keel_metrics(
    json_logs: io.StringIO,
    metrics_worker: str,
    settings: Settings,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    spent = Usage(input_tokens=30, output_tokens=4)
    fake_claude.script(
        error(529, "overloaded_error", "busy"),  # retried by Temporal
        tool_use(ToolCall("get_current_time", {}), usage=spent),
        tool_use(ToolCall("notes_delete", {"path": "plan.md"}), usage=spent),
        text("Left it alone.", usage=spent),
    )
    task = StartAgentTaskInput(task_id=str(uuid.uuid4()), user_id=alice.id, prompt="Tidy up")
    handle = await temporal_client.start_workflow(
        AgentTaskWorkflow.run, task, id=f"task-{task.task_id}", task_queue=settings.task_queue
    )
    approval_id = await wait_for_pending_approval(handle)
    await handle.execute_update(
        AgentTaskWorkflow.decide_approval,
        DecideApprovalInput(approval_id=approval_id, decision="reject", decided_by=alice.id),
    )
    assert (await handle.result()).status is TaskStatus.COMPLETED

    async with httpx.AsyncClient() as http:
        scraped = (await http.get(metrics_worker)).text

    def count(name: str, **labels: str) -> float:
        return counter(scraped, name, task_queue=settings.task_queue, **labels)

    # Temporal's own SDK metrics...
    assert count("temporal_workflow_completed") == 1
    assert count("temporal_activity_execution_failed", activity_type="call_model") == 1
    # ...and Keel's, on the same endpoint.
    assert count("keel_llm_calls", outcome="ok") == 3
    assert count("keel_llm_calls", outcome="ClaudeOverloaded") == 1
    assert count("keel_llm_tokens", kind="input") == 90
    assert count("keel_llm_tokens", kind="output") == 12
    assert count("keel_tool_calls", tool="get_current_time", outcome="ok") == 1
    assert count("keel_tool_calls", tool="notes_delete", outcome="rejected") == 1
    assert count("keel_approvals", tool="notes_delete", decision="rejected") == 1
    await assert_replays(handle)

    # The logs of that run carry the workflow and activity ids, and never the key.
    lines = log_lines(json_logs)
    workflow_id = f"task-{task.task_id}"
    [retried] = [
        line
        for line in lines
        if line.get("activity_type") == "call_model" and line["level"] == "warning"
    ]
    assert retried["workflow_id"] == workflow_id and retried["activity_id"]
    [finished] = [line for line in lines if line["event"] == "task completed"]
    assert finished["workflow_id"] == workflow_id and finished["user_id"] == alice.id
    assert "sk-ant-test-secret" not in json_logs.getvalue()


async def test_tracing_follows_a_task_from_its_start_to_its_activities(
    temporal_address: str,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    spans = InMemorySpanExporter()
    client = await connect_temporal(
        temporal_address,
        interceptors=tracing_interceptors(True, "keel-test", SimpleSpanProcessor(spans)),
    )
    claude = anthropic.AsyncAnthropic(
        api_key="test-key", base_url=fake_claude.base_url, max_retries=0
    )
    alice = await make_account()
    fake_claude.script(tool_use(ToolCall("get_current_time", {})), text("Noon."))
    async with build_worker(client, settings, sessions, claude) as worker:
        handle = await start_task(client, worker, alice, "What time is it?")
        assert (await handle.result()).text == "Noon."
    await claude.close()

    finished = spans.get_finished_spans()
    names = {span.name for span in finished}
    assert {
        "StartWorkflow:AgentTaskWorkflow",
        "RunWorkflow:AgentTaskWorkflow",
        "RunActivity:call_model",
        "RunActivity:run_tool",
    } <= names
    assert len({span.context.trace_id for span in finished if span.context}) == 1  # one trace
    await assert_replays(handle)


def test_tracing_off_needs_no_opentelemetry_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default install imports no OpenTelemetry SDK, whatever runs.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, api.main, workers.cli, workers.dev, workers.worker; "
            "print([m for m in sys.modules if m.startswith("
            "('opentelemetry.sdk', 'temporalio.contrib.opentelemetry'))])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]"
    assert tracing_interceptors(False, "keel-test") == []
    # Asked for without the extra, it says what to install.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(RuntimeError, match=r"keel\[tracing\]"):
        tracing_interceptors(True, "keel-test")
