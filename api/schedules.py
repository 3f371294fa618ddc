"""A user's schedule as a Temporal Schedule: the schedule its definition becomes, and the
view the API answers with (state and next runs from Temporal, the definition from
Postgres)."""

from datetime import timedelta
from zoneinfo import ZoneInfo

from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from core.settings import Settings
from schemas import search_attributes
from schemas.schedules import ScheduledRunInput, ScheduleView, parse_every
from schemas.tables import Schedule as ScheduleRow
from workflows.scheduled_run import SCHEDULED_CHANNEL, ScheduledRunWorkflow

NEXT_RUNS = 5


def temporal_id(row: ScheduleRow) -> str:
    """The Temporal Schedule's ID, which carries its owner."""
    return f"schedule-{row.user_id}-{row.id}"


def owner_attributes(user_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([SearchAttributePair(search_attributes.USER_ID, user_id)])


def temporal_schedule(row: ScheduleRow, settings: Settings, state: ScheduleState) -> Schedule:
    """What Temporal runs for this definition: a `ScheduledRunWorkflow` per firing, never
    two at once (a firing while the previous run is going, or waiting for an approval,
    is skipped), and none later than the catch-up window after its time."""
    spec = ScheduleSpec(
        cron_expressions=[row.cron] if row.cron else [],
        intervals=[ScheduleIntervalSpec(every=parse_every(row.every))] if row.every else [],
        time_zone_name=row.timezone,
    )
    action = ScheduleActionStartWorkflow(
        ScheduledRunWorkflow.run,
        ScheduledRunInput(
            schedule_id=row.id,
            user_id=row.user_id,
            prompt=row.prompt,
            agent=row.agent,
            session_id=row.session_id,
        ),
        id=f"scheduled-run-{row.id}",
        task_queue=settings.task_queue,
        typed_search_attributes=search_attributes.of_work(
            row.user_id, SCHEDULED_CHANNEL, row.agent
        ),
        static_summary=f"schedule {row.name!r}: {row.prompt[:80]}",
    )
    return Schedule(
        action=action,
        spec=spec,
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP,
            catchup_window=timedelta(seconds=settings.schedule_catchup_window_seconds),
        ),
        state=state,
    )


def schedule_view(row: ScheduleRow, description: ScheduleDescription) -> ScheduleView:
    info = description.info
    paused = description.schedule.state.paused
    zone = ZoneInfo(row.timezone)
    return ScheduleView(
        id=row.id,
        name=row.name,
        prompt=row.prompt,
        agent=row.agent,
        cron=row.cron,
        every=row.every,
        timezone=row.timezone,
        session_id=row.session_id,
        paused=paused,
        # A paused schedule does not fire, whatever Temporal computes for its spec.
        next_runs=[]
        if paused
        else [at.astimezone(zone) for at in info.next_action_times][:NEXT_RUNS],
        runs=info.num_actions,
        skipped_runs=info.num_actions_skipped_overlap,
        last_run_at=info.recent_actions[-1].started_at if info.recent_actions else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
