"""Histories recorded by released versions still replay on this code: a change that would
break running workflows fails here (branch such changes with `workflow.patched`)."""

import pytest
from temporalio.client import WorkflowHistory

from tests.conftest import HISTORIES_DIR, REPLAYER

RECORDED = {path.stem: path.read_text() for path in sorted(HISTORIES_DIR.glob("*.json"))}


def test_histories_were_recorded() -> None:
    assert RECORDED, "tests/histories/ is empty: record with KEEL_RECORD_HISTORIES=1 make test"


@pytest.mark.parametrize("name", RECORDED)
async def test_recorded_history_replays(name: str) -> None:
    history = WorkflowHistory.from_json(name, RECORDED[name])
    await REPLAYER.replay_workflow(history)
