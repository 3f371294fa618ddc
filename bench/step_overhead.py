"""Step overhead: what one agent step costs in Keel beyond the model's own latency, next to
the same loop on bare temporalio and in plain asyncio.

A task of N steps (the fake model asks for `get_current_time` N-1 times, then answers; every
reply takes --latency seconds) runs three ways, interleaved round by round:

- Keel: `AgentTaskWorkflow` on Keel's real worker (real activities, real Postgres);
- bare temporalio: `bench.bare_agent.BareAgentWorkflow`, the same Claude call and a trivial
  tool as activities, the conversation in workflow history, no Postgres;
- plain asyncio: the same calls in a loop, no Temporal.

Per-step time is the task's wall time (start to result) over N; overhead is that minus the
fake's latency. Run: `.venv/bin/python -m bench.step_overhead [--steps 10 --runs 10]`.
"""

import argparse
import asyncio
import os
import statistics
import uuid
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import anthropic
from temporalio.client import WorkflowHistory
from temporalio.worker import Worker

from activities.builtin_tools import builtin_registry
from bench.bare_agent import (
    BareActivities,
    BareAgentWorkflow,
    BareTaskInput,
    run_in_process,
    task_like_keel,
)
from bench.common import (
    Infra,
    Profile,
    Report,
    Row,
    SqlCounter,
    Table,
    ToolLoopModel,
    arm_watchdog,
    history_size,
    history_timings,
    infrastructure,
    print_profile,
    profile_file,
    setup_logging,
    summary,
)
from core.db import create_engine, session_factory, session_scope
from core.settings import Settings
from schemas.agent_task import StartAgentTaskInput, TaskStatus
from schemas.tables import User
from workers.worker import build_worker
from workflows.agent_task import AgentTaskWorkflow

PROMPT = "What time is it? Check a few times."
TARGET_RATIO = 1.25
VARIANTS = ("keel", "bare", "plain")
COLUMNS = ["Keel", "bare temporalio", "plain asyncio"]

Runner = Callable[[], Awaitable[tuple[float, WorkflowHistory | None]]]


class StepOverhead:
    """The three ways of running one task, over one set of infrastructure."""

    def __init__(self, infra: Infra, claude: anthropic.AsyncAnthropic, steps: int) -> None:
        self.infra = infra
        self.claude = claude
        self.steps = steps
        self.settings = Settings(
            task_queue=f"bench-keel-{uuid.uuid4().hex[:8]}", database_url=infra.database_url
        )
        self.bare_queue = f"bench-bare-{uuid.uuid4().hex[:8]}"
        self.tools = builtin_registry()
        self.user_id = ""
        self.bare_task: BareTaskInput | None = None

    async def prepare(self) -> None:
        self.user_id, _key = await self.infra.new_user()
        self.bare_task = task_like_keel(self.settings, PROMPT, self.steps + 5)

    def workers(self) -> list[Worker]:
        keel = build_worker(self.infra.client, self.settings, self.infra.sessions, self.claude)
        bare_activities = BareActivities(self.claude, self.tools)
        bare = Worker(
            self.infra.client,
            task_queue=self.bare_queue,
            workflows=[BareAgentWorkflow],
            activities=[bare_activities.call_model, bare_activities.run_tool],
        )
        return [keel, bare]

    async def keel(self) -> tuple[float, WorkflowHistory | None]:
        task = StartAgentTaskInput(
            task_id=str(uuid.uuid4()),
            user_id=self.user_id,
            prompt=PROMPT,
            max_steps=self.steps + 5,
        )
        started = perf_counter()
        handle = await self.infra.client.start_workflow(
            AgentTaskWorkflow.run,
            task,
            id=f"task-{task.task_id}",
            task_queue=self.settings.task_queue,
        )
        result = await handle.result()
        elapsed = perf_counter() - started
        # Each fake reply reports 10 input tokens: that counts the model calls made.
        calls = result.usage.input_tokens // 10
        if result.status is not TaskStatus.COMPLETED or calls != self.steps:
            raise RuntimeError(f"Keel task ended {result.status} after {calls} model calls")
        return elapsed, await handle.fetch_history()

    async def bare(self) -> tuple[float, WorkflowHistory | None]:
        assert self.bare_task is not None
        started = perf_counter()
        handle = await self.infra.client.start_workflow(
            BareAgentWorkflow.run,
            self.bare_task,
            id=f"bare-{uuid.uuid4()}",
            task_queue=self.bare_queue,
        )
        result = await handle.result()
        elapsed = perf_counter() - started
        if result.model_calls != self.steps:
            raise RuntimeError(f"bare task made {result.model_calls} model calls")
        return elapsed, await handle.fetch_history()

    async def plain(self) -> tuple[float, WorkflowHistory | None]:
        assert self.bare_task is not None
        started = perf_counter()
        result = await run_in_process(self.claude, self.tools, self.bare_task)
        elapsed = perf_counter() - started
        if result.model_calls != self.steps:
            raise RuntimeError(f"plain loop made {result.model_calls} model calls")
        return elapsed, None


