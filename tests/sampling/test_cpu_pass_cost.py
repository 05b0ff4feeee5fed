"""benchmarks/cpu_pass_cost.py runs end to end on a tiny trunk and reports every row of its tables."""

from __future__ import annotations

from script_helpers import run_script


def test_pass_cost_report(tmp_path):
    out = tmp_path / "cost.md"
    run_script("cpu_pass_cost.py", "--preset", "NAR-tiny", "--set", "grid=[4, 6]", "--batch", "2", "--reps", "1",
               "--rounds", "1", "--out", str(out))
    report = out.read_text()
    assert "grid [4, 6], batch 2" in report
    for row in ("| NAR |", "| raster |", "measured: whole generations", "summed over both schedules",
                "matmuls alone", "per-cell cost were zero"):
        assert row in report
    nar_row = next(line for line in report.splitlines() if line.startswith("| NAR |"))
    assert nar_row.split("|")[-2].strip() == "9"  # passes of a 4x6 grid: 4 + 6 - 1
