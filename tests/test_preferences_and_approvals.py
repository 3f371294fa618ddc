"""Tool preferences (/v1/me/tool-preferences) and the approvals audit list (/v1/approvals)
over HTTP with real API keys. Approval rows are written here as the workflow's activities
write them."""

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.tool_registry import Tool, ToolContext, ToolRegistry
from api.main import create_app
from core.db import session_scope
from core.settings import Settings
from schemas.agent_task import ToolPolicy
from schemas.tables import Approval, Task, utcnow
from schemas.tool_preferences import ToolPreferenceValue, effective_policy
from tests.conftest import Account, MakeAccount

PREFERENCES = "/v1/me/tool-preferences"

# ---------------------------------------------------------------------------------------
# effective_policy


@pytest.mark.parametrize(
    ("base", "preference", "expected"),
    [
        (ToolPolicy.AUTO, None, ToolPolicy.AUTO),
        (ToolPolicy.AUTO, "always_allow", ToolPolicy.AUTO),
        (ToolPolicy.AUTO, "always_ask", ToolPolicy.CONFIRM),
        (ToolPolicy.CONFIRM, None, ToolPolicy.CONFIRM),
        (ToolPolicy.CONFIRM, "always_allow", ToolPolicy.AUTO),
        (ToolPolicy.CONFIRM, "always_ask", ToolPolicy.CONFIRM),
        (ToolPolicy.NEVER, None, ToolPolicy.NEVER),
        (ToolPolicy.NEVER, "always_allow", ToolPolicy.NEVER),
        (ToolPolicy.NEVER, "always_ask", ToolPolicy.NEVER),
        (ToolPolicy.CONFIRM, ToolPreferenceValue.ALWAYS_ALLOW, ToolPolicy.AUTO),
    ],
)
def test_effective_policy(base: ToolPolicy, preference: str | None, expected: ToolPolicy) -> None:
    assert effective_policy(base, preference) is expected


@pytest.mark.parametrize("base", list(ToolPolicy))
def test_effective_policy_refuses_a_value_that_is_no_preference(base: ToolPolicy) -> None:
    with pytest.raises(ValueError, match="sometimes"):
        effective_policy(base, "sometimes")


# ---------------------------------------------------------------------------------------
# tool preferences


class _NoArguments(BaseModel):
    pass


async def _refuse(_ctx: ToolContext, _args: _NoArguments) -> str:
    raise AssertionError("a never-tier tool must not run")