async def transaction_cost(infra: Infra, user_id: str, pre_ping: bool, repeats: int = 200) -> float:
    """Median milliseconds of one transaction as Keel's activities make them: a session from
    the pool, one primary-key read, commit. With or without the pool's pre-ping."""
    engine = create_engine(infra.database_url, pool_pre_ping=pre_ping)
    sessions = session_factory(engine)
    durations = []
    for _ in range(repeats):
        started = perf_counter()
        async with session_scope(sessions) as session:
            await session.get(User, user_id)
        durations.append(perf_counter() - started)
    await engine.dispose()
    return statistics.median(durations[repeats // 10 :]) * 1000


def per_step_breakdown(
    histories: list[WorkflowHistory], steps: int, latency_ms: float
) -> dict[str, float]:
    """Mean milliseconds per step, by where they went according to the histories."""
    totals: dict[str, float] = {}
    span = 0.0
    for history in histories:
        timings = history_timings(history)
        span += timings["span_ms"]
        for kind, figures in timings["by_kind"].items():
            name = {
                "call_model": "model activity",
                "bare_call_model": "model activity",
                "run_tool": "tool activity",
                "bare_run_tool": "tool activity",
                "workflow task": "workflow tasks",
            }.get(kind, "store activities (begin/finish)")
            totals[f"{name}: running"] = totals.get(f"{name}: running", 0.0) + figures["running_ms"]
            totals["queued (scheduled -> started)"] = (
                totals.get("queued (scheduled -> started)", 0.0) + figures["queued_ms"]
            )
    runs = len(histories) * steps
    breakdown = {name: value / runs for name, value in sorted(totals.items())}
    if "model activity: running" in breakdown:
        breakdown["model activity: running"] -= latency_ms
        breakdown["model activity: beyond the model's latency"] = breakdown.pop(
            "model activity: running"
        )
    accounted = sum(totals.values()) / runs
    breakdown["history span, total"] = span / runs
    breakdown["unaccounted within the span"] = span / runs - accounted
    return breakdown


async def measure(args: argparse.Namespace) -> Report:
    latency_ms = args.latency * 1000
    async with infrastructure("step-overhead") as infra:
        infra.fake.respond_with(ToolLoopModel(tool_calls=args.steps - 1, latency=args.latency))
        claude = anthropic.AsyncAnthropic(
            api_key="bench", base_url=infra.fake.base_url, max_retries=0
        )
        bench = StepOverhead(infra, claude, args.steps)
        await bench.prepare()
        runners: dict[str, Runner] = {"keel": bench.keel, "bare": bench.bare, "plain": bench.plain}
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        histories: dict[str, list[WorkflowHistory]] = {name: [] for name in VARIANTS}
        workers = bench.workers()
        profile_summary: dict[str, Any] | None = None
        sql = SqlCounter(infra.engine)
        sql_before: dict[str, float] = {}
        async with workers[0], workers[1]:
            for round_number in range(args.warmup + args.runs):
                if round_number == args.warmup:
                    sql_before = sql.snapshot()
                # Rotate the order each round, so no variant always runs first or last.
                shift = round_number % len(VARIANTS)
                for name in VARIANTS[shift:] + VARIANTS[:shift]:
                    elapsed, history = await runners[name]()
                    if round_number >= args.warmup:
                        times[name].append(elapsed)
                        if history is not None:
                            histories[name].append(history)
            sql_after = sql.snapshot()
            if args.profile:
                profile = Profile(os.getpid(), profile_file("step-overhead"))
                for _ in range(args.runs):
                    await bench.keel()
                await profile.stop()
                profile_summary = profile.summarise()
        await claude.close()
        transaction_ms = {
            pre_ping: await transaction_cost(infra, bench.user_id, pre_ping)
            for pre_ping in (True, False)
        }

    per_step = {name: statistics.median(times[name]) * 1000 / args.steps for name in VARIANTS}
    overhead = {name: per_step[name] - latency_ms for name in VARIANTS}
    ratio = overhead["keel"] / overhead["bare"] if overhead["bare"] > 0 else float("nan")
    sizes = {name: [history_size(h) for h in histories[name]] for name in ("keel", "bare")}
    events = {name: statistics.median(s["events"] for s in sizes[name]) for name in sizes}
    size_bytes = {name: statistics.median(s["bytes"] for s in sizes[name]) for name in sizes}
    breakdown = {
        name: per_step_breakdown(histories[name], args.steps, latency_ms)
        for name in ("keel", "bare")
    }

    # Only Keel's tasks touch Postgres in the measured rounds.
    sql_per_step = {
        name: (sql_after[name] - sql_before[name]) / (args.runs * args.steps) for name in sql_after
    }
    kinds = sorted(set(breakdown["keel"]) | set(breakdown["bare"]))
    title = f"Step overhead: {args.steps}-step tasks, {latency_ms:.0f} ms model latency"
    figures = Table(
        title,
        COLUMNS,
        [
            Row(
                f"wall time per step, median of {args.runs} tasks",
                [per_step[name] for name in VARIANTS],
                "ms",
            ),
            Row(
                f"overhead per step (minus {latency_ms:.0f} ms model latency)",
                [overhead[name] for name in VARIANTS],
                "ms",
            ),
            Row(
                "Keel overhead / bare temporalio overhead",
                [ratio, 1.0, None],
                "x",
                f"<= {TARGET_RATIO:.2f}x",
                ratio <= TARGET_RATIO,
            ),
            Row(
                f"history events per task ({args.steps} steps)",
                [events["keel"], events["bare"], None],
            ),
            Row(
                "history bytes per task",
                [size_bytes["keel"], size_bytes["bare"], None],
                "B",
            ),
        ],
    )
    where = Table(
        "Where each step's time goes (history timestamps; ms per step, mean)",
        COLUMNS[:2],
        [
            Row(kind, [breakdown["keel"].get(kind), breakdown["bare"].get(kind)], "ms")
            for kind in kinds
        ],
    )
    postgres = Table(
        "Keel's Postgres work per step (SQLAlchemy events on the worker's engine)",
        ["Keel"],
        [
            Row("SQL statements", [sql_per_step["statements"]]),
            Row("transactions committed", [sql_per_step["commits"]]),
            Row("pool checkouts", [sql_per_step["checkouts"]]),
            Row("time executing statements", [sql_per_step["execute_ms"]], "ms"),
            Row("one transaction (pool, 1 read, commit)", [transaction_ms[True]], "ms"),
            Row("the same without pool_pre_ping", [transaction_ms[False]], "ms"),
        ],
    )
    return Report(
        benchmark="step_overhead",
        config=vars(args),
        tables=[figures, where, postgres],
        detail={
            "task_seconds": {name: summary(times[name]) for name in VARIANTS},
            "per_step_ms": per_step,
            "overhead_per_step_ms": overhead,
            "history_sizes": sizes,
            "per_step_breakdown_ms": breakdown,
            "keel_postgres_per_step": sql_per_step,
            "transaction_ms": {
                "pre_ping": transaction_ms[True],
                "no_pre_ping": transaction_ms[False],
            },
            "profile": profile_summary,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="model calls per task")
    parser.add_argument("--latency", type=float, default=0.05, help="the fake model's seconds")
    parser.add_argument("--runs", type=int, default=10, help="measured tasks per variant")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured tasks per variant")
    parser.add_argument("--timeout", type=float, default=600, help="hard limit, seconds")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy extra Keel tasks after the measured ones"
    )
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    setup_logging()
    arm_watchdog(args.timeout)
    report = asyncio.run(measure(args))
    report.print()
    if report.detail["profile"]:
        print_profile(report.detail["profile"], "this process during Keel tasks")
    print(f"\nresults: {report.write()}")


if __name__ == "__main__":
    main()
