"""The baseline for `bench.approvals`: a bare temporalio workflow parked on an update,
with none of Keel's activities, Postgres or bookkeeping."""

from datetime import timedelta

from temporalio import workflow


@workflow.defn
class ParkedWorkflow:
    def __init__(self) -> None:
        self._approved = False

    @workflow.update
    def approve(self) -> None:
        self._approved = True

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._approved, timeout=timedelta(days=1))
