"""What every benchmark shares: the infrastructure it starts and stops (Temporal dev server,
embedded Postgres, the fake Messages API, a user), helper processes, a watchdog that bounds
the run, statistics, process sampling, an optional py-spy profile, and the report (a table
on stdout and JSON under bench/results/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHistory

from core.db import create_engine, migrate, session_factory, session_scope, start_embedded_postgres
from core.logging import configure_logging
from core.records import create_user
from core.temporal import connect_temporal
from tests.fake_anthropic import FakeAnthropic, Reply, ToolCall, text, tool_use
from workers.dev import TemporalDevServer

BENCH_DIR = Path(__file__).parent
RESULTS_DIR = BENCH_DIR / "results"
ROOT_DIR = BENCH_DIR.parent

# The cheap built-in tool every benchmark task asks for.
CHEAP_TOOL = "get_current_time"


def setup_logging() -> None:
    """Keel's logging pipeline, quiet: warnings and errors only, so the figures stay readable."""
    configure_logging("WARNING", "console")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- bounding a run ----------------------------------------------------------------------------

_cleanups: list[Callable[[], None]] = []


def on_abort(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Register what the watchdog must stop if the run overstays (child processes, servers).
    Returns a function that unregisters it."""
    _cleanups.append(cleanup)

    def unregister() -> None:
        with contextlib.suppress(ValueError):
            _cleanups.remove(cleanup)

    return unregister


def arm_watchdog(seconds: float) -> None:
    """Kill the run, and everything it started, if it has not ended after `seconds`: a
    benchmark always stops by itself, even if something it waits for never answers."""

    def fire() -> None:
        print(f"\nbench: over its {seconds:.0f} s limit; stopping everything", file=sys.stderr)
        for cleanup in reversed(_cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


# -- infrastructure ----------------------------------------------------------------------------


@dataclass
class Infra:
    """Everything a benchmark runs against, all on 127.0.0.1."""

    workdir: Path
    temporal_address: str
    client: Client
    database_url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    fake: FakeAnthropic
    temporal_pid: int
    postgres_pid: int

    async def new_user(self) -> tuple[str, str]:
        """A fresh user and their API key."""
        async with session_scope(self.sessions) as session:
            user, key = await create_user(session, f"bench-{uuid.uuid4().hex[:12]}")
        return user.id, key


def _stop_postgres(data_dir: Path) -> None:
    import pgserver

    with contextlib.suppress(Exception):
        pgserver.get_server(data_dir).cleanup()


def _postgres_pid(data_dir: Path) -> int:
    """The postmaster's PID, from the first line of postmaster.pid."""
    return int((data_dir / "postmaster.pid").read_text().split()[0])


@contextlib.asynccontextmanager
async def infrastructure(name: str) -> AsyncIterator[Infra]:
    """Start a Temporal dev server, embedded Postgres (migrated) and the fake Messages API in
    a fresh temporary directory; stop them all on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=f"keel-bench-{name}-"))
    temporal = TemporalDevServer(
        db_file=None, port=free_port(), ui_port=None, log_file=workdir / "temporal.log"
    )
    unregister_temporal = on_abort(temporal.stop)
    pg_dir = workdir / "pg"
    unregister_pg = on_abort(lambda: _stop_postgres(pg_dir.resolve()))
    try:
        await temporal.start()
        temporal_pid = _child_pid(temporal)
        client = await connect_temporal(temporal.address)
        url = await asyncio.to_thread(start_embedded_postgres, pg_dir)
        await asyncio.to_thread(migrate, url)
        engine = create_engine(url)
        try:
            with FakeAnthropic() as fake:
                yield Infra(
                    workdir=workdir,
                    temporal_address=temporal.address,
                    client=client,
                    database_url=url,
                    engine=engine,
                    sessions=session_factory(engine),
                    fake=fake,
                    temporal_pid=temporal_pid,
                    postgres_pid=_postgres_pid(pg_dir.resolve()),
                )
        finally:
            await engine.dispose()
    finally:
        temporal.stop()
        unregister_temporal()
        await asyncio.to_thread(_stop_postgres, pg_dir.resolve())
        unregister_pg()
        shutil.rmtree(workdir, ignore_errors=True)


def _child_pid(server: TemporalDevServer) -> int:
    """The dev server's PID (for CPU sampling); TemporalDevServer keeps its process private."""
    process: subprocess.Popen[bytes] | None = getattr(server, "_process", None)
    return process.pid if process is not None else 0


# -- the fake model's behaviour ----------------------------------------------------------------


def tool_results_in(body: dict[str, Any]) -> int:
    """How many tool results the request's conversation carries."""
    return sum(
        1
        for message in body.get("messages", [])
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    )


class ToolLoopModel:
    """A fake model that asks for `tool` (with `arguments`) until the conversation holds
    `tool_calls` results, then answers; every reply takes `latency` seconds. Replies depend
    only on the request, so any number of tasks can run at once."""

    def __init__(
        self,
        tool_calls: int,
        latency: float,
        tool: str = CHEAP_TOOL,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.tool_calls = tool_calls
        self.latency = latency
        self.tool = tool
        self.arguments = arguments or {}

    def __call__(self, body: dict[str, Any]) -> Reply:
        if tool_results_in(body) < self.tool_calls:
            return tool_use(ToolCall(self.tool, self.arguments), delay=self.latency)
        return text("All done.", delay=self.latency)


# -- helper processes --------------------------------------------------------------------------


class ChildProcess:
    """A bench helper (`python -m bench.serve ROLE CONFIG`) in a process of its own. It prints
    `READY <json>` when it serves, and stops when its standard input closes: when we stop it,
    and also when this process dies, so no helper outlives its benchmark."""

    def __init__(self, role: str, config: dict[str, Any], log_file: Path) -> None:
        self.role = role
        self._log = log_file.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.serve", role, json.dumps(config)],
            cwd=ROOT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._unregister = on_abort(self.kill)
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self, wait_seconds: float = 60.0) -> dict[str, Any]:
        """Wait for the READY line and return what it reports."""
        assert self.process.stdout is not None
        stdout = self.process.stdout
        line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), wait_seconds)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"bench helper {self.role} failed to start; see {self._log.name}")
        self.info = json.loads(line[len(b"READY ") :])
        return self.info

    async def stop(self, wait_seconds: float = 30.0) -> int:
        """Close its standard input, wait for it to finish, kill it if it does not."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            code = await asyncio.to_thread(self.process.wait, wait_seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        self._unregister()
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Count, mean, median, p90, p99 and max of a sample."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


# -- process sampling --------------------------------------------------------------------------


@dataclass
class ProcessUsage:
    name: str
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    last_rss_bytes: int = 0


CPU_WINDOW_SECONDS = 1.0


class ProcessSampler:
    """Samples the CPU time and RSS of named processes every `interval` seconds while it
    runs. CPU of the processes named in `with_children` includes their children's (Postgres
    serves each connection from a child process)."""

    def __init__(
        self, pids: dict[str, int], with_children: set[str] | None = None, interval: float = 0.1
    ) -> None:
        self._processes = {
            name: psutil.Process(pid)
            for name, pid in pids.items()
            if pid and psutil.pid_exists(pid)
        }
        self._with_children = with_children or set()
        self._interval = interval
        self._start_cpu: dict[str, float] = {}
        self.usage = {name: ProcessUsage(name) for name in self._processes}
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self.elapsed = 0.0
        # Cores busy per process in each CPU_WINDOW_SECONDS window: bursts that the
        # run's average hides.
        self.timeline: dict[str, list[float]] = {}

    def _members(self, name: str) -> list[psutil.Process]:
        process = self._processes[name]
        if name not in self._with_children:
            return [process]
        try:
            return [process, *process.children(recursive=True)]
        except psutil.Error:
            return []

    def _cpu(self, name: str) -> float:
        total = 0.0
        for process in self._members(name):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def _sample_rss(self) -> None:
        for name, process in self._processes.items():
            # The process itself: its children's RSS would count shared memory twice.
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            usage = self.usage[name]
            usage.last_rss_bytes = rss
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, rss)

    async def _run(self) -> None:
        window_start = time.monotonic()
        window_cpu = dict(self._start_cpu)
        while True:
            self._sample_rss()
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            if now - window_start >= CPU_WINDOW_SECONDS:
                for name in self._processes:
                    cpu = self._cpu(name)
                    busy = (cpu - window_cpu.get(name, cpu)) / (now - window_start)
                    self.timeline.setdefault(name, []).append(round(busy, 2))
                    window_cpu[name] = cpu
                window_start = now

    def start(self) -> None:
        self._started = time.monotonic()
        self._start_cpu = {name: self._cpu(name) for name in self._processes}
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, ProcessUsage]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample_rss()
        self.elapsed = time.monotonic() - self._started
        for name in self._processes:
            self.usage[name].cpu_seconds = self._cpu(name) - self._start_cpu.get(name, 0.0)
        return self.usage

    def cpu_table(self) -> dict[str, dict[str, Any]]:
        """CPU seconds and share of one core per process over the sampled window."""
        return {
            name: {
                "cpu_seconds": round(usage.cpu_seconds, 2),
                "cores_busy": round(usage.cpu_seconds / self.elapsed, 2) if self.elapsed else 0.0,
                "cores_busy_peak_window": max(self.timeline.get(name, [0.0])),
                "peak_rss_mb": round(usage.peak_rss_bytes / 2**20, 1),
                "cores_busy_timeline": self.timeline.get(name, []),
            }
            for name, usage in self.usage.items()
        }


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of the process's RSS (VmHWM), in bytes."""
    with Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# -- profiling ---------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy executable, if one is installed (PATH, or beside this Python)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profile:
    """`py-spy record` of one process for the rest of the run, summarised as the functions
    where samples were spent (self) and the frames they were under (inclusive)."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        executable = py_spy()
        if executable is None:
            raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
        self.output = output
        self._process = subprocess.Popen(
            [
                executable,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._unregister = on_abort(self._process.kill)

    async def stop(self) -> None:
        """Stop sampling (py-spy writes its output on SIGINT)."""
        self._process.send_signal(2)
        try:
            await asyncio.to_thread(self._process.wait, 30)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._unregister()

    def summarise(self, top: int = 15) -> dict[str, Any]:
        if not self.output.exists():
            return {"error": "py-spy wrote no profile"}
        self_samples: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        keel: Counter[str] = Counter()
        by_area: Counter[str] = Counter()
        total = 0
        for line in self.output.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            self_samples[_short_frame(frames[-1])] += count
            for frame in {_short_frame(f) for f in frames}:
                inclusive[frame] += count
            for frame in {_short_frame(f) for f in frames if _is_keel(f)}:
                keel[frame] += count
            by_area[_area(frames)] += count

        def share(counter: Counter[str]) -> list[tuple[str, float]]:
            return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

        return {
            "samples": total,
            "by_area_percent": share(by_area),
            "self_percent": share(self_samples),
            "inclusive_percent": share(inclusive),
            "keel_inclusive_percent": share(keel),
        }


def profile_file(name: str) -> Path:
    """Where a raw py-spy profile goes: beside the JSON results, for flamegraphs later."""
    RESULTS_DIR.mkdir(exist_ok=True)
    return RESULTS_DIR / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.pyspy.txt"


def print_profile(profile: dict[str, Any], what: str) -> None:
    """Print a `Profile.summarise()` result: CPU by area, then the hottest functions."""
    print(f"\npy-spy: {profile.get('samples', 0)} samples of {what}")
    sections = (
        ("by area", "by_area_percent"),
        ("self time", "self_percent"),
        ("Keel's functions, inclusive", "keel_inclusive_percent"),
    )
    for title, key in sections:
        print(f"  {title}:")
        for name, share in profile.get(key, []):
            print(f"    {share:5.1f}%  {name}")


def _frame_path(frame: str) -> str:
    """The file of a py-spy frame, with a leading slash (py-spy shortens paths)."""
    return "/" + frame.partition(" (")[2].lstrip("/")


def _is_keel(frame: str) -> bool:
    path = _frame_path(frame)
    return "site-packages" not in path and any(
        f"/{package}/" in path for package in ("activities", "workflows", "api", "core")
    )


def _short_frame(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `function (module.py)`."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(file).parts[-2:])})"


# Where a sample's CPU went, by the innermost frame that belongs to a known area.
_AREAS = (
    ("keel activities", ("/activities/",)),
    ("keel api", ("/api/",)),
    ("keel workflows (in the sandbox)", ("/workflows/",)),
    ("sqlalchemy/psycopg", ("sqlalchemy", "psycopg", "sqlmodel")),
    ("anthropic sdk/httpx", ("anthropic", "httpx", "httpcore")),
    ("h11/anyio (HTTP protocol, streams)", ("h11", "anyio")),
    ("temporal workflow sandbox", ("temporalio/worker/workflow_sandbox",)),
    ("temporal worker", ("temporalio/worker",)),
    ("temporal client/converter", ("temporalio",)),
    ("pydantic", ("pydantic",)),
    ("fastapi/starlette/uvicorn", ("fastapi", "starlette", "uvicorn")),
    ("structlog/logging", ("structlog", "logging")),
    ("asyncio", ("asyncio",)),
)


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = _frame_path(frame)
        for area, markers in _AREAS:
            if any(marker in path for marker in markers):
                return area
    return "other"


# -- the report --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a benchmark's table: a figure, its value for Keel and for each baseline
    (in the table's column order), the target and whether Keel met it."""

    figure: str
    values: list[float | None]
    unit: str = ""
    target: str = ""
    passed: bool | None = None

    def cells(self) -> list[str]:
        verdict = {True: "pass", False: "FAIL", None: ""}[self.passed]
        return [
            self.figure,
            *(_fmt(value, self.unit) for value in self.values),
            self.target,
            verdict,
        ]


