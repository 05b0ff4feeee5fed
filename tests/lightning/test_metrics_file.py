"""MetricsFileCallback: one ``metrics.jsonl`` row per validated step, whatever resumes and crashes did before."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from nar.lightning.callbacks import MetricsFileCallback
from nar.lightning.logs import read_metrics


def _validate(callback: MetricsFileCallback, step: int, **metrics: float) -> None:
    """One validation's end at ``step`` on rank 0, with ``metrics`` as the trainer's callback metrics."""
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=step,
                              callback_metrics={"train/loss": 9.0, **metrics})
    callback.on_validation_end(trainer, None)


def test_a_step_validated_again_after_a_resume_replaces_its_row(tmp_path: Path) -> None:
    """A run stopped in (or right after) the validation of step 4 resumes from its step-4 checkpoint and validates
    step 4 again: that step keeps one row, the later one, in its place."""
    _validate(MetricsFileCallback(tmp_path), 2, **{"val/loss": 3.0})
    _validate(MetricsFileCallback(tmp_path), 4, **{"val/loss": 2.0})  # interrupted: its loss only
    resumed = MetricsFileCallback(tmp_path)
    resumed.load_state_dict({"train_seconds": 5.0})
    _validate(resumed, 4, **{"val/loss": 2.0, "val/fid": 80.0})
    _validate(resumed, 6, **{"val/loss": 1.5})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert rows[1] == {"step": 4, "train_seconds": 5.0, "val/loss": 2.0, "val/fid": 80.0}


def test_a_row_torn_by_a_crash_does_not_spoil_the_next_one(tmp_path: Path) -> None:
    """A kill in the middle of an append leaves half a line without its newline: the next validation's row must
    not be glued to it (the file would no longer parse); the torn fragment is dropped."""
    _validate(MetricsFileCallback(tmp_path), 2, **{"val/loss": 3.0})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "train_sec')
    _validate(MetricsFileCallback(tmp_path), 4, **{"val/loss": 2.0})
    assert [(r["step"], r["val/loss"]) for r in read_metrics(tmp_path)] == [(2, 3.0), (4, 2.0)]
