"""Keel's search attributes, set on every task so operators can filter in the Web UI."""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

USER_ID = SearchAttributeKey.for_keyword("KeelUserId")
CHANNEL = SearchAttributeKey.for_keyword("KeelChannel")
AGENT = SearchAttributeKey.for_keyword("KeelAgent")
PHASE = SearchAttributeKey.for_keyword("KeelPhase")
ALL = (USER_ID, CHANNEL, AGENT, PHASE)


def of_work(
    user_id: str, channel: str, agent: str, phase: str | None = None
) -> TypedSearchAttributes:
    """The search attributes a task (with its phase) or a session (without) starts with."""
    pairs = [
        SearchAttributePair(USER_ID, user_id),
        SearchAttributePair(CHANNEL, channel),
        SearchAttributePair(AGENT, agent),
    ]
    if phase is not None:
        pairs.append(SearchAttributePair(PHASE, phase))
    return TypedSearchAttributes(pairs)
