"""A task whose workflow is ended outside Keel (terminated in the Web UI or with `temporal
workflow terminate`) is settled by the worker's reconcile schedule: failed, with what its
events showed, its stream closed and its user's cap freed."""

import uuid
from datetime import timedelta

import httpx
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    WorkflowHandle,
)
from temporalio.worker import Worker

from core.settings import Settings
from tests.conftest import MakeAccount, assert_replays, eventually, wait_for_status
from tests.fake_anthropic import FakeAnthropic, ToolCall, hang, tool_use
from tests.test_task_progress import parse_events
from workers.worker import ensure_reconcile_schedule
from workflows.reconcile import ReconcileTasksWorkflow, reconcile_schedule_id


async def test_a_task_terminated_in_temporal_is_settled_as_failed(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
    settings: Settings,
) -> None:
    alice = await make_account()
    fake_claude.script(tool_use(ToolCall("get_current_time", {})), hang(120))
    created = await api.post("/v1/tasks", json={"prompt": "what time?"}, headers=alice.headers)
    task_id = created.json()["id"]

    async def second_call_started() -> bool:
        return len(fake_claude.requests) == 2

    await eventually(second_call_started, what="the second Claude call")
    running = await wait_for_status(api, task_id, alice.headers, frozenset({"running"}))
    assert [step["name"] for step in running["steps"]][1] == "get_current_time"

    await temporal_client.get_workflow_handle(f"task-{task_id}").terminate("stuck, says ops")
    # Nothing in Keel saw it end: the row still says running.
    assert (await api.get(f"/v1/tasks/{task_id}", headers=alice.headers)).json()[
        "status"
    ] == "running"

    passes: list[WorkflowHandle[ReconcileTasksWorkflow, int]] = []

    async def one_pass() -> int:
        handle = await temporal_client.start_workflow(
            ReconcileTasksWorkflow.run, id=f"reconcile-{uuid.uuid4()}", task_queue=worker.task_queue
        )
        passes.append(handle)
        return await handle.result()

    assert await eventually(one_pass, what="a pass that settles the task") == 1
    task = (await api.get(f"/v1/tasks/{task_id}", headers=alice.headers)).json()
    assert task["status"] == "failed"
    assert task["error"] == "the task's workflow was terminated in Temporal"
    # What its events showed is kept: the model call and the tool call.
    assert [step["name"] for step in task["steps"]][1] == "get_current_time"
    events = parse_events(
        (await api.get(f"/v1/tasks/{task_id}/events", headers=alice.headers)).text
    )
    assert events[-1]["type"] == "task_finished" and events[-1]["status"] == "failed"
    listed = (await api.get("/v1/tasks?status=failed", headers=alice.headers)).json()
    assert [item["id"] for item in listed["items"]] == [task_id]

    # A second pass finds nothing left to settle; each pass replays.
    assert await one_pass() == 0
    for handle in passes:
        await assert_replays(handle)


async def test_every_worker_start_keeps_one_reconcile_schedule_up_to_date(
    temporal_client: Client, settings: Settings
) -> None:
    await ensure_reconcile_schedule(temporal_client, settings)
    faster = settings.model_copy(update={"reconcile_interval_seconds": 60})
    await ensure_reconcile_schedule(temporal_client, faster)  # a second worker, newer settings

    handle = temporal_client.get_schedule_handle(reconcile_schedule_id(settings.task_queue))
    schedule = (await handle.describe()).schedule
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    assert schedule.action.workflow == "ReconcileTasksWorkflow"
    assert schedule.action.task_queue == settings.task_queue
    assert schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(seconds=60))]
    await handle.delete()
