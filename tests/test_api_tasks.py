"""The tasks API over HTTP with real API keys, a real worker and the fake Claude."""

import httpx
from temporalio.worker import Worker

from tests.conftest import MakeAccount, wait_until_finished
from tests.fake_anthropic import FakeAnthropic, ToolCall, text, tool_use


async def test_start_and_follow_a_task(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice = await make_account()
    fake_claude.script(tool_use(ToolCall("notes_list", {})), text("You have no notes."))

    created = await api.post("/v1/tasks", json={"prompt": "List my notes"}, headers=alice.headers)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "running"

    task = await wait_until_finished(api, created.json()["id"], alice.headers)
    assert task["status"] == "completed"
    assert task["result"]["text"] == "You have no notes."
    assert task["usage"]["input_tokens"] == 20
    tool_step = task["steps"][1]
    assert (tool_step["kind"], tool_step["name"], tool_step["outcome"]) == (
        "tool",
        "notes_list",
        "ok",
    )

    listed = await api.get("/v1/tasks", headers=alice.headers)
    assert [item["id"] for item in listed.json()["items"]] == [task["id"]]


async def test_requests_without_a_valid_key_get_401(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    missing = await api.post("/v1/tasks", json={"prompt": "hi"})
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["detail"]
    wrong = await api.get("/v1/tasks", headers={"Authorization": "Bearer keel_not-a-key"})
    assert wrong.status_code == 401
    assert "invalid" in wrong.json()["detail"]


async def test_another_users_task_is_not_found(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice, mallory = await make_account(), await make_account()
    fake_claude.script(text("secret plans"))
    created = await api.post("/v1/tasks", json={"prompt": "my plans"}, headers=alice.headers)
    task_id = created.json()["id"]

    stolen = await api.get(f"/v1/tasks/{task_id}", headers=mallory.headers)
    assert stolen.status_code == 404
    listed = await api.get("/v1/tasks", headers=mallory.headers)
    assert listed.json()["items"] == []


async def test_bad_input_is_refused_naming_the_field(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    empty = await api.post("/v1/tasks", json={"prompt": "   "}, headers=alice.headers)
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["loc"] == ["body", "prompt"]
    nul = await api.post("/v1/tasks", json={"prompt": "a\u0000b"}, headers=alice.headers)
    assert nul.status_code == 422 and nul.json()["detail"][0]["loc"] == ["body", "prompt"]
    # Any other text Postgres cannot store is the request's fault too, not a server error.
    key = await api.post("/v1/me/keys", json={"name": "a\u0000b"}, headers=alice.headers)
    assert key.status_code == 422 and "cannot be stored" in key.json()["detail"]
    assert len((await api.get("/v1/me/keys", headers=alice.headers)).json()) == 1

    unknown = await api.post(
        "/v1/tasks", json={"prompt": "hi", "agent": "nobody"}, headers=alice.headers
    )
    assert unknown.status_code == 422
    assert "agent" in unknown.json()["detail"] and "assistant" in unknown.json()["detail"]
    # Nothing half-written: refused requests left no task behind.
    listed = await api.get("/v1/tasks", headers=alice.headers)
    assert listed.json()["items"] == []


async def test_health(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).status_code == 200
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_task_list_pages_newest_first(
    api: httpx.AsyncClient, worker: Worker, fake_claude: FakeAnthropic, make_account: MakeAccount
) -> None:
    alice = await make_account()
    started = [
        (await api.post("/v1/tasks", json={"prompt": f"task {n}"}, headers=alice.headers)).json()[
            "id"
        ]
        for n in range(3)
    ]
    first = (await api.get("/v1/tasks?limit=2", headers=alice.headers)).json()
    rest = (
        await api.get(f"/v1/tasks?limit=2&cursor={first['next_cursor']}", headers=alice.headers)
    ).json()
    assert [t["id"] for t in first["items"] + rest["items"]] == started[::-1]
    assert rest["next_cursor"] is None
    bad = await api.get("/v1/tasks?cursor=yesterday", headers=alice.headers)
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]
