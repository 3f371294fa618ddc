"""Encryption at rest in Temporal: with KEEL_ENCRYPTION_KEYS set, Temporal's history holds no
prompt or result in clear, the API still shows both, an old key keeps decrypting after the
current key changes, and the codec endpoint decodes for admins only."""

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Replayer, Worker

from core.encryption import ENCODING, KEY_ID_METADATA, EncryptionCodec, generate_key, parse_keys
from core.settings import Settings
from core.temporal import connect_temporal, data_converter
from tests.conftest import MakeAccount, serve_api, wait_for_status, wait_until_finished
from tests.fake_anthropic import FakeAnthropic, ToolCall, text, tool_use
from workers.dev import temporal_cli
from workers.worker import build_worker
from workflows.agent_task import AgentTaskWorkflow

OLD_KEY, NEW_KEY = generate_key(), generate_key()
PROMPT = "Plan the surprise party for Margot Quellheim"
ANSWER = "Book the lighthouse at Quellheim Point"


def encrypted(settings: Settings, keys: str, current: str) -> Settings:
    return settings.model_copy(
        update={"encryption_keys": SecretStr(keys), "encryption_key_id": current}
    )


@asynccontextmanager
async def keel_worker(
    settings: Settings,
    temporal_address: str,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
) -> AsyncIterator[Client]:
    """Keel's worker with these settings (so their encryption), and its client."""
    client = await connect_temporal(temporal_address, settings=settings)
    claude = anthropic.AsyncAnthropic(
        api_key="test-key", base_url=fake_claude.base_url, max_retries=0
    )
    async with build_worker(client, settings, sessions, claude):
        yield client
    await claude.close()


