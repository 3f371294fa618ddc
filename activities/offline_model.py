"""A scripted stand-in for Claude, used by `keel dev` when no ANTHROPIC_API_KEY is set so
the whole flow can be tried offline. Every reply says what it is; it never pretends to be
Claude."""

from typing import Any

OFFLINE_LABEL = "[offline scripted model: set ANTHROPIC_API_KEY to talk to Claude]"


def offline_reply(
    conversation: list[dict[str, Any]], tool_names: list[str], seq: int
) -> tuple[list[dict[str, Any]], str]:
    """The next assistant content and stop reason: check the clock when the prompt asks
    about time, report a tool's result after it ran, otherwise echo the prompt."""
    last_blocks = conversation[-1]["content"]
    results = [block for block in last_blocks if block.get("type") == "tool_result"]
    if results:
        text = f"{OFFLINE_LABEL} The tool answered: {results[0]['content']}"
        return [{"type": "text", "text": text}], "end_turn"
    prompt = " ".join(block.get("text", "") for block in last_blocks)
    if "time" in prompt.lower() and "get_current_time" in tool_names:
        call = {"type": "tool_use", "id": f"offline_{seq}", "name": "get_current_time", "input": {}}
        return [{"type": "text", "text": f"{OFFLINE_LABEL} Checking the clock."}, call], "tool_use"
    return [{"type": "text", "text": f"{OFFLINE_LABEL} You said: {prompt}"}], "end_turn"


def offline_summary(summary: str | None, turns: list[tuple[str, str]]) -> str:
    """A labelled stand-in for Claude's running summary: the summary so far, then each
    folded turn's message and answer (the caller clips it to its budget)."""
    parts = [summary.removeprefix(OFFLINE_LABEL).strip()] if summary else []
    parts += [f"The user said: {text} The answer was: {answer}" for text, answer in turns]
    return " ".join([OFFLINE_LABEL, *parts])
