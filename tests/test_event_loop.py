"""Keel's long-running processes (`keel api`, `keel worker`, `keel dev`, `keel telegram`) run
on uvloop and stop cleanly on SIGTERM."""

import signal
import subprocess
import sys

UNTIL_SIGNAL = """
import asyncio
from workers.cli import _run_until_signal

async def main(stop):
    print(type(asyncio.get_running_loop()).__module__, flush=True)
    await stop.wait()
    print("stopped", flush=True)

_run_until_signal(main)
"""


def test_a_long_running_process_runs_on_uvloop_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", UNTIL_SIGNAL], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    loop_module = process.stdout.readline().strip()
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert loop_module == "uvloop"
    assert rest.strip() == "stopped"
    assert process.returncode == 0
