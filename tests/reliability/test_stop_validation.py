"""Validations around a stop (SIGTERM): none runs once the stop was asked, a validation the stop skipped or cut
short is the resumed run's first work, and the resumed run's TensorBoard log reads as an uninterrupted run's
(each step once, at the same x)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from nar.errors import RunInterrupted
from nar.lightning.logs import read_metrics
from nar.runs.folder import read_checkpoint_info
from token_data import write_token_shards


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), grid=(4, 4), vocab=64, train=96, val=8)


def overrides(tokens: Path, runs: Path, name: str, **extra) -> list[str]:
    base = {"name": name, "runs_root": str(runs), "data.root": str(tokens), "data.batch_size": 8,
            "data.num_workers": 0, "data.shuffle_buffer": 16, "model.dim": 32, "model.n_layer": 1, "model.n_head": 2,
            "trainer.accelerator": "cpu", "trainer.precision": "32-true", "trainer.max_steps": 8,
            "trainer.val_every": 4, "trainer.ckpt_every": 100, "trainer.log_every": 1, "trainer.threads": 1,
            "eval.metrics": "[]", "eval.num_samples": 4, "eval.batch_size": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


class SigtermAt(Callback):
    """Sends this process SIGTERM (the run's handler takes it) as the training batch of step ``train_step``
    starts (``global_step`` = train_step - 1), or as the first validation batch of step ``val_step`` starts; records
    the steps validated while fitting."""

    def __init__(self, train_step: int | None = None, val_step: int | None = None) -> None:
        self.train_step, self.val_step, self.validated = train_step, val_step, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.train_step is not None and trainer.global_step == self.train_step - 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.val_step is not None and trainer.global_step == self.val_step and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.validated.append(trainer.global_step)


def train(args: list[str], callback: Callback, monkeypatch, resume: bool = False) -> dict:
    import nar.workflows.train as workflow
    from nar.lightning.trainer import build_trainer

    monkeypatch.setattr(workflow, "build_trainer",
                        lambda run, callbacks=None, **kw: build_trainer(run, [*(callbacks or []), callback], **kw))
    return workflow.fit(workflow.generator_config(overrides=args), resume=resume, final_validation=False,
                        enable_progress_bar=False)


def scalars(run_dir: Path) -> dict[str, list[int]]:
    """The steps of every TensorBoard scalar, as TensorBoard shows them (one accumulator over the folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def uninterrupted(tokens, tmp_path_factory) -> dict[str, list[int]]:
    """The TensorBoard steps of the run uninterrupted (validations at steps 4 and 8)."""
    import nar.workflows.train as workflow

    runs = tmp_path_factory.mktemp("runs")
    workflow.fit(workflow.generator_config(overrides=overrides(tokens, runs, "full")), final_validation=False,
                 enable_progress_bar=False)
    steps = scalars(runs / "full")
    assert steps["val/loss"] == [3, 7] and steps["train/loss"] == list(range(8))  # Lightning logs step k at k - 1
    assert [r["step"] for r in read_metrics(runs / "full")] == [4, 8]
    return steps


def test_a_stop_far_from_a_validation_validates_nothing(tokens, tmp_path, monkeypatch):
    """SIGTERM during step 3 of a run validating every 50 steps: the checkpoint of step 3, and no validation
    (Lightning would run one because the stop set should_stop): no val/ row, no val/ scalar."""
    args = overrides(tokens, tmp_path, "far", **{"trainer.val_every": 50, "trainer.max_steps": 100})
    stop = SigtermAt(train_step=3)
    with pytest.raises(RunInterrupted, match="at step 3"):
        train(args, stop, monkeypatch)
    assert stop.validated == []
    assert read_checkpoint_info(tmp_path / "far" / "checkpoints" / "last.ckpt").step == 3
    assert read_metrics(tmp_path / "far") == []
    assert not [tag for tag in scalars(tmp_path / "far") if tag.startswith("val/")]


def test_a_stop_at_a_validation_step_leaves_that_validation_to_the_resume(tokens, tmp_path, monkeypatch,
                                                                          uninterrupted):
    """SIGTERM during step 4, a validation step: the stopped run saves step 4 and does not validate it; the
    resumed run validates step 4 before it trains step 5, and its log is the uninterrupted run's."""
    args = overrides(tokens, tmp_path, "due")
    stop = SigtermAt(train_step=4)
    with pytest.raises(RunInterrupted, match="at step 4"):
        train(args, stop, monkeypatch)
    assert stop.validated == [] and read_metrics(tmp_path / "due") == []
    resumed = SigtermAt()
    assert train(args, resumed, monkeypatch, resume=True)["global_step"] == 8
    assert resumed.validated == [4, 8]
    assert [r["step"] for r in read_metrics(tmp_path / "due")] == [4, 8]
    steps = scalars(tmp_path / "due")
    for tag in ("val/loss", "train/loss", "train/lr"):
        assert steps[tag] == uninterrupted[tag], tag


def test_a_stop_during_a_validation_is_validated_again_by_the_resume(tokens, tmp_path, monkeypatch, uninterrupted):
    """SIGTERM as the validation of step 4 starts: its decoding stops before the first chunk, the validation logs
    nothing and the checkpoint is of step 4 (not of step 5 after one more step and an unscheduled validation of
    it); the resumed run validates step 4 first, and its log is the uninterrupted run's."""
    args = overrides(tokens, tmp_path, "cut")
    stop = SigtermAt(val_step=4)
    with pytest.raises(RunInterrupted, match="at step 4"):
        train(args, stop, monkeypatch)
    assert stop.validated == [4]
    assert read_checkpoint_info(tmp_path / "cut" / "checkpoints" / "last.ckpt").step == 4
    assert not [tag for tag in scalars(tmp_path / "cut") if tag.startswith("val/")]
    resumed = SigtermAt()
    assert train(args, resumed, monkeypatch, resume=True)["global_step"] == 8
    assert resumed.validated == [4, 8]
    rows = read_metrics(tmp_path / "cut")
    assert [r["step"] for r in rows] == [4, 8] and all("val/bits_per_token" in r for r in rows)
    steps = scalars(tmp_path / "cut")
    for tag in ("val/loss", "val/forward_passes", "train/loss", "train/lr"):
        assert steps[tag] == uninterrupted[tag], tag
