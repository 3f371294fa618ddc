"""Helper processes for the benchmarks, so what is measured runs apart from the load
generator: `python -m bench.serve ROLE CONFIG_JSON`, started by `bench.common.ChildProcess`.

Roles:
- `worker`: Keel's real worker (`workers.worker.build_worker`), optionally with Temporal
  Worker options and a Postgres pool that Keel does not make configurable yet, timing every
  activity and sampling its event loop and database pool. Writes what it saw to
  `stats_file` when it stops.
- `bare-worker`: the same, for `bench.bare_agent.BareAgentWorkflow` (no Postgres).
- `api`: Keel's real API (`workers.api_server.run_api`) on `api_port`.
- `fake`: the fake Messages API answering as `bench.common.ToolLoopModel`, so the process
  that measures is not also the one serving the model.

Each prints `READY <json>` once it serves, and stops when its standard input closes (or at
`deadline_seconds`), so none outlives the benchmark that started it."""

import asyncio
import contextlib
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import temporalio.bridge.worker
import uvloop
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    PollerBehaviorSimpleMaximum,
    Worker,
)

from activities.builtin_tools import builtin_registry
from bench.bare_agent import BareActivities, BareAgentWorkflow
from bench.common import CHEAP_TOOL, ToolLoopModel, setup_logging, summary
from bench.parked import ParkedWorkflow
from core.db import create_engine, session_factory
from core.settings import Settings
from core.temporal import connect_temporal
from tests.fake_anthropic import FakeAnthropic
from workers.api_server import run_api
from workers.heap import freeze_startup_heap
from workers.worker import build_worker


