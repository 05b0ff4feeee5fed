"""Helpers of the tests that kill a subprocess at a chosen point (imported by the tests; not a test module)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def sigkill_once_exists(proc: subprocess.Popen, path: Path, timeout: float, what: str) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists; fails (with its stderr) if it exits first or ``timeout`` passes."""
    deadline = time.time() + timeout
    try:
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else proc.returncode
            assert time.time() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
