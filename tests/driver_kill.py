"""Shared by the driver-kill tests of every method: start ``raykd run ...`` as a subprocess in its own
session, SIGKILL the driver (by its pid) once ``ready()`` says the run is part-way, then run the same
command again and return that second attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable

import pytest


def kill_driver_then_rerun(cmd: list[str], cwd, env: dict, ready: Callable[[], bool], timeout: float = 600,
                           before_rerun: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    first = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and first.poll() is None and not ready():
            time.sleep(0.5)
        if first.poll() is not None or not ready():
            pytest.fail(f"the run did not get part-way in time (driver exit status {first.poll()})")
        os.kill(first.pid, signal.SIGKILL)  # the driver only; its local Ray is left to notice
        first.wait()
        if before_rerun is not None:
            before_rerun()
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # whatever the killed driver left behind in its session
        except ProcessLookupError:
            pass
