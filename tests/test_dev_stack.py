"""`keel dev` as a new user runs it: a real subprocess with its own Temporal dev server,
embedded Postgres, worker and API, Claude pointed at the fake through ANTHROPIC_BASE_URL."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.encryption import generate_key
from tests.conftest import free_port
from tests.fake_anthropic import FakeAnthropic, ToolCall, hang, text, tool_use
from workers.dev import ensure_port_free

KEEL = str(Path(sys.executable).parent / "keel")
TEMPORAL = str(Path(sys.executable).parent / "temporal")


class DevStack:
    """One `keel dev` process group, started and stopped like a user would."""

    def __init__(self, home: Path, fake_claude: FakeAnthropic) -> None:
        self.api_port, self.temporal_port, self.ui_port = free_port(), free_port(), free_port()
        self.metrics_port = free_port()
        self.log = home / "dev.log"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KEEL_", "TEMPORAL_", "ANTHROPIC_"))
        } | {
            "KEEL_HOME": str(home / ".keel"),
            "KEEL_API_PORT": str(self.api_port),
            "KEEL_TEMPORAL_PORT": str(self.temporal_port),
            "KEEL_TEMPORAL_UI_PORT": str(self.ui_port),
            "KEEL_WORKER_METRICS_PORT": str(self.metrics_port),
            "KEEL_LOG_FORMAT": "json",
            "ANTHROPIC_API_KEY": "sk-ant-test-secret",
            "ANTHROPIC_BASE_URL": fake_claude.base_url,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        with self.log.open("ab") as output:
            # A session of its own, so the test can kill the whole group as a terminal would.
            self.process = subprocess.Popen(
                [KEEL, "dev"], env=self.env, stdout=output, stderr=output, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"keel dev did not become ready:\n{self.log.read_text()[-3000:]}")

    def kill_group(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def keel(self, *args: str) -> str:
        done = subprocess.run(
            [KEEL, *args], env=self.env, capture_output=True, text=True, check=True, timeout=120
        )
        return done.stdout


@pytest.fixture
def stack(tmp_path: Path, fake_claude: FakeAnthropic) -> Iterator[DevStack]:
    dev = DevStack(tmp_path, fake_claude)
    yield dev
    if dev.process is not None and dev.process.poll() is None:
        dev.kill_group()
    # Embedded Postgres runs detached from keel dev; stop it if the test killed the stack.
    postmaster = tmp_path / ".keel" / "pg" / "postmaster.pid"
    if postmaster.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(postmaster.read_text().split()[0]), signal.SIGTERM)


def wait_for_status(stack: DevStack, task_id: str, key: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, object] = httpx.get(
            f"{stack.url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} did not finish: {body}")


def test_dev_stack_survives_being_killed_mid_task(
    stack: DevStack, fake_claude: FakeAnthropic
) -> None:
    stack.start()
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{stack.ui_port}/").status_code == 200  # the Web UI
    key = stack.keel("users", "create", "alice").strip().splitlines()[-1]
    assert key.startswith("keel_")

    fake_claude.script(
        tool_use(ToolCall("notes_write", {"path": "plan.md", "content": "ship it"})),
        hang(120),  # the second Claude call is in flight when everything is killed
        text("Saved your plan."),
    )
    created = httpx.post(
        f"{stack.url}/v1/tasks",
        json={"prompt": "Save my plan"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert created.status_code == 202
    task_id = created.json()["id"]
    deadline = time.monotonic() + 30
    while len(fake_claude.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(fake_claude.requests) == 2

    stack.kill_group()
    stack.start()
    task = wait_for_status(stack, task_id, key, timeout=120)
    assert task["status"] == "completed"
    assert task["result"] == {"text": "Saved your plan."}
    # The worker's metrics endpoint (on by default in keel dev) saw the restarted task's tool
    # and Claude calls; the API's saw its requests.
    worker_metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert 'keel_llm_calls{activity_type="call_model"' in worker_metrics
    assert "temporal_workflow_completed{" in worker_metrics
    api_metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'keel_http_requests_total{method="GET",route="/v1/tasks/{task_id}",status="200"}' in (
        api_metrics
    )

    listed = subprocess.run(
        [
            TEMPORAL,
            "workflow",
            "list",
            "--address",
            f"127.0.0.1:{stack.temporal_port}",
            "--query",
            "KeelUserId IS NOT NULL",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"task-{task_id}" in listed

    assert stack.terminate() == 0
    logs = stack.log.read_text()
    assert key not in logs and "sk-ant-test-secret" not in logs
    ensure_port_free("127.0.0.1", stack.temporal_port, "Temporal")  # it went down with keel dev


def test_dev_refuses_a_taken_port(stack: DevStack) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.api_port))
        squatter.listen()
        done = subprocess.run([KEEL, "dev"], env=stack.env, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"port {stack.api_port} (Keel API) is already taken" in done.stderr


def test_dev_with_encryption_keeps_prompts_out_of_temporal(
    stack: DevStack, fake_claude: FakeAnthropic
) -> None:
    stack.env |= {
        "KEEL_ENCRYPTION_KEYS": f"k1:{generate_key()}",
        "KEEL_ENCRYPTION_KEY_ID": "k1",
    }
    stack.start()
    admin_key = stack.keel("users", "create", "root", "--admin").strip().splitlines()[-1]
    fake_claude.script(text("Ask Henrietta Vasquez-Oyelaran."))
    created = httpx.post(
        f"{stack.url}/v1/tasks",
        json={"prompt": "Who plans the Zanzibar offsite?"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    task = wait_for_status(stack, created.json()["id"], admin_key, timeout=60)
    assert (task["prompt"], task["result"]) == (
        "Who plans the Zanzibar offsite?",
        {"text": "Ask Henrietta Vasquez-Oyelaran."},
    )

    show = [TEMPORAL, "workflow", "show", "--address", f"127.0.0.1:{stack.temporal_port}"]
    show += ["--workflow-id", f"task-{task['id']}", "--detailed"]
    encrypted = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    assert "Zanzibar" not in encrypted and "Henrietta" not in encrypted

    # Operators: the CLI with an admin key, and the Web UI, which keel dev points at the API.
    codec = ["--codec-endpoint", f"{stack.url}/codec", "--codec-auth", f"Bearer {admin_key}"]
    decoded = subprocess.run(show + codec, capture_output=True, text=True, check=True).stdout
    assert "input[0].prompt: Who plans the Zanzibar offsite?" in decoded
    assert "Henrietta" in decoded
    ui_settings = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/v1/settings").json()
    assert ui_settings["Codec"]["Endpoint"] == f"http://localhost:{stack.api_port}/codec"
    assert stack.terminate() == 0
