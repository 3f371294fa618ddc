"""Usage analytics: tasks, tool calls, tokens and API requests over the last days."""

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from activities import events
from api.deps import CurrentUser, DbSession
from schemas.api import Analytics, RouteStats, TokensOnDay, ToolCallStats

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])

# Outcomes of a tool call that ran and gave Claude a result.
SUCCESS_OUTCOMES = frozenset({"ok", "answered"})

_TASKS_BY_STATUS = """
SELECT t.status, count(*) AS tasks FROM tasks t
WHERE t.created_at >= :since {scope}
GROUP BY t.status
"""

# A call's latency runs from its first `tool_started` (retries included) to its result;
# refused and rejected calls never started and have none.
_TOOL_CALLS = """
SELECT f.data->>'tool' AS tool, f.data->>'outcome' AS outcome, count(*) AS calls,
       count(s.started_at) AS timed,
       coalesce(sum(extract(epoch FROM f.created_at - s.started_at) * 1000), 0) AS total_ms
FROM task_events f
JOIN tasks t ON t.id = f.task_id
LEFT JOIN LATERAL (
    SELECT min(s.created_at) AS started_at FROM task_events s
    WHERE s.task_id = f.task_id AND s.type = :started
      AND s.data->>'tool_use_id' = f.data->>'tool_use_id'
) s ON true
WHERE f.type = :finished AND f.created_at >= :since {scope}
GROUP BY 1, 2
"""

_TOKENS_BY_DAY = """
SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS llm_calls,
       sum(coalesce((m.usage->>'input_tokens')::bigint, 0)) AS input_tokens,
       sum(coalesce((m.usage->>'output_tokens')::bigint, 0)) AS output_tokens,
       sum(coalesce((m.usage->>'cache_creation_input_tokens')::bigint, 0))
           AS cache_creation_input_tokens,
       sum(coalesce((m.usage->>'cache_read_input_tokens')::bigint, 0)) AS cache_read_input_tokens
FROM messages m
JOIN tasks t ON t.id = m.task_id
WHERE m.role = 'assistant' AND m.usage IS NOT NULL AND m.created_at >= :since {scope}
GROUP BY 1
"""

_REQUESTS = """
SELECT r.method, r.route, count(*) AS requests,
       count(*) FILTER (WHERE r.status BETWEEN 400 AND 499) AS client_errors,
       count(*) FILTER (WHERE r.status >= 500) AS server_errors,
       round(avg(r.latency_ms)::numeric, 3)::float AS mean_latency_ms
FROM request_logs r
WHERE r.created_at >= :since {scope}
GROUP BY 1, 2
ORDER BY 3 DESC, 2, 1
"""


async def _rows(
    session: AsyncSession, sql: str, owner: str, user_id: str | None, **params: Any
) -> list[Any]:
    """Run one query, limited to `user_id`'s rows (through `owner`.user_id) unless None."""
    scope = f"AND {owner}.user_id = :user_id" if user_id is not None else ""
    connection = await session.connection()
    result = await connection.execute(text(sql.format(scope=scope)), {"user_id": user_id, **params})
    return list(result.all())


def _tool_stats(rows: list[Any]) -> list[ToolCallStats]:
    by_tool: dict[str, list[Any]] = {}
    for row in rows:
        by_tool.setdefault(row.tool, []).append(row)
    stats = []
    for tool, outcomes in sorted(by_tool.items()):
        calls = sum(row.calls for row in outcomes)
        succeeded = sum(row.calls for row in outcomes if row.outcome in SUCCESS_OUTCOMES)
        timed = sum(row.timed for row in outcomes)
        total_ms = sum(float(row.total_ms) for row in outcomes)
        stats.append(
            ToolCallStats(
                tool=tool,
                calls=calls,
                succeeded=succeeded,
                success_rate=round(succeeded / calls, 4),
                mean_latency_ms=round(total_ms / timed, 1) if timed else None,
                outcomes={row.outcome: row.calls for row in outcomes},
            )
        )
    return stats


@router.get("", response_model=Analytics)
async def analytics(
    user: CurrentUser,
    session: DbSession,
    days: int = Query(default=7, ge=1, le=90, description="The window: today and the days before."),
    all_users: bool = Query(default=False, description="Every user's, not just yours (admins)."),
) -> Analytics:
    """Your tasks by status, tool calls by tool (success rate, mean latency), tokens by day
    and API requests by route, over the last `days` days (UTC). Admins may ask for every
    user's with `all_users=true`; anyone else gets 403."""
    if all_users and not user.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "all_users: only an admin may see every user's analytics"
        )
    user_id = None if all_users else user.id
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=days - 1)
    since = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)

    tasks = await _rows(session, _TASKS_BY_STATUS, "t", user_id, since=since)
    tools = await _rows(
        session,
        _TOOL_CALLS,
        "t",
        user_id,
        since=since,
        started=events.TOOL_STARTED,
        finished=events.TOOL_FINISHED,
    )
    tokens = {
        row.day: row for row in await _rows(session, _TOKENS_BY_DAY, "t", user_id, since=since)
    }
    requests = await _rows(session, _REQUESTS, "r", user_id, since=since)
    return Analytics(
        scope="all_users" if all_users else "user",
        days=days,
        since=since,
        tasks_by_status={row.status: row.tasks for row in tasks},
        tool_calls=_tool_stats(tools),
        tokens_by_day=[
            TokensOnDay.model_validate(tokens[day]._mapping)
            if day in tokens
            else TokensOnDay(day=day)
            for day in (first_day + timedelta(days=offset) for offset in range(days))
        ],
        requests=[RouteStats.model_validate(row._mapping) for row in requests],
    )
