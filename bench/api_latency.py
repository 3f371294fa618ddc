"""API latency: Keel's real FastAPI app under 50 concurrent clients.

The API (`workers.api_server.run_api`, uvicorn on 127.0.0.1) and Keel's worker each run in a
process of their own, over a Temporal dev server, embedded Postgres and the fake Messages API
(tasks of --steps steps, --model-latency seconds a reply, so they are still running while
they are read). --clients httpx clients, each with its own connection, send requests one
after another:

1. `GET /healthz`, the baseline: the same server, no database, no Temporal;
2. `POST /v1/tasks` (each starts a real task);
3. `GET /v1/tasks/{id}` while those tasks run (live progress);
4. `GET /v1/tasks/{id}` once they have finished (the Postgres projection).

Each is also measured with a single client, which shows the service time without queueing.
Run: `.venv/bin/python -m bench.api_latency [--clients 50 --requests 20]`.
"""

import argparse
import asyncio
import os
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from bench.common import (
    RESULTS_DIR,
    ChildProcess,
    Infra,
    ProcessSampler,
    Profile,
    Report,
    Row,
    Table,
    arm_watchdog,
    free_port,
    infrastructure,
    print_profile,
    profile_file,
    setup_logging,
    summary,
)
from schemas.agent_task import StartAgentTaskInput
from workflows.agent_task import AgentTaskWorkflow

TARGET_POST_P99_MS = 100
TARGET_GET_P99_MS = 50
SINGLE_CLIENT_REQUESTS = 30
WARMUP_REQUESTS = 20
QUERY_LIMIT_SECONDS = 10

Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass
class Phase:
    """One endpoint under one load: latencies, statuses, throughput, CPU per process."""

    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ms(self, q: str) -> float | None:
        value = summary(self.latencies).get(q)
        return value * 1000 if value is not None else None

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 400)

    def as_json(self) -> dict[str, Any]:
        return {
            "latency_seconds": summary(self.latencies),
            "statuses": dict(self.statuses),
            "tags": dict(self.tags),
            "seconds": self.seconds,
            "requests_per_second": self.throughput,
            "cpu": self.cpu,
        }


class Load:
    """Runs phases: `clients` concurrent httpx clients, `requests` each, one at a time."""

    def __init__(self, base_url: str, keys: list[str], pids: dict[str, int]) -> None:
        self._base_url = base_url
        self._keys = keys
        self._pids = pids

    def client(self, number: int = 0) -> httpx.AsyncClient:
        """Client `number`, with the API key of user `number` modulo the users."""
        key = self._keys[number % len(self._keys)]
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.AsyncClient(base_url=self._base_url, headers=headers, timeout=60)

    async def run(
        self,
        name: str,
        request: Request,
        clients: int,
        requests: int,
        tag: Callable[[httpx.Response], str] | None = None,
        interval: float = 0.0,
    ) -> Phase:
        """With `interval`, each client sends a request every `interval` seconds (at once
        when the last one took longer), from a random offset, as polling clients do;
        without it, each sends the next as soon as the last is answered."""
        phase = Phase(name)
        pool = [self.client(number) for number in range(clients)]
        try:
            # Open every connection first, so the phase measures requests, not handshakes.
            await asyncio.gather(*(client.get("/healthz") for client in pool))

            async def one_client(client: httpx.AsyncClient, number: int) -> None:
                due = time.perf_counter() + random.uniform(0, interval)
                for index in range(requests):
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += interval
                    started = time.perf_counter()
                    response = await request(client, number * requests + index)
                    phase.latencies.append(time.perf_counter() - started)
                    phase.statuses[response.status_code] += 1
                    if tag is not None:
                        phase.tags[tag(response)] += 1

            await self._timed(phase, [one_client(client, n) for n, client in enumerate(pool)])
        finally:
            await asyncio.gather(*(client.aclose() for client in pool))
        return phase

    async def run_calls(
        self, name: str, call: Callable[[int], Awaitable[Any]], concurrency: int, requests: int
    ) -> Phase:
        """The same, for calls made directly (no HTTP): `call(index)` is timed, and what it
        returns (if anything) counted as a tag."""
        phase = Phase(name)

        async def one_caller(number: int) -> None:
            for index in range(requests):
                started = time.perf_counter()
                outcome = await call(number * requests + index)
                phase.latencies.append(time.perf_counter() - started)
                if outcome is not None:
                    phase.tags[str(outcome)] += 1

        await self._timed(phase, [one_caller(n) for n in range(concurrency)])
        return phase

    async def _timed(self, phase: Phase, callers: list[Awaitable[None]]) -> None:
        sampler = ProcessSampler(self._pids, with_children={"postgres"})
        sampler.start()
        started = time.perf_counter()
        await asyncio.gather(*callers)
        phase.seconds = time.perf_counter() - started
        await sampler.stop()
        phase.cpu = {
            name: {"cores_busy": figures["cores_busy"]}
            for name, figures in sampler.cpu_table().items()
        }


