"""Approvals: many Keel tasks parked on a person's decision, on ONE worker process.

--tasks Keel tasks (default 1,000) each ask for `notes_delete`, a confirm-tier tool, and
wait for approval. With all of them parked, the worker's RSS is read (target < 400 MB);
then every approval is sent (`decide_approval`, the update the REST API sends) and its round
trip timed: the update is accepted only once the workflow has woken, recorded the decision
and answered. Half the decisions arrive the way people send them, open loop at --rate a
second (Poisson arrivals, each sent when it arrives however many are still out): that is
approve-to-resume latency (target p99 < 300 ms). The other half are sent closed loop,
--in-flight at a time, as fast as the platform takes them: that is the decision throughput,
and its latency is mostly queueing. The baseline is the same on a bare temporalio workflow
parked on an update (`bench.parked`), in its own worker process.
Run: `.venv/bin/python -m bench.approvals [--tasks 100]`.
"""

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
from sqlmodel import col, func, select

from bench.common import (
    ChildProcess,
    Infra,
    ProcessSampler,
    Report,
    Row,
    Table,
    arm_watchdog,
    infrastructure,
    setup_logging,
    summary,
)
from bench.parked import ParkedWorkflow
from core.db import session_scope
from schemas.agent_task import DecideApprovalInput, StartAgentTaskInput
from schemas.tables import Approval
from workflows.agent_task import AgentTaskWorkflow

TARGET_RSS_MB = 400
TARGET_P99_MS = 300
START_CONCURRENCY = 100

Decision = Callable[[], Awaitable[None]]
T = TypeVar("T")


async def bounded(calls: Sequence[Callable[[], Awaitable[T]]], at_once: int) -> list[T]:
    """Every call's result, at most `at_once` running at a time."""
    gate = asyncio.Semaphore(at_once)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def timed(decision: Decision) -> float:
    """The decision's round trip, in milliseconds."""
    sent = time.perf_counter()
    await decision()
    return (time.perf_counter() - sent) * 1000


@dataclass
class Decisions:
    """The round trips of one run's decisions (ms), open loop and closed loop, and the
    decisions a second the closed loop reached."""

    open_loop: list[float] = field(default_factory=list)
    closed_loop: list[float] = field(default_factory=list)
    per_second: float = 0.0
    cpu: dict[str, Any] = field(default_factory=dict)

    async def send(
        self, decisions: list[Decision], args: argparse.Namespace, pids: dict[str, int]
    ) -> None:
        """The first half open loop at args.rate (seeded, so every run sees the same
        arrivals), the rest closed loop at args.in_flight."""
        half = len(decisions) // 2
        arrivals = random.Random(7)
        sent: list[asyncio.Task[float]] = []
        for decision in decisions[:half]:
            sent.append(asyncio.create_task(timed(decision)))
            await asyncio.sleep(arrivals.expovariate(args.rate))
        # In the order they were sent, so the JSON shows when the slow ones came.
        self.open_loop = list(await asyncio.gather(*sent))

        sampler = ProcessSampler(pids)
        sampler.start()
        started = time.perf_counter()
        closed = [lambda d=d: timed(d) for d in decisions[half:]]
        self.closed_loop = await bounded(closed, args.in_flight)
        self.per_second = len(closed) / (time.perf_counter() - started)
        await sampler.stop()
        self.cpu = {name: f["cores_busy"] for name, f in sampler.cpu_table().items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "open_loop_ms": summary(self.open_loop),
            "open_loop_ms_in_order_sent": [round(ms, 1) for ms in self.open_loop],
            "closed_loop_ms": summary(self.closed_loop),
            "closed_loop_decisions_per_second": self.per_second,
            "closed_loop_cores_busy": self.cpu,
        }


@dataclass
class Run:
    idle_mb: float = 0.0
    parked_mb: float = 0.0
    decisions: Decisions = field(default_factory=Decisions)

    def as_json(self) -> dict[str, Any]:
        return {"idle_mb": self.idle_mb, "parked_mb": self.parked_mb, **self.decisions.as_json()}


async def settled(pids: list[int], idle_cores: float = 0.05, limit: float = 60) -> None:
    """Wait (at most `limit` seconds) until none of the processes uses more than
    `idle_cores` over a second: the tasks have really parked, and what they did to get
    there (notifications, search attributes) is not timed with the decisions."""
    processes = [psutil.Process(pid) for pid in pids]
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        before = [sum(p.cpu_times()[:2]) for p in processes]
        await asyncio.sleep(1)
        after = [sum(p.cpu_times()[:2]) for p in processes]
        if all(b - a <= idle_cores for a, b in zip(before, after, strict=True)):
            return


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 2**20)


async def pending_count(infra: Infra, user_id: str) -> int:
    async with session_scope(infra.sessions) as session:
        statement = select(func.count()).where(
            col(Approval.user_id) == user_id, col(Approval.status) == "pending"
        )
        return int((await session.exec(statement)).one())


