"""Running and importing the scripts under ``benchmarks/`` from the tests (not a test module)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``benchmarks/<name>`` with ``args`` in a fresh interpreter; fails the test (with its stderr) unless it exits 0."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>`` imported as a module (registered under its stem, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
