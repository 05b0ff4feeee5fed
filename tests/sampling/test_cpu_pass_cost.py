"""benchmarks/cpu_pass_cost.py runs end to end on a tiny trunk and reports every row of its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_pass_cost.py"


def test_pass_cost_report(tmp_path):
    out = tmp_path / "cost.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preset", "NAR-tiny", "--set", "grid=[4, 6]",
                           "--batch", "2", "--reps", "1", "--rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out.read_text()
    assert "grid [4, 6], batch 2" in report
    for row in ("| NAR |", "| raster |", "measured: whole generations", "summed over both schedules",
                "matmuls alone", "per-cell cost were zero"):
        assert row in report
    nar_row = next(line for line in report.splitlines() if line.startswith("| NAR |"))
    assert nar_row.split("|")[-2].strip() == "9"  # passes of a 4x6 grid: 4 + 6 - 1
