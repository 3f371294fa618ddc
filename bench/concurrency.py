"""Concurrency: many Keel tasks at once on ONE worker process.

--tasks tasks (default 1,000) of --steps steps (default 3: the fake model asks for
`get_current_time` twice, then answers; every reply takes --latency seconds, default 1) are
started together on one Keel worker in a process of its own. Makespan (first start to last
close) is compared with the ideal, steps x latency plus the tool time, and with the same load
on bare temporalio (`bench.bare_agent`, its own worker process, the same worker limits). Peak
RSS is the worker's own: the load generator and the fake model run in other processes.

The worker's Temporal and Postgres limits can be changed per run to find what bounds the
makespan: `--max-concurrent-activities`, `--max-concurrent-workflow-tasks`,
`--max-cached-workflows`, `--workflow-task-polls`, `--activity-task-polls`, `--db-pool-size`,
`--db-max-overflow` (unset: Keel's defaults, i.e. Temporal's and `core.db.create_engine`'s).

Run: `.venv/bin/python -m bench.concurrency [--tasks 100] [--no-bare]`.
"""

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
from temporalio.client import WorkflowExecution, WorkflowExecutionStatus, WorkflowHistory

from bench.bare_agent import BareAgentWorkflow, task_like_keel
from bench.common import (
    ChildProcess,
    Infra,
    ProcessSampler,
    Profile,
    Report,
    Row,
    Table,
    arm_watchdog,
    history_timings,
    infrastructure,
    peak_rss_bytes,
    print_profile,
    profile_file,
    setup_logging,
    summary,
)
from core.settings import Settings
from schemas.agent_task import StartAgentTaskInput
from workflows.agent_task import AgentTaskWorkflow

TARGET_RATIO = 1.5
TARGET_RSS_MB = 600
START_CONCURRENCY = 100
SAMPLED_HISTORIES = 20
CALIBRATION_TASKS = 2
TUNING_FLAGS = (
    "max_concurrent_activities",
    "max_concurrent_workflow_tasks",
    "max_cached_workflows",
    "workflow_task_polls",
    "activity_task_polls",
    "db_pool_size",
    "db_max_overflow",
)

# Starts one task on a task queue and returns its workflow ID.
Starter = Callable[[str, str], Awaitable[str]]


@dataclass
class LoadResult:
    """What one variant (Keel or bare temporalio) did under the load."""

    completed: int
    makespan: float
    latencies: list[float]
    all_started: float
    alone: float
    tool_seconds: float
    idle_rss_mb: float
    peak_rss_mb: float
    processes: dict[str, dict[str, Any]]
    worker: dict[str, Any]
    histories: list[dict[str, Any]]
    progress: list[tuple[float, int]] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    count_seconds: list[float] = field(default_factory=list)
    idle_count_seconds: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "makespan_seconds": self.makespan,
            "task_latency_seconds": summary(self.latencies),
            "all_started_seconds": self.all_started,
            "single_task_seconds": self.alone,
            "tool_seconds_alone": self.tool_seconds,
            "worker_idle_rss_mb": self.idle_rss_mb,
            "worker_peak_rss_mb": self.peak_rss_mb,
            "processes": self.processes,
            "worker": self.worker,
            "sampled_histories": self.histories,
            "progress": self.progress,
            "profile": self.profile,
            "count_workflows_seconds": summary(self.count_seconds),
            "count_workflows_idle_seconds": summary(self.idle_count_seconds),
        }


def keel_starter(infra: Infra, user_id: str) -> Starter:
    async def start(task_queue: str, prompt: str) -> str:
        task = StartAgentTaskInput(task_id=str(uuid.uuid4()), user_id=user_id, prompt=prompt)
        handle = await infra.client.start_workflow(
            AgentTaskWorkflow.run, task, id=f"task-{task.task_id}", task_queue=task_queue
        )
        return handle.id

    return start


