"""Abuse limits: a per-key rate limit that holds across API replicas, request body and
prompt size caps, and a cap on each user's unfinished tasks."""

import asyncio
from collections.abc import AsyncIterator

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.worker import Worker

from core.api_keys import create_api_key
from core.db import session_scope
from core.settings import Settings
from tests.conftest import MakeAccount, serve_api, wait_for_status
from tests.fake_anthropic import FakeAnthropic, ToolCall, tool_use


def limited(settings: Settings, **limits: int) -> Settings:
    return settings.model_copy(update=limits)


async def test_rate_limit_answers_429_with_retry_after_across_replicas(
    settings: Settings,
    database_url: str,
    temporal_address: str,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    async with session_scope(sessions) as session:
        _key, second_key = await create_api_key(session, alice.id)
    capped = limited(settings, rate_limit_per_minute=120)
    # Two API replicas over the same database: the limit is the key's, not a replica's.
    async with (
        serve_api(capped, database_url, temporal_address) as one,
        serve_api(capped, database_url, temporal_address) as two,
    ):
        responses = await asyncio.gather(
            *((one if n % 2 else two).get("/v1/agents", headers=alice.headers) for n in range(150))
        )
        codes = [response.status_code for response in responses]
        assert set(codes) == {200, 429}
        # A minute boundary mid-burst may let one through early; never more.
        assert 120 <= codes.count(200) <= 121, codes.count(200)
        refused = next(response for response in responses if response.status_code == 429)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "rate limit" in refused.json()["detail"] and "120" in refused.json()["detail"]

        # The limit is per key: the same user's other key is not affected.
        other = await two.get("/v1/agents", headers={"Authorization": f"Bearer {second_key}"})
        assert other.status_code == 200


async def test_rate_limit_zero_means_no_limit(
    settings: Settings, database_url: str, temporal_address: str, make_account: MakeAccount
) -> None:
    alice = await make_account()
    async with serve_api(
        limited(settings, rate_limit_per_minute=0), database_url, temporal_address
    ) as api:
        codes = {
            (await api.get("/v1/agents", headers=alice.headers)).status_code for _ in range(30)
        }
    assert codes == {200}


async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_oversized_bodies_get_413_before_they_are_parsed(
    settings: Settings, database_url: str, temporal_address: str, make_account: MakeAccount
) -> None:
    alice = await make_account()
    async with serve_api(
        limited(settings, max_request_bytes=10_000), database_url, temporal_address
    ) as api:
        declared = await api.post("/v1/tasks", json={"prompt": "x" * 20_000}, headers=alice.headers)
        assert declared.status_code == 413
        assert "KEEL_MAX_REQUEST_BYTES" in declared.json()["detail"]

        # Chunked, no Content-Length, and not even JSON: refused for its size, not parsed.
        chunked = await api.post(
            "/v1/tasks",
            content=chunks(b"{" * 50_000, 1000),
            headers={**alice.headers, "content-type": "application/json"},
        )
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413, chunked.text

        small = await api.post(
            "/v1/tasks",
            content=chunks(b'{"prompt": "", "agent": "x"}', 4),
            headers={**alice.headers, "content-type": "application/json"},
        )
        assert small.status_code == 422  # under the cap: parsed and validated as usual
        listed = await api.get("/v1/tasks", headers=alice.headers)
        assert listed.json()["items"] == []


async def test_two_megabyte_prompt_is_refused_and_long_prompts_name_the_field(
    api: httpx.AsyncClient,
    settings: Settings,
    database_url: str,
    temporal_address: str,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    huge = await api.post("/v1/tasks", json={"prompt": "x" * 2_000_000}, headers=alice.headers)
    assert huge.status_code == 413

    async with serve_api(
        limited(settings, max_prompt_chars=1000), database_url, temporal_address
    ) as capped:
        long = await capped.post("/v1/tasks", json={"prompt": "y" * 1001}, headers=alice.headers)
        assert long.status_code == 422
        assert long.json()["detail"].startswith("prompt:")
        assert "1000" in long.json()["detail"]
        listed = await capped.get("/v1/tasks", headers=alice.headers)
        assert listed.json()["items"] == []


async def test_unfinished_tasks_per_user_are_capped(
    settings: Settings,
    database_url: str,
    temporal_address: str,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice, bob = await make_account(), await make_account()
    fake_claude.respond_with(lambda _body: tool_use(ToolCall("notes_delete", {"path": "a.md"})))
    async with serve_api(
        limited(settings, max_running_tasks_per_user=2), database_url, temporal_address
    ) as api:
        # Started together, on one replica or many, no more than the cap get through.
        attempts = await asyncio.gather(
            *(
                api.post("/v1/tasks", json={"prompt": f"task {n}"}, headers=alice.headers)
                for n in range(5)
            )
        )
        codes = sorted(response.status_code for response in attempts)
        assert codes == [202, 202, 429, 429, 429]
        refused = next(response for response in attempts if response.status_code == 429)
        assert "too many unfinished tasks" in refused.json()["detail"]
        assert "Retry-After" in refused.headers
        assert (
            await api.post("/v1/tasks", json={"prompt": "mine"}, headers=bob.headers)
        ).status_code == 202

        # A task that ends frees its place.
        first = next(response for response in attempts if response.status_code == 202)
        task_id = first.json()["id"]
        await wait_for_status(api, task_id, alice.headers, frozenset({"awaiting_approval"}))
        assert (
            await api.post(f"/v1/tasks/{task_id}/cancel", headers=alice.headers)
        ).status_code == 202
        await wait_for_status(api, task_id, alice.headers, frozenset({"cancelled"}))
        again = await api.post("/v1/tasks", json={"prompt": "now"}, headers=alice.headers)
        assert again.status_code == 202, again.text