def task_status(response: httpx.Response) -> str:
    if response.status_code != 200:
        return f"http {response.status_code}"
    status: str = response.json().get("status", "?")
    return status


async def wait_until_closed(infra: Infra, task_queue: str, count: int, limit: float) -> int:
    """Wait (at most `limit` seconds) until `count` workflows on the queue have closed;
    return how many have."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'"
    deadline = time.perf_counter() + limit
    closed = 0
    while time.perf_counter() < deadline:
        closed = (await infra.client.count_workflows(query)).count
        if closed >= count:
            break
        await asyncio.sleep(0.5)
    return closed


async def describe_open(infra: Infra, task_queue: str, limit: int = 3) -> list[dict[str, Any]]:
    """What a few still-open tasks are waiting for: pending activities and workflow task."""
    described = []
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    async for execution in infra.client.list_workflows(query, limit=limit):
        raw = (await infra.client.get_workflow_handle(execution.id).describe()).raw_description
        described.append(
            {
                "id": execution.id,
                "history_length": raw.workflow_execution_info.history_length,
                "pending_workflow_task": str(raw.pending_workflow_task),
                "pending_activities": [str(activity) for activity in raw.pending_activities],
            }
        )
    return described


async def measure(args: argparse.Namespace) -> Report:
    phases: dict[str, Phase] = {}
    async with infrastructure("api-latency") as infra:
        task_queue = f"bench-api-{uuid.uuid4().hex[:8]}"
        fake = ChildProcess(
            "fake",
            {
                "tool_calls": args.steps - 1,
                "latency": args.model_latency,
                "deadline_seconds": args.timeout,
            },
            infra.workdir / "fake.log",
        )
        worker: ChildProcess | None = None
        api: ChildProcess | None = None
        try:
            fake_url = (await fake.ready())["base_url"]
            worker = ChildProcess(
                "worker",
                {
                    "temporal_address": infra.temporal_address,
                    "database_url": infra.database_url,
                    "anthropic_base_url": fake_url,
                    "task_queue": task_queue,
                    "stats_file": str(infra.workdir / "worker-stats.json"),
                    "deadline_seconds": args.timeout,
                },
                infra.workdir / "worker.log",
            )
            api = ChildProcess(
                "api",
                {
                    "temporal_address": infra.temporal_address,
                    "database_url": infra.database_url,
                    "task_queue": task_queue,
                    "api_port": free_port(),
                    "deadline_seconds": args.timeout,
                },
                infra.workdir / "api.log",
            )
            await worker.ready()
            base_url = (await api.ready())["base_url"]
            keys = [(await infra.new_user())[1] for _ in range(args.users)]
            load = Load(
                base_url,
                keys,
                {
                    "api": api.pid,
                    "worker": worker.pid,
                    "temporal server": infra.temporal_pid,
                    "postgres": infra.postgres_pid,
                    "load generator (clients)": os.getpid(),
                },
            )
            # Each user's tasks, by the client's Authorization header: a user reads only
            # their own.
            task_ids: dict[str, list[str]] = {}

            async def healthz(client: httpx.AsyncClient, _index: int) -> httpx.Response:
                return await client.get("/healthz")

            async def create(client: httpx.AsyncClient, index: int) -> httpx.Response:
                response = await client.post(
                    "/v1/tasks", json={"prompt": f"benchmark task {index}"}
                )
                if response.status_code == 202:
                    owner = client.headers["authorization"]
                    task_ids.setdefault(owner, []).append(response.json()["id"])
                return response

            async def read(client: httpx.AsyncClient, _index: int) -> httpx.Response:
                owned = task_ids[client.headers["authorization"]]
                return await client.get(f"/v1/tasks/{random.choice(owned)}")

            async def start_directly(_index: int) -> None:
                # What POST /v1/tasks asks of Temporal, straight from a client: no HTTP, no
                # database. On a queue no worker polls, so it adds no work.
                task = StartAgentTaskInput(
                    task_id=str(uuid.uuid4()), user_id="nobody", prompt="baseline"
                )
                await infra.client.start_workflow(
                    AgentTaskWorkflow.run,
                    task,
                    id=f"task-{task.task_id}",
                    task_queue=f"{task_queue}-unpolled",
                )

            async def query_directly(_index: int) -> str:
                # What GET /v1/tasks/{id} asks of Temporal for a running task. Bounded: under
                # load Temporal answers "consistent query buffer is full" and the client retries.
                every_task = random.choice(list(task_ids.values()))
                handle = infra.client.get_workflow_handle(f"task-{random.choice(every_task)}")
                try:
                    async with asyncio.timeout(QUERY_LIMIT_SECONDS):
                        await handle.query(AgentTaskWorkflow.progress)
                except (TimeoutError, WorkflowQueryFailedError, RPCError) as exc:
                    return type(exc).__name__
                return "ok"

            profile = Profile(api.pid, profile_file("api")) if args.profile else None
            # The baseline first, while the worker has nothing to do.
            await load.run("warm-up", healthz, 1, WARMUP_REQUESTS)
            phases["healthz, 1 client"] = await load.run(
                "healthz, 1 client", healthz, 1, SINGLE_CLIENT_REQUESTS
            )
            phases["healthz"] = await load.run("healthz", healthz, args.clients, args.requests)
            await load.run("warm-up", create, 1, WARMUP_REQUESTS)
            await load.run("warm-up", read, 1, WARMUP_REQUESTS)
            phases["POST /v1/tasks, 1 client"] = await load.run(
                "POST /v1/tasks, 1 client", create, 1, SINGLE_CLIENT_REQUESTS
            )
            phases["start_workflow, 1 client"] = await load.run_calls(
                "start_workflow, 1 client", start_directly, 1, SINGLE_CLIENT_REQUESTS
            )
            phases["start_workflow"] = await load.run_calls(
                "start_workflow", start_directly, args.clients, args.post_requests
            )
            phases["POST /v1/tasks"] = await load.run(
                "POST /v1/tasks", create, args.clients, args.post_requests
            )
            phases["GET /v1/tasks/{id}, running"] = await load.run(
                "GET running", read, args.clients, args.requests, task_status
            )
            # Clients polling their tasks' progress, as a UI does.
            paced = args.clients / args.paced_rate
            phases["GET /v1/tasks/{id}, running, paced"] = await load.run(
                "GET running, paced", read, args.clients, args.requests, task_status, paced
            )
            phases["query"] = await load.run_calls(
                "query", query_directly, args.clients, args.requests
            )
            started = sum(len(ids) for ids in task_ids.values())
            closed = await wait_until_closed(infra, task_queue, started, args.wait)
            stalled: list[dict[str, Any]] = []
            if closed < started:
                print(
                    f"bench: {closed} of {started} tasks finished within --wait; "
                    "the 'finished' reads mix states"
                )
                stalled = await describe_open(infra, task_queue)
                RESULTS_DIR.mkdir(exist_ok=True)
                for log in infra.workdir.glob("*.log"):
                    shutil.copy(log, RESULTS_DIR / f"api-stalled-{log.name}")
            phases["GET /v1/tasks/{id}, finished, 1 client"] = await load.run(
                "GET finished, 1 client", read, 1, SINGLE_CLIENT_REQUESTS, task_status
            )
            phases["GET /v1/tasks/{id}, finished"] = await load.run(
                "GET finished", read, args.clients, args.requests, task_status
            )
            phases["GET /v1/tasks/{id}, finished, paced"] = await load.run(
                "GET finished, paced", read, args.clients, args.requests, task_status, paced
            )
            phases["POST /v1/tasks, paced"] = await load.run(
                "POST paced",
                create,
                args.clients,
                args.post_requests,
                interval=args.clients / args.paced_post_rate,
            )
            profile_summary = None
            if profile is not None:
                await profile.stop()
                profile_summary = profile.summarise()
        finally:
            for child in (api, worker, fake):
                if child is not None:
                    await child.stop()
    result = report(args, phases, profile_summary)
    result.detail["tasks_closed_before_finished_reads"] = [closed, started]
    result.detail["open_tasks_described"] = stalled
    return result


def report(
    args: argparse.Namespace, phases: dict[str, Phase], profile: dict[str, Any] | None
) -> Report:
    health = phases["healthz"]
    post = phases["POST /v1/tasks"]
    running = phases["GET /v1/tasks/{id}, running"]
    finished = phases["GET /v1/tasks/{id}, finished"]
    columns = ["Keel endpoint", "GET /healthz", "Temporal call alone"]
    rows: list[Row] = []
    for label, phase, alone, target in (
        ("POST /v1/tasks", post, phases["start_workflow"], TARGET_POST_P99_MS),
        ("GET /v1/tasks/{id}, task running", running, phases["query"], TARGET_GET_P99_MS),
        ("GET /v1/tasks/{id}, task finished", finished, None, TARGET_GET_P99_MS),
    ):
        p99 = phase.ms("p99")
        rows += [
            Row(
                f"{label}: p50",
                [phase.ms("p50"), health.ms("p50"), alone.ms("p50") if alone else None],
                "ms",
            ),
            Row(
                f"{label}: p99",
                [p99, health.ms("p99"), alone.ms("p99") if alone else None],
                "ms",
                f"< {target} ms",
                p99 is not None and p99 < target and phase.errors == 0,
            ),
            Row(
                f"{label}: requests/s",
                [phase.throughput, health.throughput, alone.throughput if alone else None],
            ),
            Row(f"{label}: errors (4xx/5xx)", [phase.errors, health.errors, None]),
        ]
    single = Table(
        "One client at a time (service time, no queueing)",
        columns,
        [
            Row(
                "POST /v1/tasks: p50",
                [
                    phases["POST /v1/tasks, 1 client"].ms("p50"),
                    phases["healthz, 1 client"].ms("p50"),
                    phases["start_workflow, 1 client"].ms("p50"),
                ],
                "ms",
            ),
            Row(
                "GET /v1/tasks/{id}, finished: p50",
                [
                    phases["GET /v1/tasks/{id}, finished, 1 client"].ms("p50"),
                    phases["healthz, 1 client"].ms("p50"),
                    None,
                ],
                "ms",
            ),
        ],
    )
    paced_rows = []
    for label, phase, target in (
        ("POST /v1/tasks", phases["POST /v1/tasks, paced"], TARGET_POST_P99_MS),
        (
            "GET /v1/tasks/{id}, task running",
            phases["GET /v1/tasks/{id}, running, paced"],
            TARGET_GET_P99_MS,
        ),
        (
            "GET /v1/tasks/{id}, task finished",
            phases["GET /v1/tasks/{id}, finished, paced"],
            TARGET_GET_P99_MS,
        ),
    ):
        p99 = phase.ms("p99")
        paced_rows += [
            Row(f"{label}: p50", [phase.ms("p50")], "ms"),
            Row(
                f"{label}: p99",
                [p99],
                "ms",
                f"< {target} ms",
                p99 is not None and p99 < target and phase.errors == 0,
            ),
            Row(f"{label}: max", [phase.ms("max")], "ms"),
            Row(f"{label}: requests/s", [phase.throughput]),
        ]
    paced = Table(
        f"Paced: {args.clients} clients, each on a schedule: POSTs {args.paced_post_rate:g}/s "
        f"in all, GETs {args.paced_rate:g}/s in all",
        ["Keel endpoint"],
        paced_rows,
    )
    cpu_names = list(post.cpu)
    cpu = Table(
        "CPU cores busy per process during each 50-client phase",
        ["POST", "GET running", "GET finished", "healthz", "start_workflow", "query"],
        [
            Row(
                name,
                [
                    phase.cpu.get(name, {}).get("cores_busy")
                    for phase in (
                        post,
                        running,
                        finished,
                        health,
                        phases["start_workflow"],
                        phases["query"],
                    )
                ],
            )
            for name in cpu_names
        ],
    )
    return Report(
        benchmark="api_latency",
        config=vars(args),
        tables=[
            Table(
                f"API latency: {args.clients} concurrent clients, uvicorn on loopback, "
                "worker running",
                columns,
                rows,
            ),
            paced,
            single,
            cpu,
        ],
        detail={
            "phases": {name: phase.as_json() for name, phase in phases.items()},
            "running_reads_by_status": dict(running.tags),
            "paced_running_reads_by_status": dict(
                phases["GET /v1/tasks/{id}, running, paced"].tags
            ),
            "finished_reads_by_status": dict(finished.tags),
            "direct_queries_by_outcome": dict(phases["query"].tags),
            "profile": profile,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients")
    parser.add_argument(
        "--users",
        type=int,
        default=1,
        help="users the clients act for (client n for user n modulo this)",
    )
    parser.add_argument("--requests", type=int, default=20, help="GETs per client per phase")
    parser.add_argument("--post-requests", type=int, default=10, help="POSTs per client")
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=100,
        help="GETs/s of the paced phase, spread over the clients",
    )
    parser.add_argument(
        "--paced-post-rate",
        type=float,
        default=20,
        help="POSTs/s of the paced phase, spread over the clients",
    )
    parser.add_argument("--steps", type=int, default=2, help="model calls per task")
    parser.add_argument("--model-latency", type=float, default=3.0, help="fake model seconds")
    parser.add_argument("--wait", type=float, default=180, help="seconds to let tasks finish")
    parser.add_argument("--timeout", type=float, default=900, help="hard limit, seconds")
    parser.add_argument("--profile", action="store_true", help="py-spy the API process")
    args = parser.parse_args()
    setup_logging()
    arm_watchdog(args.timeout)
    result = asyncio.run(measure(args))
    result.print()
    print(
        "\nGET while running, by the status read: "
        + ", ".join(f"{k} {v}" for k, v in result.detail["running_reads_by_status"].items())
    )
    print(
        "GET while running, paced, by the status read: "
        + ", ".join(f"{k} {v}" for k, v in result.detail["paced_running_reads_by_status"].items())
    )
    print(
        "Temporal queries made directly, by outcome: "
        + ", ".join(f"{k} {v}" for k, v in result.detail["direct_queries_by_outcome"].items())
    )
    if result.detail["profile"]:
        print_profile(result.detail["profile"], "the API process")
    print(f"\nresults: {result.write()}")


if __name__ == "__main__":
    main()
