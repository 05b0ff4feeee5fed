"""Reading a run folder back: TensorBoard scalars, ``metrics.jsonl`` and sample grids (tests, notebook)."""

from __future__ import annotations

import json
from pathlib import Path


def read_scalars(run_dir: str | Path, prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar under ``<run_dir>/tb`` as ``{tag: [(step, value), ...]}`` sorted by step, as
    TensorBoard shows them: the event files of a folder are read by one accumulator, in order, so a resumed run's
    purge of the steps it logs again (a kill after the last checkpoint) hides the killed run's copies."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    tb = Path(run_dir) / "tb"
    for folder in sorted({events.parent for events in tb.glob("**/events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(prefix):
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``<run_dir>/metrics.jsonl`` (one per validation)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sample_grids(run_dir: str | Path) -> list[Path]:
    """PNG sample grids of a run, oldest first."""
    return sorted((Path(run_dir) / "samples").glob("step_*.png"))
