"""API keys: the owner lists, creates and revokes them over REST; an operator with
`keel keys`. A revoked key is refused at once."""

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import MakeAccount

KEEL = str(Path(sys.executable).parent / "keel")


async def test_owner_lists_creates_and_revokes_keys(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    alice = await make_account()
    created = await api.post("/v1/me/keys", json={"name": "laptop"}, headers=alice.headers)
    assert created.status_code == 201, created.text
    laptop = created.json()
    assert laptop["key"].startswith(laptop["prefix"]) and laptop["name"] == "laptop"
    laptop_headers = {"Authorization": f"Bearer {laptop['key']}"}
    assert (await api.get("/v1/tasks", headers=laptop_headers)).status_code == 200

    listed = await api.get("/v1/me/keys", headers=alice.headers)
    assert listed.status_code == 200
    keys = listed.json()
    assert [key["name"] for key in keys] == ["", "laptop"]
    assert alice.key not in listed.text and laptop["key"] not in listed.text  # never a secret
    assert all("key" not in key and "key_hash" not in key for key in keys)
    assert all(key["last_used_at"] is not None for key in keys)  # both have been used
    first_key_id = keys[0]["id"]

    revoked = await api.delete(f"/v1/me/keys/{laptop['id']}", headers=alice.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert revoked.json()["revoked_current_key"] is False
    refused = await api.get("/v1/tasks", headers=laptop_headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    again = await api.delete(f"/v1/me/keys/{laptop['id']}", headers=alice.headers)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]

    # Revoking the key the request uses is allowed, and the answer says so.
    own = await api.delete(f"/v1/me/keys/{first_key_id}", headers=alice.headers)
    assert own.status_code == 200
    assert own.json()["revoked_current_key"] is True
    assert "this request used" in own.json()["detail"]
    assert (await api.get("/v1/me/keys", headers=alice.headers)).status_code == 401


def keel(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_LOG_LEVEL": "WARNING"}
    return subprocess.run([KEEL, *args], env=env, capture_output=True, text=True, timeout=120)


async def test_keel_keys_lists_creates_and_revokes(
    api: httpx.AsyncClient, make_account: MakeAccount, database_url: str
) -> None:
    alice, bob = await make_account(), await make_account()

    created = keel(database_url, "keys", "create", "--user", alice.name, "--name", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    ci_headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.get("/v1/tasks", headers=ci_headers)).status_code == 200

    listed = keel(database_url, "keys", "list", "--user", alice.name)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 and all(alice.name in line for line in lines)
    assert secret not in listed.stdout and bob.name not in listed.stdout
    ci_key_id = next(line.split()[0] for line in lines if " ci " in line)

    revoked = keel(database_url, "keys", "revoke", ci_key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert (await api.get("/v1/tasks", headers=ci_headers)).status_code == 401
    assert "revoked" in keel(database_url, "keys", "list", "--user", alice.name).stdout

    unknown = keel(database_url, "keys", "revoke", "no-such-key")
    assert unknown.returncode == 1 and "no API key" in unknown.stderr
