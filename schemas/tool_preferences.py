"""A user's own approval preference for a tool, and the policy it makes of the tool's own.
Pure: the API validates preferences with it and the workflow applies them when a task
begins."""

from enum import StrEnum

from schemas.agent_task import ToolPolicy


class ToolPreferenceValue(StrEnum):
    ALWAYS_ALLOW = "always_allow"
    ALWAYS_ASK = "always_ask"


def effective_policy(base: ToolPolicy, preference: str | None) -> ToolPolicy:
    """The policy the workflow enforces for a tool whose own policy is `base` and for which
    the user set `preference` (None: no preference). `never` stays `never` whatever the
    user prefers; `always_allow` lifts `confirm` to `auto`; `always_ask` turns `auto` into
    `confirm`. A preference that is not a `ToolPreferenceValue` raises ValueError rather
    than being guessed at."""
    if preference is None:
        return base
    choice = ToolPreferenceValue(preference)
    if base is ToolPolicy.NEVER:
        return base
    return ToolPolicy.AUTO if choice is ToolPreferenceValue.ALWAYS_ALLOW else ToolPolicy.CONFIRM
