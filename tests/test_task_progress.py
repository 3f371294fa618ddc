"""Following a task: the SSE event stream, cancellation, and the tool and agent catalogs."""

import asyncio
import json
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from tests.conftest import MakeAccount, assert_replays, wait_until_finished
from tests.fake_anthropic import FakeAnthropic, ToolCall, hang, text, tool_use


def parse_events(body: str) -> list[dict[str, Any]]:
    events = []
    for chunk in body.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in chunk.splitlines() if not line.startswith(":")
        )
        events.append(
            {"id": int(fields["id"]), "type": fields["event"], **json.loads(fields["data"])}
        )
    return events


async def test_event_stream_replays_and_resumes(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice = await make_account()
    fake_claude.script(
        tool_use(ToolCall("get_current_time", {}), ToolCall("notes_list", {}), text="Checking."),
        text("It is late and you have no notes."),
    )
    created = await api.post("/v1/tasks", json={"prompt": "time? notes?"}, headers=alice.headers)
    task_id = created.json()["id"]
    await wait_until_finished(api, task_id, alice.headers)

    response = await api.get(f"/v1/tasks/{task_id}/events", headers=alice.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    types = [event["type"] for event in events]
    assert types[0] == "task_started" and types[-1] == "task_finished"
    assert types.count("llm_started") == 2 and types.count("llm_finished") == 2
    assert sorted(e["tool"] for e in events if e["type"] == "tool_finished") == [
        "get_current_time",
        "notes_list",
    ]
    streamed = "".join(e["text"] for e in events if e["type"] == "text_delta")
    assert streamed == "Checking.It is late and you have no notes."
    assert events[-1]["status"] == "completed"

    resumed = await api.get(
        f"/v1/tasks/{task_id}/events",
        headers={**alice.headers, "Last-Event-ID": str(events[2]["id"])},
    )
    assert [e["id"] for e in parse_events(resumed.text)] == [e["id"] for e in events[3:]]

    mallory = await make_account()
    stolen = await api.get(f"/v1/tasks/{task_id}/events", headers=mallory.headers)
    assert stolen.status_code == 404


async def test_cancel_stops_a_running_claude_call(
    api: httpx.AsyncClient,
    worker: Worker,
    temporal_client: Client,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice, mallory = await make_account(), await make_account()
    fake_claude.script(hang(120))
    created = await api.post("/v1/tasks", json={"prompt": "think hard"}, headers=alice.headers)
    task_id = created.json()["id"]
    for _ in range(100):
        if fake_claude.requests:
            break
        await asyncio.sleep(0.05)

    assert (
        await api.post(f"/v1/tasks/{task_id}/cancel", headers=mallory.headers)
    ).status_code == 404
    cancelled = await api.post(f"/v1/tasks/{task_id}/cancel", headers=alice.headers)
    assert cancelled.status_code == 202
    task = await wait_until_finished(api, task_id, alice.headers)
    assert task["status"] == "cancelled"
    again = await api.post(f"/v1/tasks/{task_id}/cancel", headers=alice.headers)
    assert again.status_code == 409

    # The Claude call was really stopped (its activity confirmed the cancellation),
    # not abandoned while still running.
    handle = temporal_client.get_workflow_handle(f"task-{task_id}")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    history = await handle.fetch_history()
    kinds = [event.event_type for event in history.events]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in kinds
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    await assert_replays(handle)


async def test_catalog_lists_tools_with_policies_and_agents(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    tools = {
        tool["name"]: tool for tool in (await api.get("/v1/tools", headers=alice.headers)).json()
    }
    assert tools["get_current_time"]["policy"] == "auto"
    assert tools["notes_write"]["input_schema"]["required"] == ["path", "content"]
    agents = (await api.get("/v1/agents", headers=alice.headers)).json()
    assert [agent["name"] for agent in agents] == ["assistant"]
    assert "notes_write" in agents[0]["tools"]
    assert (await api.get("/v1/tools")).status_code == 401