def bare_starter(infra: Infra, steps: int) -> Starter:
    settings = Settings(database_url=infra.database_url)

    async def start(task_queue: str, prompt: str) -> str:
        handle = await infra.client.start_workflow(
            BareAgentWorkflow.run,
            task_like_keel(settings, prompt, steps + 5),
            id=f"bare-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        return handle.id

    return start


async def single_task(infra: Infra, start: Starter, task_queue: str) -> tuple[float, float]:
    """Run one task alone: its wall time, and its tool activities' mean running seconds."""
    started = time.perf_counter()
    handle = infra.client.get_workflow_handle(await start(task_queue, "calibration"))
    await handle.result()
    elapsed = time.perf_counter() - started
    by_kind = history_timings(await handle.fetch_history())["by_kind"]
    tools = by_kind.get("run_tool") or by_kind.get("bare_run_tool")
    tool_seconds = tools["running_ms"] / tools["count"] / 1000 if tools else 0.0
    return elapsed, tool_seconds


async def closed_count(infra: Infra, task_queue: str) -> int:
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'"
    return (await infra.client.count_workflows(query)).count


async def closed_runs(infra: Infra, task_queue: str, ids: set[str]) -> list[WorkflowExecution]:
    """The closed runs of these workflows, as Temporal's visibility lists them."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'"
    return [
        run async for run in infra.client.list_workflows(query, page_size=1000) if run.id in ids
    ]


async def run_variant(
    infra: Infra,
    name: str,
    start: Starter,
    worker_config: dict[str, Any],
    args: argparse.Namespace,
) -> LoadResult:
    """Start a worker process for `name`, calibrate with tasks run alone, then start
    --tasks tasks together and wait until every one has closed (or time runs out)."""
    task_queue = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    stats_file = infra.workdir / f"{name}-worker-stats.json"
    worker = ChildProcess(
        "worker",
        {
            **worker_config,
            "bare": name == "bare",
            "task_queue": task_queue,
            "stats_file": str(stats_file),
            "deadline_seconds": args.timeout,
        },
        infra.workdir / f"{name}-worker.log",
    )
    try:
        await worker.ready()
        for _ in range(CALIBRATION_TASKS):
            alone, tool_seconds = await single_task(infra, start, task_queue)
        idle_rss_mb = psutil.Process(worker.pid).memory_info().rss / 2**20
        idle_count_seconds = []
        for _ in range(10):
            asked = time.perf_counter()
            await closed_count(infra, task_queue)
            idle_count_seconds.append(time.perf_counter() - asked)
        sampler = ProcessSampler(
            {
                "worker": worker.pid,
                "fake model": worker_config["fake_pid"],
                "temporal server": infra.temporal_pid,
                "postgres": infra.postgres_pid,
                "load generator": os.getpid(),
            },
            with_children={"postgres"},
        )
        profile = Profile(worker.pid, profile_file(f"concurrency-{name}")) if args.profile else None
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start_one(index: int) -> str:
            async with gate:
                return await start(task_queue, f"task {index}")

        sampler.start()
        load_started = datetime.now(UTC)
        clock = time.perf_counter()
        ids = set(await asyncio.gather(*(start_one(i) for i in range(args.tasks))))
        all_started = time.perf_counter() - clock
        progress: list[tuple[float, int]] = []
        count_seconds: list[float] = []
        closed = 0
        while closed < args.tasks and time.perf_counter() - clock < args.wait:
            await asyncio.sleep(0.25)
            # Timed: how long Temporal takes to answer a visibility query under this load.
            asked = time.perf_counter()
            closed = await closed_count(infra, task_queue) - CALIBRATION_TASKS
            count_seconds.append(time.perf_counter() - asked)
            progress.append((round(time.perf_counter() - clock, 2), closed))
        usage = await sampler.stop()
        profile_summary = None
        if profile is not None:
            await profile.stop()
            profile_summary = profile.summarise()
        peak_rss = max(peak_rss_bytes(worker.pid), usage["worker"].peak_rss_bytes)
        runs = await closed_runs(infra, task_queue, ids)
        sampled = random.sample(sorted(ids), min(SAMPLED_HISTORIES, len(ids)))
        histories: list[WorkflowHistory] = [
            await infra.client.get_workflow_handle(workflow_id).fetch_history()
            for workflow_id in sampled
        ]
    finally:
        await worker.stop()
    completed = [run for run in runs if run.status == WorkflowExecutionStatus.COMPLETED]
    closes = [run.close_time for run in runs if run.close_time is not None]
    return LoadResult(
        completed=len(completed),
        makespan=(max(closes) - load_started).total_seconds() if closes else float("nan"),
        latencies=[
            (run.close_time - run.start_time).total_seconds() for run in runs if run.close_time
        ],
        all_started=all_started,
        alone=alone,
        tool_seconds=tool_seconds,
        idle_rss_mb=idle_rss_mb,
        peak_rss_mb=peak_rss / 2**20,
        processes=sampler.cpu_table(),
        worker=json.loads(stats_file.read_text()) if stats_file.exists() else {},
        histories=[history_timings(history) for history in histories],
        progress=progress,
        profile=profile_summary,
        count_seconds=count_seconds,
        idle_count_seconds=idle_count_seconds,
    )


async def run_load(args: argparse.Namespace) -> Report:
    tuning = {name: getattr(args, name) for name in TUNING_FLAGS}
    results: dict[str, LoadResult] = {}
    async with infrastructure("concurrency") as infra:
        fake = ChildProcess(
            "fake",
            {
                "tool_calls": args.steps - 1,
                "latency": args.latency,
                "deadline_seconds": args.timeout,
            },
            infra.workdir / "fake.log",
        )
        try:
            worker_config = {
                "temporal_address": infra.temporal_address,
                "database_url": infra.database_url,
                "anthropic_base_url": (await fake.ready())["base_url"],
                "fake_pid": fake.pid,
                **tuning,
            }
            user_id, _key = await infra.new_user()
            results["keel"] = await run_variant(
                infra, "keel", keel_starter(infra, user_id), worker_config, args
            )
            if args.bare:
                results["bare"] = await run_variant(
                    infra, "bare", bare_starter(infra, args.steps), worker_config, args
                )
        finally:
            await fake.stop()
    return report(args, tuning, results)


def report(
    args: argparse.Namespace, tuning: dict[str, Any], results: dict[str, LoadResult]
) -> Report:
    keel = results["keel"]
    bare = results.get("bare")
    ideal = args.steps * args.latency + (args.steps - 1) * keel.tool_seconds
    ratio = keel.makespan / ideal
    finished = keel.completed == args.tasks
    columns = ["Keel", "bare temporalio", "ideal"]

    def both(
        pick: Callable[[LoadResult], float | None], ideal_value: float | None = None
    ) -> list[float | None]:
        return [pick(keel), pick(bare) if bare else None, ideal_value]

    def p(q: str) -> Callable[[LoadResult], float | None]:
        return lambda result: summary(result.latencies).get(q)

    figures = Table(
        f"Concurrency: {args.tasks} tasks x {args.steps} steps, {args.latency:g} s model "
        f"latency, one worker ({_tuning_label(tuning)})",
        columns,
        [
            Row(
                "tasks completed",
                both(lambda r: r.completed, args.tasks),
                target=f"{args.tasks}",
                passed=finished,
            ),
            Row(
                "makespan, first start to last close",
                both(lambda r: r.makespan, ideal),
                "s",
                f"<= {TARGET_RATIO * ideal:.2f} s",
                finished and ratio <= TARGET_RATIO,
            ),
            Row(
                "makespan / ideal",
                both(lambda r: r.makespan / ideal, 1.0),
                "x",
                f"<= {TARGET_RATIO:.2f}x",
                finished and ratio <= TARGET_RATIO,
            ),
            Row("one task alone (before the load)", both(lambda r: r.alone, ideal), "s"),
            Row("task latency under load, p50", both(p("p50")), "s"),
            Row("task latency under load, p99", both(p("p99")), "s"),
            Row("time to start all tasks", both(lambda r: r.all_started), "s"),
            Row("worker RSS, idle", both(lambda r: r.idle_rss_mb), "MB"),
            Row(
                "worker RSS, peak",
                both(lambda r: r.peak_rss_mb),
                "MB",
                f"< {TARGET_RSS_MB} MB",
                keel.peak_rss_mb < TARGET_RSS_MB,
            ),
        ],
    )
    limits = Table(
        "What bounds it (worker: activity timings, event loop, DB pool; CPU per process)",
        columns[:2],
        _limit_rows(keel, bare, args),
    )
    tables = [figures, limits]
    detail: dict[str, Any] = {
        "ideal_seconds": ideal,
        **{name: result.as_json() for name, result in results.items()},
    }
    return Report(benchmark="concurrency", config=vars(args), tables=tables, detail=detail)


def _tuning_label(tuning: dict[str, Any]) -> str:
    changed = [f"{name}={value}" for name, value in tuning.items() if value is not None]
    return ", ".join(changed) if changed else "Keel's defaults"


# Bare activity names, as the Keel activities they stand for.
_SAME_AS = {"bare_call_model": "call_model", "bare_run_tool": "run_tool"}


def _limit_rows(keel: LoadResult, bare: LoadResult | None, args: argparse.Namespace) -> list[Row]:
    def activity_figure(result: LoadResult | None, part: str, kind: str, q: str) -> float | None:
        if result is None:
            return None
        for name, figures in result.worker.get("activities", {}).get(part, {}).items():
            if _SAME_AS.get(name, name) == kind:
                value: float | None = figures.get(q)
                return value
        return None

    def retries(result: LoadResult | None, kind: str) -> float | None:
        if result is None:
            return None
        counts = result.worker.get("activities", {}).get("retries", {})
        return sum(n for name, n in counts.items() if _SAME_AS.get(name, name) == kind)

    def workflow_task_ms(result: LoadResult | None, part: str) -> float | None:
        if result is None:
            return None
        total, count = 0.0, 0
        for history in result.histories:
            task = history["by_kind"].get("workflow task")
            if task:
                total += task[part]
                count += int(task["count"])
        return total / count if count else None

    def worker(result: LoadResult | None, *path: str) -> float | None:
        value: Any = result.worker if result is not None else None
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    limit = args.max_concurrent_activities or Settings().worker_max_activities
    rows = [
        Row(
            f"activities running at once, max (slots: {limit})",
            [
                worker(keel, "activities", "max_in_flight"),
                worker(bare, "activities", "max_in_flight"),
            ],
        )
    ]
    kinds = sorted(
        {
            _SAME_AS.get(kind, kind)
            for kind in keel.worker.get("activities", {}).get("queued_seconds", {})
        }
    )

    def timings(kind: str, part: str, label: str, quantiles: tuple[str, ...]) -> list[Row]:
        return [
            Row(
                f"{kind}: {label}, {q}",
                [activity_figure(keel, part, kind, q), activity_figure(bare, part, kind, q)],
                "s",
            )
            for q in quantiles
        ]

    for kind in kinds:
        rows += timings(kind, "queued_seconds", "scheduled -> started", ("p50", "p99"))
        rows += timings(
            kind, "handed_over_seconds", "handed to the worker -> its code runs", ("p50", "max")
        )
        rows.append(
            Row(f"{kind}: attempts that were retries", [retries(keel, kind), retries(bare, kind)])
        )
        rows += timings(kind, "running_seconds", "running", ("p50",))

    def events(result: LoadResult | None) -> float | None:
        if result is None or not result.histories:
            return None
        return sum(h["events"] for h in result.histories) / len(result.histories)

    def count_rpc(result: LoadResult | None, idle: bool) -> float | None:
        if result is None:
            return None
        return summary(result.idle_count_seconds if idle else result.count_seconds).get("p50")

    rows += [
        Row("history events per task", [events(keel), events(bare)]),
        Row(
            "Temporal count_workflows RPC, p50, idle",
            [count_rpc(keel, True), count_rpc(bare, True)],
            "s",
        ),
        Row(
            "Temporal count_workflows RPC, p50, under load",
            [count_rpc(keel, False), count_rpc(bare, False)],
            "s",
        ),
        Row(
            "workflow activation in Python, p50",
            [
                worker(keel, "bridge", "activation_in_python_seconds", "p50"),
                worker(bare, "bridge", "activation_in_python_seconds", "p50"),
            ],
            "s",
        ),
        Row(
            "workflow activation in Python, p99",
            [
                worker(keel, "bridge", "activation_in_python_seconds", "p99"),
                worker(bare, "bridge", "activation_in_python_seconds", "p99"),
            ],
            "s",
        ),
        Row(
            "core + server accepting a workflow completion, p50",
            [
                worker(keel, "bridge", "complete_workflow_activation_seconds", "p50"),
                worker(bare, "bridge", "complete_workflow_activation_seconds", "p50"),
            ],
            "s",
        ),
        Row(
            "core + server accepting an activity completion, p50",
            [
                worker(keel, "bridge", "complete_activity_task_seconds", "p50"),
                worker(bare, "bridge", "complete_activity_task_seconds", "p50"),
            ],
            "s",
        ),
        Row(
            "workflow task: scheduled -> started, mean",
            [workflow_task_ms(keel, "queued_ms"), workflow_task_ms(bare, "queued_ms")],
            "ms",
        ),
        Row(
            "workflow task: started -> completed, mean",
            [workflow_task_ms(keel, "running_ms"), workflow_task_ms(bare, "running_ms")],
            "ms",
        ),
        Row(
            "worker event loop lag, p99",
            [worker(keel, "loop_lag_seconds", "p99"), worker(bare, "loop_lag_seconds", "p99")],
            "s",
        ),
        Row(
            f"DB pool checked out, max (of {keel.worker.get('pool_limit')})",
            [worker(keel, "pool_max_checked_out"), None],
        ),
        Row(
            "DB pool at its limit, share of busy samples",
            [100 * (worker(keel, "pool_saturated_share") or 0.0), None],
            "%",
        ),
    ]

    def cpu_floor(
        result: LoadResult | None, processes: tuple[str, ...], cores: float
    ) -> float | None:
        if result is None:
            return None
        return (
            sum(result.processes.get(name, {}).get("cpu_seconds", 0) for name in processes) / cores
        )

    everything = tuple(keel.processes)
    cores = float(psutil.cpu_count() or 1)
    rows += [
        # Python runs a worker's workflows and activities on one core (the GIL), so the worker's
        # CPU time bounds the makespan from below however the slots are set; so does all the
        # CPU the load took, spread over every core.
        Row(
            "makespan floor: the worker's CPU time (one core)",
            [cpu_floor(keel, ("worker",), 1.0), cpu_floor(bare, ("worker",), 1.0)],
            "s",
        ),
        Row(
            f"makespan floor: all processes' CPU time / {cores:g} cores",
            [cpu_floor(keel, everything, cores), cpu_floor(bare, everything, cores)],
            "s",
        ),
    ]
    for process in ("worker", "temporal server"):
        rows.append(
            Row(
                f"CPU per task: {process}",
                [
                    1000 * keel.processes.get(process, {}).get("cpu_seconds", 0) / args.tasks,
                    1000 * bare.processes.get(process, {}).get("cpu_seconds", 0) / args.tasks
                    if bare
                    else None,
                ],
                "ms",
            )
        )
    for process in keel.processes:
        for figure, label in (("cores_busy", "mean"), ("cores_busy_peak_window", "busiest 1 s")):
            rows.append(
                Row(
                    f"CPU cores busy, {label}: {process}",
                    [
                        keel.processes[process][figure],
                        bare.processes.get(process, {}).get(figure) if bare else None,
                    ],
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3, help="model calls per task")
    parser.add_argument("--latency", type=float, default=1.0, help="the fake model's seconds")
    parser.add_argument(
        "--wait", type=float, default=400, help="seconds to wait for a load to finish"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="hard limit, seconds")
    parser.add_argument(
        "--no-bare", dest="bare", action="store_false", help="skip the bare temporalio run"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy each worker under load")
    for name in TUNING_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    args = parser.parse_args()
    if args.steps < 1 or args.tasks < 1:
        parser.error("--steps and --tasks must be at least 1")
    setup_logging()
    arm_watchdog(args.timeout)
    result = asyncio.run(run_load(args))
    result.print()
    for name in ("keel", "bare"):
        profile = result.detail.get(name, {}).get("profile")
        if profile:
            print_profile(profile, f"the {name} worker under load")
    print(f"\nresults: {result.write()}")


if __name__ == "__main__":
    main()
