"""Keel's metrics recorded by the workflow, through the SDK's meter: replay-safe (a
replayed workflow records nothing), and served on the worker's metrics endpoint beside
Temporal's own, labelled with the workflow type, namespace and task queue."""

from temporalio import workflow

TOOL_CALLS = "keel_tool_calls"
APPROVALS = "keel_approvals"


def count_tool_call(tool: str, outcome: str) -> None:
    """One tool call Claude asked for, by how it ended: `ok`, `error`, `failed`,
    `refused`, `rejected`, `expired`, `answered`..."""
    workflow.metric_meter().create_counter(
        TOOL_CALLS, "Tool calls by tool and outcome.", "calls"
    ).add(1, {"tool": tool, "outcome": outcome})


def count_approval(tool: str, decision: str) -> None:
    """One approval settled: `approved`, `rejected` or `expired`."""
    workflow.metric_meter().create_counter(
        APPROVALS, "Approvals by tool and decision.", "approvals"
    ).add(1, {"tool": tool, "decision": decision})