def _fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f} {unit}".strip()
    if abs(value) >= 10:
        return f"{value:.1f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


@dataclass
class Table:
    """Rows under `figure | <columns> | target | result`."""

    title: str
    columns: list[str]
    rows: list[Row]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row.values) != len(self.columns):
                raise ValueError(
                    f"row {row.figure!r} has {len(row.values)} values for {len(self.columns)} columns"
                )

    def print(self) -> None:
        header = ["figure", *self.columns, "target", "result"]
        lines = [header, *(row.cells() for row in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        print(f"\n{self.title}")
        for index, line in enumerate(lines):
            cells = zip(line, widths, strict=True)
            print("  " + "  ".join(cell.ljust(width) for cell, width in cells).rstrip())
            if index == 0:
                print("  " + "  ".join("-" * width for width in widths))

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rows": [
                {
                    "figure": row.figure,
                    **dict(zip(self.columns, row.values, strict=True)),
                    "unit": row.unit,
                    "target": row.target,
                    "passed": row.passed,
                }
                for row in self.rows
            ],
        }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def environment() -> dict[str, Any]:
    import temporalio

    return {
        "python": platform.python_version(),
        "temporalio": temporalio.__version__,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", ".", ":!bench")),
    }


@dataclass
class Report:
    """A benchmark's results: its tables (the first holds the targets) and the detail that
    backs them."""

    benchmark: str
    config: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def print(self) -> None:
        for table in self.tables:
            table.print()

    def write(self) -> Path:
        """Write the results as JSON under bench/results/ and return the file."""
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"{self.benchmark}-{stamp}.json"
        document = {
            "benchmark": self.benchmark,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "environment": environment(),
            "config": self.config,
            "tables": [table.as_json() for table in self.tables],
            "detail": self.detail,
        }
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        return path