@pytest.fixture
async def api_with_never_tool(
    settings: Settings, database_url: str, temporal_address: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with one more tool, `format_disk`, disabled by policy (`never`): no
    built-in tool is, yet a deployment may register one."""
    app = create_app(settings, database_url, temporal_address)
    async with app.router.lifespan_context(app):
        tools: ToolRegistry = app.state.tools
        tools.add(
            Tool(
                name="format_disk",
                description="Erase everything.",
                policy=ToolPolicy.NEVER,
                args_model=_NoArguments,
                handler=_refuse,
            )
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as client:
            yield client


async def test_set_list_replace_and_delete_a_preference(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    assert (await api.get(PREFERENCES, headers=alice.headers)).json() == []

    allowed = await api.put(
        f"{PREFERENCES}/notes_delete", json={"preference": "always_allow"}, headers=alice.headers
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["tool"] == "notes_delete"
    assert allowed.json()["preference"] == "always_allow"
    await api.put(
        f"{PREFERENCES}/http_fetch", json={"preference": "always_ask"}, headers=alice.headers
    )

    listed = (await api.get(PREFERENCES, headers=alice.headers)).json()
    assert [(item["tool"], item["preference"]) for item in listed] == [
        ("http_fetch", "always_ask"),
        ("notes_delete", "always_allow"),
    ]
    assert listed[1]["updated_at"] == allowed.json()["updated_at"]

    replaced = await api.put(
        f"{PREFERENCES}/notes_delete", json={"preference": "always_ask"}, headers=alice.headers
    )
    assert replaced.status_code == 200, replaced.text
    assert datetime.fromisoformat(replaced.json()["updated_at"]) > datetime.fromisoformat(
        allowed.json()["updated_at"]
    )
    listed = (await api.get(PREFERENCES, headers=alice.headers)).json()
    assert [(item["tool"], item["preference"]) for item in listed] == [
        ("http_fetch", "always_ask"),
        ("notes_delete", "always_ask"),
    ]

    deleted = await api.delete(f"{PREFERENCES}/notes_delete", headers=alice.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    listed = (await api.get(PREFERENCES, headers=alice.headers)).json()
    assert [item["tool"] for item in listed] == ["http_fetch"]

    again = await api.delete(f"{PREFERENCES}/notes_delete", headers=alice.headers)
    assert again.status_code == 404
    assert "no preference" in again.json()["detail"] and "notes_delete" in again.json()["detail"]


async def test_an_unknown_tool_is_not_found(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    put = await api.put(
        f"{PREFERENCES}/launch_rockets", json={"preference": "always_allow"}, headers=alice.headers
    )
    assert put.status_code == 404
    assert "launch_rockets" in put.json()["detail"]
    deleted = await api.delete(f"{PREFERENCES}/launch_rockets", headers=alice.headers)
    assert deleted.status_code == 404
    assert "no tool 'launch_rockets'" in deleted.json()["detail"]
    assert (await api.get(PREFERENCES, headers=alice.headers)).json() == []


async def test_a_tool_disabled_by_policy_cannot_be_always_allowed(
    api_with_never_tool: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    refused = await api_with_never_tool.put(
        f"{PREFERENCES}/format_disk", json={"preference": "always_allow"}, headers=alice.headers
    )
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "format_disk" in detail and "disabled by policy" in detail
    assert (await api_with_never_tool.get(PREFERENCES, headers=alice.headers)).json() == []

    # Asking every time is harmless: the tool stays disabled whatever the preference.
    asked = await api_with_never_tool.put(
        f"{PREFERENCES}/format_disk", json={"preference": "always_ask"}, headers=alice.headers
    )
    assert asked.status_code == 200, asked.text


async def test_a_bad_preference_is_refused_naming_the_field(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    for body in ({"preference": "sometimes"}, {}, {"preference": None}):
        refused = await api.put(f"{PREFERENCES}/notes_delete", json=body, headers=alice.headers)
        assert refused.status_code == 422, body
        assert refused.json()["detail"][0]["loc"] == ["body", "preference"], body
    assert (await api.get(PREFERENCES, headers=alice.headers)).json() == []


async def test_each_user_has_their_own_preferences(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice, bob = await make_account(), await make_account()
    await api.put(
        f"{PREFERENCES}/notes_delete", json={"preference": "always_allow"}, headers=alice.headers
    )
    assert (await api.get(PREFERENCES, headers=bob.headers)).json() == []

    await api.put(
        f"{PREFERENCES}/notes_delete", json={"preference": "always_ask"}, headers=bob.headers
    )
    # Bob's preference is his own: setting and deleting it leaves Alice's as it was.
    assert (await api.delete(f"{PREFERENCES}/notes_delete", headers=bob.headers)).status_code == 204
    assert (await api.delete(f"{PREFERENCES}/notes_delete", headers=bob.headers)).status_code == 404
    alices = (await api.get(PREFERENCES, headers=alice.headers)).json()
    assert [(item["tool"], item["preference"]) for item in alices] == [
        ("notes_delete", "always_allow")
    ]


async def test_preferences_and_approvals_need_an_api_key(api: httpx.AsyncClient) -> None:
    requests = [
        api.get(PREFERENCES),
        api.put(f"{PREFERENCES}/notes_delete", json={"preference": "always_allow"}),
        api.delete(f"{PREFERENCES}/notes_delete"),
        api.get("/v1/approvals"),
        api.get("/v1/approvals", headers={"Authorization": "Bearer keel_not-a-key"}),
    ]
    for request in requests:
        response = await request
        assert response.status_code == 401, response.request.url


# ---------------------------------------------------------------------------------------
# approvals


async def _insert_task(sessions: async_sessionmaker[AsyncSession], account: Account) -> str:
    task_id = str(uuid.uuid4())
    async with session_scope(sessions) as session:
        session.add(
            Task(
                id=task_id,
                user_id=account.id,
                agent="assistant",
                channel="api",
                prompt="tidy my notes",
                status="awaiting_approval",
            )
        )
    return task_id


async def _insert_approval(
    sessions: async_sessionmaker[AsyncSession],
    account: Account,
    task_id: str,
    *,
    requested_at: datetime,
    status: str = "pending",
    expires_in: timedelta = timedelta(hours=24),
    tool: str = "notes_delete",
    arguments: dict[str, Any] | None = None,
    **decision: Any,
) -> str:
    """An approval row as the workflow's store activity writes it."""
    arguments = arguments if arguments is not None else {"path": f"notes/{uuid.uuid4().hex}.md"}
    approval = Approval(
        id=str(uuid.uuid4()),
        task_id=task_id,
        user_id=account.id,
        tool=tool,
        tool_use_id=f"toolu_{uuid.uuid4().hex[:12]}",
        arguments=arguments,
        arguments_sha256=hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest(),
        status=status,
        channel="api",
        requested_at=requested_at,
        expires_at=requested_at + expires_in,
        **decision,
    )
    async with session_scope(sessions) as session:
        session.add(approval)
    return approval.id


async def _list(api: httpx.AsyncClient, account: Account, **params: Any) -> Any:
    response = await api.get("/v1/approvals", params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(page: Any) -> list[str]:
    return [item["id"] for item in page["items"]]


async def test_approvals_are_listed_newest_first_and_filtered(
    api: httpx.AsyncClient, make_account: MakeAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account()
    first_task, second_task = (
        await _insert_task(sessions, alice),
        await _insert_task(sessions, alice),
    )
    now = utcnow()
    approved = await _insert_approval(
        sessions,
        alice,
        first_task,
        requested_at=now - timedelta(hours=3),
        status="approved",
        decided_at=now - timedelta(hours=2),
        decided_by=alice.id,
    )
    rejected = await _insert_approval(
        sessions,
        alice,
        first_task,
        requested_at=now - timedelta(hours=2),
        status="rejected",
        tool="http_fetch",
        arguments={"url": "https://example.com/"},
        decided_at=now - timedelta(hours=1),
        decided_by=alice.id,
        reason="not that site",
    )
    pending = await _insert_approval(
        sessions, alice, second_task, requested_at=now - timedelta(minutes=5)
    )

    everything = await _list(api, alice)
    assert _ids(everything) == [pending, rejected, approved]
    assert everything["next_cursor"] is None
    shown = everything["items"][1]
    assert shown == {
        "id": rejected,
        "task_id": first_task,
        "user_id": alice.id,
        "tool": "http_fetch",
        "arguments": {"url": "https://example.com/"},
        "status": "rejected",
        "channel": "api",
        "requested_at": shown["requested_at"],
        "expires_at": shown["expires_at"],
        "decided_at": shown["decided_at"],
        "decided_by": alice.id,
        "reason": "not that site",
    }
    assert datetime.fromisoformat(shown["requested_at"]) == now - timedelta(hours=2)
    assert datetime.fromisoformat(shown["expires_at"]) == now + timedelta(hours=22)
    assert datetime.fromisoformat(shown["decided_at"]) == now - timedelta(hours=1)
    assert everything["items"][0]["decided_at"] is None

    assert _ids(await _list(api, alice, status="pending")) == [pending]
    assert _ids(await _list(api, alice, status="approved")) == [approved]
    assert _ids(await _list(api, alice, status="rejected")) == [rejected]
    assert _ids(await _list(api, alice, status="expired")) == []
    assert _ids(await _list(api, alice, task_id=first_task)) == [rejected, approved]
    assert _ids(await _list(api, alice, task_id=first_task, status="pending")) == []
    assert _ids(await _list(api, alice, task_id=second_task, status="pending")) == [pending]


async def test_a_pending_approval_past_its_expiry_is_shown_expired(
    api: httpx.AsyncClient, make_account: MakeAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account()
    task_id = await _insert_task(sessions, alice)
    now = utcnow()
    # The task's timer has not recorded this expiry yet: the row still says pending.
    lapsed = await _insert_approval(
        sessions, alice, task_id, requested_at=now - timedelta(hours=25)
    )
    recorded = await _insert_approval(
        sessions,
        alice,
        task_id,
        requested_at=now - timedelta(hours=30),
        status="expired",
        decided_at=now - timedelta(hours=6),
    )
    waiting = await _insert_approval(
        sessions, alice, task_id, requested_at=now - timedelta(hours=1)
    )

    everything = await _list(api, alice)
    assert [(item["id"], item["status"]) for item in everything["items"]] == [
        (waiting, "pending"),
        (lapsed, "expired"),
        (recorded, "expired"),
    ]
    assert _ids(await _list(api, alice, status="pending")) == [waiting]
    assert _ids(await _list(api, alice, status="expired")) == [lapsed, recorded]


async def test_approvals_page_with_a_cursor(
    api: httpx.AsyncClient, make_account: MakeAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account()
    task_id = await _insert_task(sessions, alice)
    now = utcnow()
    # Three parallel tool calls of one step are requested at the same instant.
    same_instant = [
        await _insert_approval(sessions, alice, task_id, requested_at=now - timedelta(minutes=1))
        for _ in range(3)
    ]
    older = await _insert_approval(sessions, alice, task_id, requested_at=now - timedelta(hours=1))
    newest = await _insert_approval(sessions, alice, task_id, requested_at=now)
    expected = [newest, *sorted(same_instant, reverse=True), older]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await _list(api, alice, **params)
        seen += _ids(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3

    first_pending = await _list(api, alice, status="pending", limit=4)
    assert _ids(first_pending) == expected[:4]
    rest = await _list(api, alice, status="pending", limit=4, cursor=first_pending["next_cursor"])
    assert _ids(rest) == expected[4:] and rest["next_cursor"] is None


async def test_another_users_approvals_never_appear(
    api: httpx.AsyncClient, make_account: MakeAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice, mallory = await make_account(), await make_account()
    alices_task = await _insert_task(sessions, alice)
    alices = await _insert_approval(sessions, alice, alices_task, requested_at=utcnow())

    assert _ids(await _list(api, mallory)) == []
    assert _ids(await _list(api, mallory, task_id=alices_task)) == []
    assert _ids(await _list(api, mallory, status="pending")) == []
    assert _ids(await _list(api, alice)) == [alices]


async def test_bad_approval_queries_are_refused_naming_the_field(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    for params, field in (
        ({"status": "maybe"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
    ):
        refused = await api.get("/v1/approvals", params=params, headers=alice.headers)
        assert refused.status_code == 422, params
        assert refused.json()["detail"][0]["loc"] == ["query", field], params
    for cursor in ("yesterday", "2025-01-01T00:00:00~", "2025-01-01T00:00:00~some-id"):
        refused = await api.get("/v1/approvals", params={"cursor": cursor}, headers=alice.headers)
        assert refused.status_code == 422, cursor
        assert refused.json()["detail"].startswith("cursor:"), cursor