async def run_keel(infra: Infra, args: argparse.Namespace) -> Run:
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
    run = Run()
    try:
        await worker.ready()
        run.idle_mb = rss_mb(worker.pid)

        async def start() -> None:
            task = StartAgentTaskInput(task_id=str(uuid.uuid4()), user_id=user_id, prompt="tidy")
            await infra.client.start_workflow(
                AgentTaskWorkflow.run, task, id=f"task-{task.task_id}", task_queue=queue
            )

        await bounded([start] * args.tasks, START_CONCURRENCY)
        while await pending_count(infra, user_id) < args.tasks:  # noqa: ASYNC110 (polls Postgres)
            await asyncio.sleep(0.5)
        await settled([worker.pid, infra.temporal_pid])
        run.parked_mb = rss_mb(worker.pid)
        async with session_scope(infra.sessions) as session:
            approvals = list(
                await session.exec(select(Approval).where(col(Approval.user_id) == user_id))
            )

        def approve(approval: Approval) -> Decision:
            async def send() -> None:
                handle = infra.client.get_workflow_handle(f"task-{approval.task_id}")
                decision = DecideApprovalInput(
                    approval_id=approval.id, decision="approve", decided_by=user_id
                )
                await handle.execute_update(AgentTaskWorkflow.decide_approval, decision)

            return send

        pids = {
            "worker": worker.pid,
            "temporal": infra.temporal_pid,
            "fake model": fake.pid,
            "bench": psutil.Process().pid,
        }
        await run.decisions.send([approve(a) for a in approvals], args, pids)
    finally:
        await worker.stop()
        await fake.stop()
    return run


async def run_bare(infra: Infra, args: argparse.Namespace) -> Run:
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
    run = Run()
    try:
        await worker.ready()
        run.idle_mb = rss_mb(worker.pid)
        ids = [f"parked-{uuid.uuid4()}" for _ in range(args.tasks)]

        def start(workflow_id: str) -> Callable[[], Awaitable[Any]]:
            return lambda: infra.client.start_workflow(
                ParkedWorkflow.run, id=workflow_id, task_queue=queue
            )

        await bounded([start(i) for i in ids], START_CONCURRENCY)
        await settled([worker.pid, infra.temporal_pid])
        run.parked_mb = rss_mb(worker.pid)

        def approve(workflow_id: str) -> Decision:
            async def send() -> None:
                handle = infra.client.get_workflow_handle(workflow_id)
                await handle.execute_update(ParkedWorkflow.approve)

            return send

        pids = {"worker": worker.pid, "temporal": infra.temporal_pid, "bench": psutil.Process().pid}
        await run.decisions.send([approve(i) for i in ids], args, pids)
    finally:
        await worker.stop()
    return run


def latency_rows(what: str, keel: list[float], bare: list[float], target: bool) -> list[Row]:
    keel_ms, bare_ms = summary(keel), summary(bare)
    rows = []
    for quantile in ("p50", "p90", "p99", "max"):
        judged = target and quantile == "p99"
        rows.append(
            Row(
                f"{what}, {quantile}",
                [keel_ms.get(quantile), bare_ms.get(quantile)],
                "ms",
                f"< {TARGET_P99_MS} ms" if judged else "",
                keel_ms.get("p99", float("inf")) < TARGET_P99_MS if judged else None,
            )
        )
    return rows


async def run(args: argparse.Namespace) -> Report:
    async with infrastructure("approvals") as infra:
        keel = await run_keel(infra, args)
        bare = await run_bare(infra, args)
    half = args.tasks // 2
    title = f"Approvals: {args.tasks} parked tasks on one worker"
    rows = [
        Row("worker RSS, idle", [keel.idle_mb, bare.idle_mb], "MB"),
        Row(
            f"worker RSS, {args.tasks} parked",
            [keel.parked_mb, bare.parked_mb],
            "MB",
            f"< {TARGET_RSS_MB} MB",
            keel.parked_mb < TARGET_RSS_MB,
        ),
        *latency_rows(
            f"approve-to-resume, {half} at {args.rate:g}/s",
            keel.decisions.open_loop,
            bare.decisions.open_loop,
            target=True,
        ),
        Row(
            f"decisions/s, {args.tasks - half} with {args.in_flight} in flight",
            [keel.decisions.per_second, bare.decisions.per_second],
        ),
        *latency_rows(
            f"round trip, {args.in_flight} in flight",
            keel.decisions.closed_loop,
            bare.decisions.closed_loop,
            target=False,
        ),
    ]
    names = sorted(set(keel.decisions.cpu) | set(bare.decisions.cpu))
    cpu_rows = [
        Row(name, [keel.decisions.cpu.get(name), bare.decisions.cpu.get(name)], "cores")
        for name in names
    ]
    return Report(
        "approvals",
        vars(args),
        [
            Table(title, ["Keel", "bare temporalio"], rows),
            Table(
                f"Cores busy while {args.in_flight} decisions are in flight",
                ["Keel", "bare temporalio"],
                cpu_rows,
            ),
        ],
        {"keel": keel.as_json(), "bare": bare.as_json()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=10, help="decisions a second, open loop (first half)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=10, help="decisions at once, closed loop (second half)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="give up after this long")
    args = parser.parse_args()
    setup_logging()
    arm_watchdog(args.timeout + 60)
    report = asyncio.run(run(args))
    report.print()
    print(f"results: {report.write()}")


if __name__ == "__main__":
    main()
