"""Approvals: many Keel tasks parked on a person's decision, on ONE worker process.

--tasks Keel tasks (default 1,000) each ask for `notes_delete`, a confirm-tier tool, and
wait for approval. With all of them parked, the worker's RSS is read (target < 400 MB);
then every approval is sent (`decide_approval`, the update the REST API sends, --in-flight
at a time) and its round trip timed: the update is accepted only once the workflow has
woken, recorded the decision and answered (target p99 < 300 ms). The baseline is the same
on a bare temporalio workflow parked on an update (`bench.parked`), in its own worker
process. Run: `.venv/bin/python -m bench.approvals [--tasks 100]`.
"""

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import psutil
from sqlmodel import col, func, select

from bench.common import (
    ChildProcess,
    Infra,
    Report,
    Row,
    Table,
    arm_watchdog,
    infrastructure,
    percentile,
    setup_logging,
)
from bench.parked import ParkedWorkflow
from core.db import session_scope
from schemas.agent_task import DecideApprovalInput, StartAgentTaskInput
from schemas.tables import Approval
from workflows.agent_task import AgentTaskWorkflow

TARGET_RSS_MB = 400
TARGET_P99_MS = 300
START_CONCURRENCY = 100


async def bounded(calls: list[Callable[[], Awaitable[float]]], at_once: int) -> list[float]:
    gate = asyncio.Semaphore(at_once)

    async def one(call: Callable[[], Awaitable[float]]) -> float:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def pending_count(infra: Infra, user_id: str) -> int:
    async with session_scope(infra.sessions) as session:
        statement = select(func.count()).where(
            col(Approval.user_id) == user_id, col(Approval.status) == "pending"
        )
        return int((await session.exec(statement)).one())


async def run_keel(infra: Infra, args: argparse.Namespace) -> dict[str, float]:
    user_id, _key = await infra.new_user()
    queue = f"bench-approvals-{uuid.uuid4().hex[:8]}"
    # The model asks to delete a note, then answers once the tool's result is back. It runs
    # in a process of its own, so serving it does not delay the decisions timed here.
    fake = ChildProcess(
        "fake",
        {
            "tool_calls": 1,
            "latency": 0.0,
            "tool": "notes_delete",
            "arguments": {"path": "old.md"},
            "deadline_seconds": args.timeout,
        },
        infra.workdir / "fake.log",
    )
    worker = ChildProcess(
        "worker",
        {
            "temporal_address": infra.temporal_address,
            "database_url": infra.database_url,
            "anthropic_base_url": (await fake.ready())["base_url"],
            "task_queue": queue,
            "stats_file": str(infra.workdir / "keel-worker-stats.json"),
            "deadline_seconds": args.timeout,
        },
        infra.workdir / "keel-worker.log",
    )
    try:
        await worker.ready()
        idle_mb = psutil.Process(worker.pid).memory_info().rss / 2**20

        async def start() -> float:
            task = StartAgentTaskInput(task_id=str(uuid.uuid4()), user_id=user_id, prompt="tidy")
            await infra.client.start_workflow(
                AgentTaskWorkflow.run, task, id=f"task-{task.task_id}", task_queue=queue
            )
            return 0.0

        await bounded([start] * args.tasks, START_CONCURRENCY)
        while await pending_count(infra, user_id) < args.tasks:  # noqa: ASYNC110 (polls Postgres)
            await asyncio.sleep(0.5)
        parked_mb = psutil.Process(worker.pid).memory_info().rss / 2**20
        async with session_scope(infra.sessions) as session:
            approvals = list(
                await session.exec(select(Approval).where(col(Approval.user_id) == user_id))
            )

        def approve(approval: Approval) -> Callable[[], Awaitable[float]]:
            async def send() -> float:
                handle = infra.client.get_workflow_handle(f"task-{approval.task_id}")
                decision = DecideApprovalInput(
                    approval_id=approval.id, decision="approve", decided_by=user_id
                )
                sent = time.perf_counter()
                await handle.execute_update(AgentTaskWorkflow.decide_approval, decision)
                return (time.perf_counter() - sent) * 1000

            return send

        latencies = await bounded([approve(a) for a in approvals], args.in_flight)
    finally:
        await worker.stop()
        await fake.stop()
    return {
        "idle_mb": idle_mb,
        "parked_mb": parked_mb,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


async def run_bare(infra: Infra, args: argparse.Namespace) -> dict[str, float]:
    queue = f"bench-parked-{uuid.uuid4().hex[:8]}"
    worker = ChildProcess(
        "parked",
        {
            "temporal_address": infra.temporal_address,
            "task_queue": queue,
            "deadline_seconds": args.timeout,
        },
        infra.workdir / "parked-worker.log",
    )
    try:
        await worker.ready()
        idle_mb = psutil.Process(worker.pid).memory_info().rss / 2**20
        ids = [f"parked-{uuid.uuid4()}" for _ in range(args.tasks)]

        def start(workflow_id: str) -> Callable[[], Awaitable[float]]:
            async def go() -> float:
                await infra.client.start_workflow(
                    ParkedWorkflow.run, id=workflow_id, task_queue=queue
                )
                return 0.0

            return go

        await bounded([start(i) for i in ids], START_CONCURRENCY)
        await asyncio.sleep(2)  # let every run reach its wait
        parked_mb = psutil.Process(worker.pid).memory_info().rss / 2**20

        def approve(workflow_id: str) -> Callable[[], Awaitable[float]]:
            async def send() -> float:
                sent = time.perf_counter()
                await infra.client.get_workflow_handle(workflow_id).execute_update(
                    ParkedWorkflow.approve
                )
                return (time.perf_counter() - sent) * 1000

            return send

        latencies = await bounded([approve(i) for i in ids], args.in_flight)
    finally:
        await worker.stop()
    return {
        "idle_mb": idle_mb,
        "parked_mb": parked_mb,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


async def run(args: argparse.Namespace) -> Report:
    async with infrastructure("approvals") as infra:
        keel = await run_keel(infra, args)
        bare = await run_bare(infra, args)
    title = (
        f"Approvals: {args.tasks} parked tasks on one worker, {args.in_flight} decisions in flight"
    )
    rows = [
        Row("worker RSS, idle", [keel["idle_mb"], bare["idle_mb"]], "MB"),
        Row(
            f"worker RSS, {args.tasks} parked",
            [keel["parked_mb"], bare["parked_mb"]],
            "MB",
            f"< {TARGET_RSS_MB} MB",
            keel["parked_mb"] < TARGET_RSS_MB,
        ),
        Row("approve-to-resume, p50", [keel["p50"], bare["p50"]], "ms"),
        Row(
            "approve-to-resume, p99",
            [keel["p99"], bare["p99"]],
            "ms",
            f"< {TARGET_P99_MS} ms",
            keel["p99"] < TARGET_P99_MS,
        ),
    ]
    return Report(
        "approvals",
        vars(args),
        [Table(title, ["Keel", "bare temporalio"], rows)],
        {"keel": keel, "bare": bare},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=10, help="decisions sent at once")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this long")
    args = parser.parse_args()
    setup_logging()
    arm_watchdog(args.timeout + 60)
    report = asyncio.run(run(args))
    report.print()
    print(f"results: {report.write()}")


if __name__ == "__main__":
    main()