async def workflow_show(temporal_address: str, workflow_id: str, *options: str) -> str:
    """What `temporal workflow show` prints of the workflow's history."""
    shown = await asyncio.create_subprocess_exec(
        *[temporal_cli(), "workflow", "show", "--address", temporal_address],
        *["--workflow-id", workflow_id, *options],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await shown.communicate()
    assert shown.returncode == 0, stderr.decode()
    return stdout.decode()


def key_ids_in(history_json: str) -> set[str]:
    """The encryption key ids named by the payloads of a history (as the CLI prints it)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            metadata = node.get("metadata")
            if isinstance(metadata, dict) and KEY_ID_METADATA in metadata:
                found.add(base64.b64decode(metadata[KEY_ID_METADATA]).decode())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history_json))
    return found


async def test_history_holds_no_clear_text_and_rotation_keeps_old_payloads_readable(
    settings: Settings,
    database_url: str,
    temporal_address: str,
    sessions: async_sessionmaker[AsyncSession],
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    alice = await make_account()
    fake_claude.script(tool_use(ToolCall("notes_delete", {"path": "guest-list.md"})), text(ANSWER))
    before = encrypted(settings, f"old:{OLD_KEY}", "old")
    after = encrypted(settings, f"old:{OLD_KEY},new:{NEW_KEY}", "new")

    # Started under the old key; it parks on an approval.
    async with (
        keel_worker(before, temporal_address, sessions, fake_claude),
        serve_api(before, database_url, temporal_address) as api,
    ):
        created = await api.post("/v1/tasks", json={"prompt": PROMPT}, headers=alice.headers)
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]
        waiting = await wait_for_status(
            api, task_id, alice.headers, frozenset({"awaiting_approval"})
        )
        approval_id = waiting["pending_approvals"][0]["id"]

    # The current key changes while it waits; the new worker replays the old payloads.
    async with (
        keel_worker(after, temporal_address, sessions, fake_claude) as client,
        serve_api(after, database_url, temporal_address) as api,
    ):
        decided = await api.post(
            f"/v1/tasks/{task_id}/approvals/{approval_id}",
            json={"decision": "approve"},
            headers=alice.headers,
        )
        assert decided.status_code == 200, decided.text
        task = await wait_until_finished(api, task_id, alice.headers)
        assert (task["status"], task["prompt"], task["result"]["text"]) == (
            "completed",
            PROMPT,
            ANSWER,
        )
        handle = client.get_workflow_handle_for(AgentTaskWorkflow.run, f"task-{task_id}")
        assert (await handle.result()).text == ANSWER
        # The replayer decodes the history the way the rotated worker does.
        replayer = Replayer(workflows=[AgentTaskWorkflow], data_converter=data_converter(after))
        await replayer.replay_workflow(await handle.fetch_history())

    shown = await workflow_show(temporal_address, f"task-{task_id}", "--detailed")
    for secret in ("Margot", "Quellheim", "guest-list", "lighthouse", alice.name):
        assert secret not in shown
    history_json = await workflow_show(temporal_address, f"task-{task_id}", "--output", "json")
    assert key_ids_in(history_json) == {"old", "new"}


async def test_without_encryption_the_prompt_is_in_clear(
    api: httpx.AsyncClient,
    temporal_address: str,
    worker: Worker,
    fake_claude: FakeAnthropic,
    make_account: MakeAccount,
) -> None:
    """The control for the test above: `temporal workflow show` does reveal it by default."""
    alice = await make_account()
    fake_claude.script(text(ANSWER))
    created = await api.post("/v1/tasks", json={"prompt": PROMPT}, headers=alice.headers)
    task_id = created.json()["id"]
    await wait_until_finished(api, task_id, alice.headers)
    shown = await workflow_show(temporal_address, f"task-{task_id}", "--detailed")
    assert "input[0].prompt: Plan the surprise party for Margot Quellheim" in shown


async def test_codec_endpoint_decodes_for_admins_only(
    settings: Settings, database_url: str, temporal_address: str, make_account: MakeAccount
) -> None:
    alice, admin = await make_account(), await make_account(admin=True)
    keys = encrypted(settings, f"old:{OLD_KEY},new:{NEW_KEY}", "new")
    under_old_key = await EncryptionCodec(parse_keys(f"old:{OLD_KEY}"), "old").encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(PROMPT).encode())]
    )
    body: dict[str, list[dict[str, Any]]] = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in under_old_key
        ]
    }
    ui = {"Origin": "http://localhost:8233"}
    async with serve_api(keys, database_url, temporal_address) as api:
        decoded = await api.post("/codec/decode", json=body, headers={**admin.headers, **ui})
        assert decoded.status_code == 200, decoded.text
        [payload] = decoded.json()["payloads"]
        assert json.loads(base64.b64decode(payload["data"])) == PROMPT
        assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain"
        assert decoded.headers["access-control-allow-origin"] == "http://localhost:8233"

        encoded = await api.post("/codec/encode", json=decoded.json(), headers=admin.headers)
        [sealed] = encoded.json()["payloads"]
        assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCODING
        assert base64.b64decode(sealed["metadata"][KEY_ID_METADATA]) == b"new"
        assert "Margot" not in encoded.text

        # The Web UI's preflight is answered for its origin.
        preflight = await api.options(
            "/codec/decode",
            headers={
                **ui,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            },
        )
        assert preflight.status_code == 200
        assert (
            "access-control-allow-origin"
            not in (await api.get("/v1/agents", headers={**alice.headers, **ui})).headers
        )  # the rest of the API stays same-origin

        # The Web UI's way in: a cookie for /codec, set from the browser with an admin key.
        session = await api.post("/codec/session", headers=admin.headers)
        assert session.status_code == 204
        cookie = session.headers["set-cookie"]
        assert all(
            flag in cookie for flag in ("HttpOnly", "Secure", "Path=/codec", "SameSite=none")
        )
        by_cookie = {"Cookie": cookie.split(";")[0], **ui}
        api.cookies.clear()  # only what a browser would send: the explicit header below
        assert (await api.post("/codec/decode", json=body, headers=by_cookie)).status_code == 200
        alices_cookie = {"Cookie": f"keel_codec={alice.key}"}
        assert (
            await api.post("/codec/decode", json=body, headers=alices_cookie)
        ).status_code == 403
        assert (await api.post("/codec/session", headers=alice.headers)).status_code == 403

        refused = await api.post("/codec/decode", json=body, headers=alice.headers)
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        assert (await api.post("/codec/decode", json=body)).status_code == 401
        tampered = {
            "payloads": [{**body["payloads"][0], "data": body["payloads"][0]["data"][::-1]}]
        }
        bad = await api.post("/codec/decode", json=tampered, headers=admin.headers)
        assert bad.status_code == 422 and bad.json()["detail"].startswith("payloads:")

    async with serve_api(settings, database_url, temporal_address) as plain:
        off = await plain.post("/codec/decode", json=body, headers=admin.headers)
        assert off.status_code == 404 and "encryption is off" in off.json()["detail"]


def test_keel_prints_new_keys_and_refuses_malformed_ones_naming_the_setting() -> None:
    printed = subprocess.run(
        [str(Path(sys.executable).parent / "keel"), "encryption-key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert len(parse_keys(f"fresh:{printed}")["fresh"]) == 32
    for spec, message in [
        ("nocolon", "id:base64key"),
        ("k:not base64!", "not valid base64"),
        (f"k:{base64.b64encode(b'short').decode()}", "AES-256"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_keys(spec)
    with pytest.raises(ValueError, match="KEEL_ENCRYPTION_KEY_ID"):
        EncryptionCodec(parse_keys(f"old:{OLD_KEY}"), "missing")
