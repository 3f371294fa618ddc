"""Isolation: every endpoint that takes a resource id answers 404 to another user, and what
they asked for does not happen; lists show only the caller's rows unless an admin asks for
every user's.

To cover a new resource: create it for alice in `alice_world`, add its id to `World`, and
add a `Probe` line per endpoint (the owner's expected status shows the path is right)."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from temporalio.worker import Worker

from tests.conftest import Account, MakeAccount, eventually, wait_for_status, wait_until_finished
from tests.fake_anthropic import FakeAnthropic, Reply, ToolCall, text, tool_use

PARKED = frozenset({"awaiting_approval", "awaiting_answer"})
ONCE_A_YEAR = "0 0 1 1 *"
SCHEDULED_PROMPT = "Summarise my notes"


def delete_and_ask(body: dict[str, Any]) -> Reply:
    """First turn: ask to delete a note (needs approval) and ask the user; then finish."""
    last = body["messages"][-1]["content"]
    if any(isinstance(block, dict) and block.get("type") == "tool_result" for block in last):
        return text("Done.")
    return tool_use(
        ToolCall("notes_delete", {"path": "old.md"}),
        ToolCall("ask_user", {"question": "Which colour?"}),
    )


@dataclass
class World:
    """One user's resources, by the names the probes' paths use."""

    ids: dict[str, str] = field(default_factory=dict)
    key: str = ""


async def parked_task(api: httpx.AsyncClient, account: Account) -> dict[str, str]:
    """A task of `account` waiting on an approval and a question; its ids."""
    created = await api.post("/v1/tasks", json={"prompt": "tidy up"}, headers=account.headers)
    assert created.status_code == 202, created.text
    task_id = created.json()["id"]
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        view = await wait_for_status(api, task_id, account.headers, PARKED)
        if view["pending_approvals"] and view["pending_question"]:
            break
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(0.05)
    return {
        "task": task_id,
        "approval": view["pending_approvals"][0]["id"],
        "question": view["pending_question"]["id"],
    }


async def first_notification(api: httpx.AsyncClient, account: Account) -> str:
    """The id of the account's first notification, once its task's notify activity ran."""

    async def inbox() -> list[Any]:
        items: list[Any] = (await api.get("/v1/notifications", headers=account.headers)).json()[
            "items"
        ]
        return items

    notification_id: str = (await eventually(inbox, what="a notification"))[0]["id"]
    return notification_id


async def alice_world(api: httpx.AsyncClient, alice: Account) -> World:
    world = World(ids=await parked_task(api, alice))
    world.ids["notification"] = await first_notification(api, alice)
    created = await api.post("/v1/me/keys", json={"name": "second"}, headers=alice.headers)
    assert created.status_code == 201, created.text
    world.ids["key"], world.key = created.json()["id"], created.json()["key"]
    preference = await api.put(
        "/v1/me/tool-preferences/http_fetch",
        json={"preference": "always_allow"},
        headers=alice.headers,
    )
    assert preference.status_code == 200
    chat = await api.post("/v1/sessions", json={}, headers=alice.headers)
    assert chat.status_code == 201, chat.text
    world.ids["session"] = chat.json()["id"]
    for name, paused in (("schedule", False), ("paused_schedule", True)):
        body = {"name": name, "prompt": SCHEDULED_PROMPT, "cron": ONCE_A_YEAR, "paused": paused}
        created = await api.post("/v1/schedules", json=body, headers=alice.headers)
        assert created.status_code == 201, created.text
        world.ids[name] = created.json()["id"]
    return world


@dataclass(frozen=True)
class Probe:
    """A request on alice's resource; `owner` is the statuses alice herself may get (empty:
    not asked of her), `after_finish` asks it of her once her task has ended."""

    name: str
    method: str
    path: str
    body: dict[str, str] | None = None
    owner: frozenset[int] = frozenset({200})
    after_finish: bool = False


PROBES = [
    Probe("read the task", "GET", "/v1/tasks/{task}"),
    Probe("answer the question", "POST", "/v1/tasks/{task}/answer", {"question_id": "{question}", "text": "red"}),
    Probe("answer it through one's own task", "POST", "/v1/tasks/{own_task}/answer", {"question_id": "{question}", "text": "red"}, owner=frozenset()),
    Probe("approve the tool call", "POST", "/v1/tasks/{task}/approvals/{approval}", {"decision": "approve"}),
    Probe("approve it through one's own task", "POST", "/v1/tasks/{own_task}/approvals/{approval}", {"decision": "approve"}, owner=frozenset()),
    Probe("mark the notification read", "POST", "/v1/notifications/{notification}/read"),
    Probe("revoke the API key", "DELETE", "/v1/me/keys/{key}"),
    Probe("remove the tool preference", "DELETE", "/v1/me/tool-preferences/http_fetch", owner=frozenset({204})),
    Probe("read the session", "GET", "/v1/sessions/{session}"),
    Probe("read the session's transcript", "GET", "/v1/sessions/{session}/messages"),
    Probe("post into the session", "POST", "/v1/sessions/{session}/messages", {"text": "mine now"}, owner=frozenset({202})),
    Probe("start a task in the session", "POST", "/v1/tasks", {"prompt": "mine now", "session_id": "{session}"}, owner=frozenset({202})),
    Probe("schedule into the session", "POST", "/v1/schedules", {"name": "x", "prompt": "x", "cron": ONCE_A_YEAR, "session_id": "{session}"}, owner=frozenset({201})),
    Probe("read the schedule", "GET", "/v1/schedules/{schedule}"),
    Probe("change the schedule", "PATCH", "/v1/schedules/{schedule}", {"prompt": "mine now"}),
    Probe("trigger the schedule", "POST", "/v1/schedules/{schedule}/trigger", owner=frozenset({202})),
    Probe("pause the schedule", "POST", "/v1/schedules/{schedule}/pause"),
    Probe("resume the paused schedule", "POST", "/v1/schedules/{paused_schedule}/resume"),
    Probe("delete the schedule", "DELETE", "/v1/schedules/{schedule}", owner=frozenset({204})),
    Probe("stream the task's events", "GET", "/v1/tasks/{task}/events", after_finish=True),
    Probe("cancel the task", "POST", "/v1/tasks/{task}/cancel", owner=frozenset({409}), after_finish=True),
]  # fmt: skip

LISTS = [
    "/v1/tasks",
    "/v1/approvals",
    "/v1/approvals?task_id={task}",
    "/v1/notifications",
    "/v1/me/keys",
    "/v1/me/tool-preferences",
    "/v1/sessions",
    "/v1/schedules",
]


async def send(
    api: httpx.AsyncClient, probe: Probe, ids: dict[str, str], account: Account
) -> httpx.Response:
    body = {name: value.format(**ids) for name, value in (probe.body or {}).items()}
    return await api.request(
        probe.method,
        probe.path.format(**ids),
        json=body if probe.body is not None else None,
        headers=account.headers,
    )


async def test_another_users_resources_answer_404_and_stay_as_they_were(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice, mallory = await make_account(), await make_account()
    fake_claude.respond_with(delete_and_ask)
    world = await alice_world(api, alice)
    mallory_ids = {**world.ids, "own_task": (await parked_task(api, mallory))["task"]}

    for probe in PROBES:
        response = await send(api, probe, mallory_ids, mallory)
        assert response.status_code == 404, (probe.name, response.text)
    for path in LISTS:
        listed = await api.get(path.format(**world.ids), headers=mallory.headers)
        assert listed.status_code == 200, listed.text
        assert not set(world.ids.values()) & set(_ids(listed.json())), path

    # Nothing happened to alice's things.
    task = await api.get(f"/v1/tasks/{world.ids['task']}", headers=alice.headers)
    assert task.json()["status"] in PARKED
    assert [a["id"] for a in task.json()["pending_approvals"]] == [world.ids["approval"]]
    assert task.json()["pending_question"]["id"] == world.ids["question"]
    inbox = (await api.get("/v1/notifications?unread=true", headers=alice.headers)).json()
    assert world.ids["notification"] in _ids(inbox)
    second_key = {"Authorization": f"Bearer {world.key}"}
    assert (await api.get("/v1/tasks", headers=second_key)).status_code == 200
    preferences = (await api.get("/v1/me/tool-preferences", headers=alice.headers)).json()
    assert [p["tool"] for p in preferences] == ["http_fetch"]
    transcript = await api.get(
        f"/v1/sessions/{world.ids['session']}/messages", headers=alice.headers
    )
    assert transcript.json()["items"] == []
    for name, paused in (("schedule", False), ("paused_schedule", True)):
        schedule = await api.get(f"/v1/schedules/{world.ids[name]}", headers=alice.headers)
        assert schedule.status_code == 200, schedule.text  # not deleted
        kept = schedule.json()
        assert (kept["paused"], kept["prompt"], kept["runs"]) == (paused, SCHEDULED_PROMPT, 0)
    # Nor did alice's session give mallory a session or a schedule of her own.
    for path in ("/v1/sessions", "/v1/schedules"):
        assert (await api.get(path, headers=mallory.headers)).json()["items"] == [], path

    # The same requests are alice's to make: the paths were right.
    for probe in (p for p in PROBES if p.owner and not p.after_finish):
        response = await send(api, probe, world.ids, alice)
        assert response.status_code in probe.owner, (probe.name, response.text)
    await wait_until_finished(api, world.ids["task"], alice.headers)
    for probe in (p for p in PROBES if p.owner and p.after_finish):
        response = await send(api, probe, world.ids, alice)
        assert response.status_code in probe.owner, (probe.name, response.text)


def _ids(body: Any) -> list[str]:
    items = body["items"] if isinstance(body, dict) else body
    return [item.get("id", item.get("tool")) for item in items]


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/approvals"])
async def test_admins_list_across_users_and_others_may_not(
    api: httpx.AsyncClient,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
    path: str,
) -> None:
    alice, bob = await make_account(), await make_account()
    admin = await make_account(admin=True)
    fake_claude.respond_with(delete_and_ask)
    alices, bobs = await parked_task(api, alice), await parked_task(api, bob)

    everyone = await api.get(f"{path}?all_users=true&limit=100", headers=admin.headers)
    assert everyone.status_code == 200, everyone.text
    owners = {item["user_id"] for item in everyone.json()["items"]}
    assert {alice.id, bob.id} <= owners
    listed = {item.get("task_id", item["id"]) for item in everyone.json()["items"]}
    assert {alices["task"], bobs["task"]} <= listed
    own = await api.get(path, headers=admin.headers)
    assert own.json()["items"] == []  # without all_users, an admin's list is their own

    refused = await api.get(f"{path}?all_users=true", headers=alice.headers)
    assert refused.status_code == 403
    assert "all_users" in refused.json()["detail"] and "admin" in refused.json()["detail"]
