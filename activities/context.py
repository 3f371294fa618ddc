"""What Claude sees of a session: the turns before this one, as many as fit the agent's
token budget verbatim (each the user's message and the answer), older ones folded into a
running summary. Everything here counts tokens with `estimate_tokens`."""

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.agent_task import TaskStatus
from schemas.tables import ChatSession, SessionTurn, Task, utcnow

CHARS_PER_TOKEN = 4
# Of the budget, earlier turns (summary included) may take this share when a turn begins;
# the rest is the turn's own prompt, tool calls and results.
HISTORY_SHARE = 0.5
# The summary, and any one earlier turn, at most this share (a longer turn is clipped).
SUMMARY_SHARE = 0.25
CLIPPED = " [...]"

SUMMARY_INSTRUCTIONS = (
    "You keep the running summary of a conversation between a user and their assistant. "
    "Fold the new turns into the summary so far: keep facts, decisions, names, numbers, open "
    "questions and what the user wants; drop pleasantries. Answer with the summary alone, "
    "in plain prose, at most {words} words."
)


def estimate_tokens(content: Any) -> int:
    """About how many tokens Claude counts for `content` (a string, or Messages API JSON):
    one per four characters of its JSON form. Rounded up, and a little generous, so a
    context that fits by this estimate fits."""
    return -(-len(json.dumps(content, separators=(",", ":"))) // CHARS_PER_TOKEN)


def clip(text: str, tokens: int) -> str:
    """`text` if it fits in `tokens`, else its start, marked as clipped."""
    if estimate_tokens(text) <= tokens:
        return text
    cut = tokens * CHARS_PER_TOKEN
    while cut > 0 and estimate_tokens(text[:cut] + CLIPPED) > tokens:
        cut = cut * 3 // 4
    return text[:cut] + CLIPPED


@dataclass
class PastTurn:
    seq: int
    text: str
    answer: str


@dataclass
class SessionContext:
    """A turn's view of its session, read from Postgres."""

    session_id: str
    start: int  # the first turn of this conversation (after the latest fresh start)
    summary: str | None  # of the turns from `start` through `summary_through`
    summary_through: int
    turns: list[PastTurn]  # the earlier turns not in the summary, oldest first


def _answer(task: Task) -> str:
    """What the assistant said in a turn, or why it said nothing."""
    if task.status == TaskStatus.COMPLETED.value and task.result_text:
        return task.result_text
    return f"(no answer: the task {task.status}{': ' + task.error if task.error else ''})"


async def load_session_context(session: AsyncSession, task_id: str) -> SessionContext | None:
    """The context of the session turn this task answers; None for a task of no session."""
    turn = (await session.exec(select(SessionTurn).where(SessionTurn.task_id == task_id))).first()
    if turn is None:
        return None
    fresh_start = (
        await session.exec(
            select(func.max(SessionTurn.seq)).where(
                SessionTurn.session_id == turn.session_id,
                SessionTurn.seq <= turn.seq,
                col(SessionTurn.fresh_context),
            )
        )
    ).one()
    start = fresh_start or 0
    chat = await session.get(ChatSession, turn.session_id)
    assert chat is not None, "a turn's session row exists (foreign key)"
    summary = chat.summary if chat.summary_from_seq == start else None
    after = chat.summary_through_seq if summary is not None else start - 1
    rows = await session.exec(
        select(SessionTurn, Task)
        .join(Task, col(Task.id) == col(SessionTurn.task_id))
        .where(
            SessionTurn.session_id == turn.session_id,
            SessionTurn.seq > after,
            SessionTurn.seq >= start,
            SessionTurn.seq < turn.seq,
        )
        .order_by(col(SessionTurn.seq))
    )
    return SessionContext(
        session_id=turn.session_id,
        start=start,
        summary=summary,
        summary_through=after,
        turns=[PastTurn(row.seq, task.prompt, _answer(task)) for row, task in rows],
    )


def turn_messages(turn: PastTurn, budget: int) -> list[dict[str, Any]]:
    """An earlier turn as the user's message and the assistant's answer, each clipped so
    the pair stays within its share of the budget."""
    share = int(budget * SUMMARY_SHARE) // 2
    return [
        {"role": "user", "content": [{"type": "text", "text": clip(turn.text, share)}]},
        {"role": "assistant", "content": [{"type": "text", "text": clip(turn.answer, share)}]},
    ]


def _with_summary(summary: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with the summary as a first text block of the first (user) message."""
    if summary is None or not messages:
        return messages
    first = messages[0]
    block = {
        "type": "text",
        "text": f"<summary_of_earlier_conversation>\n{summary}\n</summary_of_earlier_conversation>",
    }
    return [{"role": first["role"], "content": [block, *first["content"]]}, *messages[1:]]


def context_messages(
    context: SessionContext, own: list[dict[str, Any]], budget: int
) -> list[dict[str, Any]]:
    """The messages for one Claude call of a session turn: summary, earlier turns and the
    turn's own conversation, within `budget`. Earlier turns go oldest first when the turn's
    own conversation has grown; the turn's own messages are always sent whole."""
    turns = list(context.turns)
    while True:
        history = [message for turn in turns for message in turn_messages(turn, budget)]
        messages = _with_summary(context.summary, history + own)
        if not turns or estimate_tokens(messages) <= budget:
            return messages
        turns.pop(0)


def summary_request(
    summary: str | None, turns: list[PastTurn], budget: int
) -> list[dict[str, Any]]:
    """The messages that ask Claude to fold `turns` into `summary`."""
    lines = [f"<summary_so_far>\n{summary or '(none yet)'}\n</summary_so_far>", "<new_turns>"]
    for turn in turns:
        user, assistant = turn_messages(turn, budget)
        lines.append(f"User: {user['content'][0]['text']}")
        lines.append(f"Assistant: {assistant['content'][0]['text']}")
    lines.append("</new_turns>")
    return [{"role": "user", "content": [{"type": "text", "text": "\n".join(lines)}]}]


def summary_instructions(budget: int) -> str:
    words = summary_tokens(budget) * 3 // 4
    return SUMMARY_INSTRUCTIONS.format(words=words)


def summary_tokens(budget: int) -> int:
    return int(budget * SUMMARY_SHARE)


def next_fold(context: SessionContext, budget: int) -> list[PastTurn]:
    """The oldest turns to fold into the summary in one Claude call, or none when the
    earlier turns fit their share. Folding goes on until the verbatim turns take no more
    than the history share less the summary's; each call's request fits the budget."""
    sizes = [estimate_tokens(turn_messages(turn, budget)) for turn in context.turns]
    summary = estimate_tokens(context.summary) if context.summary else 0
    if summary + sum(sizes) <= budget * HISTORY_SHARE:
        return []
    keep = budget * (HISTORY_SHARE - SUMMARY_SHARE)
    fold = 0
    while fold < len(sizes) and sum(sizes[fold:]) > keep:
        fold += 1
    chunk = context.turns[:1]
    for turn in context.turns[1:fold]:
        if estimate_tokens(summary_request(context.summary, [*chunk, turn], budget)) > budget:
            break
        chunk.append(turn)
    return chunk


async def store_summary(
    session: AsyncSession, context: SessionContext, summary: str, through: int
) -> None:
    """Keep the new summary unless a retried fold already got as far."""
    await session.exec(
        update(ChatSession)
        .where(
            col(ChatSession.id) == context.session_id,
            or_(
                col(ChatSession.summary_from_seq).is_distinct_from(context.start),
                col(ChatSession.summary_through_seq) < through,
            ),
        )
        .values(
            summary=summary,
            summary_from_seq=context.start,
            summary_through_seq=through,
            updated_at=utcnow(),
        )
    )