def _stop_on_stdin_close(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` when standard input reaches EOF: the benchmark closed it, or died."""

    def wait() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait, daemon=True).start()


def _ready(info: dict[str, Any]) -> None:
    """Report READY on standard output, then point standard output at the log (standard
    error). The benchmark reads only this line: anything written to the pipe after it, such
    as the Temporal core's warnings, would fill it, and the next write would block the
    writing thread for good (a worker whose core blocked so stopped polling, and its tasks
    stalled)."""
    sys.stdout.write(f"READY {json.dumps(info)}\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


async def _until_stopped(stop: asyncio.Event, deadline_seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), deadline_seconds)


# -- worker ------------------------------------------------------------------------------------


class ActivityStats:
    """Per activity type: seconds from scheduled to its code running, and of that, from the
    server handing it to the worker (where its heartbeat clock starts) to its code running;
    seconds running; attempts that were retries; and how many ran at once."""

    def __init__(self) -> None:
        self.queued: dict[str, list[float]] = {}
        self.handed_over: dict[str, list[float]] = {}
        self.running: dict[str, list[float]] = {}
        self.retries: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def begin(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, info: activity.Info, entered: float, running: float) -> None:
        kind = info.activity_type
        self.in_flight -= 1
        self.queued.setdefault(kind, []).append(
            entered - info.current_attempt_scheduled_time.timestamp()
        )
        self.handed_over.setdefault(kind, []).append(entered - info.started_time.timestamp())
        self.running.setdefault(kind, []).append(running)
        self.retries[kind] = self.retries.get(kind, 0) + (info.attempt > 1)

    def report(self) -> dict[str, Any]:
        return {
            "max_in_flight": self.max_in_flight,
            "queued_seconds": {kind: summary(values) for kind, values in self.queued.items()},
            "handed_over_seconds": {
                kind: summary(values) for kind, values in self.handed_over.items()
            },
            "running_seconds": {kind: summary(values) for kind, values in self.running.items()},
            "retries": self.retries,
        }


class _TimedActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, stats: ActivityStats) -> None:
        super().__init__(next)
        self._stats = stats

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        entered = time.time()
        self._stats.begin()
        started = time.perf_counter()
        try:
            return await super().execute_activity(input)
        finally:
            self._stats.end(info, entered, time.perf_counter() - started)


class TimingInterceptor(Interceptor):
    def __init__(self, stats: ActivityStats) -> None:
        self.stats = stats

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TimedActivity(next, self.stats)


class BridgeTimings:
    """Timings at the boundary between the Python SDK and Temporal's core, by wrapping the
    bridge worker's calls in this process: how long each workflow activation spends in
    Python (handed over by the core -> completion handed back), and how long the core takes
    to accept a workflow or activity completion (it reports to the Temporal server first)."""

    def __init__(self) -> None:
        self.activation_in_python: list[float] = []
        self.complete_workflow_activation: list[float] = []
        self.complete_activity_task: list[float] = []

    def install(self) -> None:
        bridge = temporalio.bridge.worker.Worker
        poll_activation = bridge.poll_workflow_activation
        complete_activation = bridge.complete_workflow_activation
        complete_activity = bridge.complete_activity_task
        handed_over: dict[str, float] = {}

        async def timed_poll_activation(worker: Any) -> Any:
            activation = await poll_activation(worker)
            handed_over[activation.run_id] = time.perf_counter()
            return activation

        async def timed_complete_activation(worker: Any, completion: Any) -> None:
            started = time.perf_counter()
            polled = handed_over.pop(completion.run_id, None)
            if polled is not None:
                self.activation_in_python.append(started - polled)
            await complete_activation(worker, completion)
            self.complete_workflow_activation.append(time.perf_counter() - started)

        async def timed_complete_activity(worker: Any, completion: Any) -> None:
            started = time.perf_counter()
            await complete_activity(worker, completion)
            self.complete_activity_task.append(time.perf_counter() - started)

        bridge.poll_workflow_activation = timed_poll_activation  # type: ignore[method-assign,assignment]
        bridge.complete_workflow_activation = timed_complete_activation  # type: ignore[method-assign,assignment]
        bridge.complete_activity_task = timed_complete_activity  # type: ignore[method-assign,assignment]

    def report(self) -> dict[str, Any]:
        return {
            "activation_in_python_seconds": summary(self.activation_in_python),
            "complete_workflow_activation_seconds": summary(self.complete_workflow_activation),
            "complete_activity_task_seconds": summary(self.complete_activity_task),
        }


class Sampler:
    """Every `interval`: how late the event loop wakes up, and how many pool connections
    are checked out."""

    def __init__(self, engine: AsyncEngine | None, pool_limit: int, interval: float = 0.02) -> None:
        self._engine = engine
        self._pool_limit = pool_limit
        self._interval = interval
        self.lag: list[float] = []
        self.checked_out: list[int] = []

    async def run(self) -> None:
        pool = self._engine.sync_engine.pool if self._engine is not None else None
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self._interval)
            self.lag.append(time.perf_counter() - before - self._interval)
            if pool is not None:
                self.checked_out.append(pool.checkedout())  # type: ignore[attr-defined]

    def report(self) -> dict[str, Any]:
        busy = [count for count in self.checked_out if count > 0]
        saturated = sum(1 for count in self.checked_out if count >= self._pool_limit)
        return {
            "loop_lag_seconds": summary(self.lag),
            "pool_limit": self._pool_limit,
            "pool_max_checked_out": max(self.checked_out, default=0),
            "pool_saturated_share": saturated / len(busy) if busy else 0.0,
        }


def worker_options(config: dict[str, Any], stats: ActivityStats) -> dict[str, Any]:
    """Temporal Worker options beyond Keel's own, from the benchmark's settings."""
    options: dict[str, Any] = {"interceptors": [TimingInterceptor(stats)]}
    for name in (
        "max_concurrent_activities",
        "max_concurrent_workflow_tasks",
        "max_cached_workflows",
    ):
        if config.get(name) is not None:
            options[name] = config[name]
    if config.get("workflow_task_polls") is not None:
        options["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(
            config["workflow_task_polls"]
        )
    if config.get("activity_task_polls") is not None:
        options["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(
            config["activity_task_polls"]
        )
    return options


def database_engine(config: dict[str, Any]) -> tuple[AsyncEngine, int]:
    """Keel's engine (`core.db.create_engine`), or the same with another pool size."""
    sizes = {"pool_size": config.get("db_pool_size"), "max_overflow": config.get("db_max_overflow")}
    engine = create_engine(
        config["database_url"], **{key: value for key, value in sizes.items() if value is not None}
    )
    pool = engine.sync_engine.pool
    return engine, pool.size() + pool._max_overflow  # type: ignore[attr-defined]


async def serve_worker(config: dict[str, Any], stop: asyncio.Event) -> None:
    """Keel's worker, or with `bare` the bare-temporalio baseline's."""
    bare = config.get("bare", False)
    engine, pool_limit = (None, 0) if bare else database_engine(config)
    client = await connect_temporal(config["temporal_address"])
    claude = anthropic.AsyncAnthropic(
        api_key="bench", base_url=config["anthropic_base_url"], max_retries=0
    )
    stats = ActivityStats()
    sampler = Sampler(engine, pool_limit)
    bridge = BridgeTimings()
    bridge.install()
    options = worker_options(config, stats)
    if engine is None:
        activities = BareActivities(claude, builtin_registry())
        defaults = Settings()  # the same limits as Keel's worker, unless the run sets others
        worker = Worker(
            client,
            task_queue=config["task_queue"],
            workflows=[BareAgentWorkflow],
            activities=[activities.call_model, activities.run_tool],
            **{
                "max_concurrent_activities": defaults.worker_max_activities,
                "max_cached_workflows": defaults.worker_max_cached_workflows,
                **options,
            },
        )
    else:
        settings = Settings(task_queue=config["task_queue"], database_url=config["database_url"])
        worker = build_worker(client, settings, session_factory(engine), claude, **options)
        freeze_startup_heap()  # as `workers.worker.run_worker` does
    sampling = asyncio.create_task(sampler.run())
    async with worker:
        _ready({"task_queue": config["task_queue"]})
        await _until_stopped(stop, config["deadline_seconds"])
    sampling.cancel()
    await claude.close()
    if engine is not None:
        await engine.dispose()
    report = {
        "activities": stats.report(),
        "bridge": bridge.report(),
        **sampler.report(),
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    await asyncio.to_thread(Path(config["stats_file"]).write_text, json.dumps(report))


# -- api ---------------------------------------------------------------------------------------


async def serve_api(config: dict[str, Any], stop: asyncio.Event) -> None:
    settings = Settings(
        task_queue=config["task_queue"],
        database_url=config["database_url"],
        api_host="127.0.0.1",
        api_port=config["api_port"],
        # One key sends every request and starts every task: limits so high they never bite,
        # while their cost (the counted key lookup, the task count) is still measured.
        rate_limit_per_minute=10**9,
        max_running_tasks_per_user=10**9,
    )
    serving = asyncio.create_task(
        run_api(settings, config["database_url"], stop, config["temporal_address"])
    )
    base_url = f"http://127.0.0.1:{config['api_port']}"
    async with httpx.AsyncClient(base_url=base_url) as http:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
    _ready({"base_url": base_url})
    await _until_stopped(stop, config["deadline_seconds"])
    stop.set()
    await serving


# -- fake --------------------------------------------------------------------------------------


async def serve_fake(config: dict[str, Any], stop: asyncio.Event) -> None:
    with FakeAnthropic() as fake:
        fake.respond_with(
            ToolLoopModel(
                config["tool_calls"],
                config["latency"],
                config.get("tool", CHEAP_TOOL),
                config.get("arguments"),
            )
        )
        _ready({"base_url": fake.base_url})
        await _until_stopped(stop, config["deadline_seconds"])


async def serve_parked(config: dict[str, Any], stop: asyncio.Event) -> None:
    """A worker for `bench.parked.ParkedWorkflow` alone: the approvals benchmark's baseline."""
    client = await connect_temporal(config["temporal_address"])
    async with Worker(client, task_queue=config["task_queue"], workflows=[ParkedWorkflow]):
        _ready({"task_queue": config["task_queue"]})
        await _until_stopped(stop, config["deadline_seconds"])


ROLES = {"worker": serve_worker, "api": serve_api, "fake": serve_fake, "parked": serve_parked}


async def serve(role: str, config: dict[str, Any]) -> None:
    stop = asyncio.Event()
    _stop_on_stdin_close(asyncio.get_running_loop(), stop)
    await ROLES[role](config, stop)


def main() -> None:
    role, config = sys.argv[1], json.loads(sys.argv[2])
    setup_logging()
    # The event loop of Keel's processes (`keel worker`, `keel api`), for bare temporalio too.
    uvloop.run(serve(role, config))


if __name__ == "__main__":
    main()