# -- Temporal history --------------------------------------------------------------------------


def history_size(history: WorkflowHistory) -> dict[str, int]:
    """Events and serialized bytes of one workflow run's history."""
    return {
        "events": len(history.events),
        "bytes": History(events=history.events).ByteSize(),
    }


_WORKFLOW_TASK_ENDS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow_task_completed_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: "workflow_task_failed_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: "workflow_task_timed_out_event_attributes",
}
_ACTIVITY_ENDS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def history_timings(history: WorkflowHistory) -> dict[str, Any]:
    """Where a run's time went, from its history's timestamps: per activity type and for
    workflow tasks, how many, milliseconds queued (scheduled -> started) and running
    (started -> closed) in total, and the run's whole span."""
    scheduled: dict[int, tuple[str, float]] = {}
    started: dict[int, float] = {}
    kinds: dict[str, dict[str, float]] = {}
    events = history.events
    for event in events:
        at = event.event_time.ToMicroseconds() / 1000
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled[event.event_id] = ("workflow task", at)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, at)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started[event.workflow_task_started_event_attributes.scheduled_event_id] = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[event.activity_task_started_event_attributes.scheduled_event_id] = at
        elif kind in _WORKFLOW_TASK_ENDS or kind in _ACTIVITY_ENDS:
            attributes = getattr(event, {**_WORKFLOW_TASK_ENDS, **_ACTIVITY_ENDS}[kind])
            scheduled_id = attributes.scheduled_event_id
            if scheduled_id not in scheduled:
                continue
            name, scheduled_at = scheduled[scheduled_id]
            started_at = started.get(scheduled_id, scheduled_at)
            totals = kinds.setdefault(name, {"count": 0, "queued_ms": 0.0, "running_ms": 0.0})
            totals["count"] += 1
            totals["queued_ms"] += started_at - scheduled_at
            totals["running_ms"] += at - started_at
    span = 0.0
    if events:
        span = (
            events[-1].event_time.ToMicroseconds() - events[0].event_time.ToMicroseconds()
        ) / 1000
    return {"span_ms": span, "events": len(events), "by_kind": kinds}


