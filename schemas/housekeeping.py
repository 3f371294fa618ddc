"""A housekeeping pass (`workflows.housekeeping`): what it is asked to do, and what it did."""

from pydantic import BaseModel, Field


class HousekeepingInput(BaseModel):
    """Set by the schedule from the worker's settings, so each run shows what it applied."""

    request_log_retention_days: int = Field(ge=1)
    # How far back closed workflows are looked for: the schedule runs every few minutes, so
    # a day covers a worker that was down for most of one.
    settle_lookback_hours: int = Field(default=24, ge=1)


class Pruned(BaseModel):
    """Rows deleted for being past their retention."""

    request_logs: int = 0
    telegram_updates: int = 0


class HousekeepingResult(BaseModel):
    settled_tasks: int
    pruned: Pruned
