"""The worker and API processes hide their start-up heap from the garbage collector."""

import subprocess
import sys

FREEZE_TWICE = """
import gc
import workers.worker
from workers.heap import freeze_startup_heap

freeze_startup_heap()
frozen = gc.get_freeze_count()
made_later = [[index] for index in range(10_000)]
freeze_startup_heap()
print(frozen, gc.get_freeze_count(), len(made_later))
"""


def test_the_start_up_heap_is_frozen_once_per_process() -> None:
    """Everything imported is frozen; a second call (`keel dev` runs the worker and the API
    in one process) freezes nothing more, so objects of tasks already running stay
    collectable."""
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_TWICE], capture_output=True, text=True, check=True
    )
    frozen, after_second_call, _ = done.stdout.splitlines()[-1].split()
    assert int(frozen) > 100_000  # Temporal, pydantic, SQLAlchemy, Keel's modules...
    assert int(after_second_call) == int(frozen)