# -- SQL accounting ----------------------------------------------------------------------------


class SqlCounter:
    """Counts what an engine does (statements, commits, pool checkouts) and the seconds spent
    executing statements, through SQLAlchemy's event hooks: no change to Keel's code."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements = 0
        self.commits = 0
        self.checkouts = 0
        self.execute_seconds = 0.0
        self._started: dict[int, float] = {}
        sync_engine = engine.sync_engine
        sa_event.listen(sync_engine, "before_cursor_execute", self._before)
        sa_event.listen(sync_engine, "after_cursor_execute", self._after)
        sa_event.listen(sync_engine, "commit", self._commit)
        sa_event.listen(sync_engine.pool, "checkout", self._checkout)

    def _before(self, _conn: Any, cursor: Any, *_args: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, _conn: Any, cursor: Any, *_args: Any) -> None:
        started = self._started.pop(id(cursor), None)
        self.statements += 1
        if started is not None:
            self.execute_seconds += time.perf_counter() - started

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def _checkout(self, *_args: Any) -> None:
        self.checkouts += 1

    def snapshot(self) -> dict[str, float]:
        return {
            "statements": self.statements,
            "commits": self.commits,
            "checkouts": self.checkouts,
            "execute_ms": self.execute_seconds * 1000,
        }
