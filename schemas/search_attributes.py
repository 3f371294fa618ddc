"""Keel's search attributes, set on every task so operators can filter in the Web UI."""

from temporalio.common import SearchAttributeKey

USER_ID = SearchAttributeKey.for_keyword("KeelUserId")
CHANNEL = SearchAttributeKey.for_keyword("KeelChannel")
AGENT = SearchAttributeKey.for_keyword("KeelAgent")
PHASE = SearchAttributeKey.for_keyword("KeelPhase")
ALL = (USER_ID, CHANNEL, AGENT, PHASE)
