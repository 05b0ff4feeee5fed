"""Resume to the exact sample: a run stopped (or killed with SIGKILL) at step k and resumed from its checkpoint
trains on exactly the batches, in the same order and with the same losses, as an uninterrupted run; two
DataLoader workers, several epochs, through build_trainer's own callbacks (DataPositionCallback among them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from process_helpers import sigkill_once_exists
from token_data import write_token_shards

STEPS, STOP = 20, 11  # 8 batches per epoch: the stop falls mid-epoch 1, after an odd number of its batches


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), grid=(4, 4), vocab=64, train=96, val=8)


def overrides(tokens: Path, runs: Path, name: str, **extra) -> list[str]:
    base = {"name": name, "runs_root": str(runs), "data.root": str(tokens), "data.batch_size": 8,
            "data.num_workers": 2, "data.shuffle_buffer": 16, "data.samples_per_epoch": 64, "model.dim": 32,
            "model.n_layer": 1, "model.n_head": 2, "trainer.accelerator": "cpu", "trainer.precision": "32-true",
            "trainer.max_steps": STEPS, "trainer.val_every": 0, "trainer.ckpt_every": 5, "trainer.log_every": 1,
            "trainer.threads": 1, "eval.metrics": "[]", "eval.num_samples": 2, "eval.batch_size": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


class Recorder(Callback):
    """Sample keys and loss of every training step, optionally appended to a file as they happen."""

    def __init__(self, path: Path | None = None, stop_at: int | None = None) -> None:
        self.steps: list[tuple[int, list[str], float]] = []
        self.path, self.stop_at = path, stop_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        step = (trainer.global_step, list(batch["__key__"]), float(loss))
        self.steps.append(step)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(step) + "\n")
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def train(args: list[str], recorder: Recorder, resume: bool = False) -> None:
    """``nar train`` in this process, with ``recorder`` added to build_trainer's callbacks."""
    import nar.workflows.train as workflow
    from nar.lightning.callbacks.data_position import DataPositionCallback
    from nar.lightning.trainer import build_trainer

    def recorded(run, callbacks=None, **kw):
        trainer = build_trainer(run, [*(callbacks or []), recorder], **kw)
        assert any(isinstance(c, DataPositionCallback) for c in trainer.callbacks)
        return trainer

    original = workflow.build_trainer
    workflow.build_trainer = recorded
    try:
        workflow.fit(workflow.generator_config(overrides=args), resume=resume, final_validation=False,
                     enable_progress_bar=False)
    finally:
        workflow.build_trainer = original


def assert_same_steps(got: list, want: list) -> None:
    assert [s[0] for s in got] == [s[0] for s in want]
    for (step, keys, loss), (_, want_keys, want_loss) in zip(got, want):
        assert keys == want_keys, f"step {step}: other samples"
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6), f"step {step}: loss {loss} != {want_loss}"


@pytest.fixture(scope="module")
def uninterrupted(tokens, tmp_path_factory) -> list:
    recorder = Recorder()
    train(overrides(tokens, tmp_path_factory.mktemp("runs"), "full"), recorder)
    assert len(recorder.steps) == STEPS and len({k for _, keys, _ in recorder.steps for k in keys}) > 8
    return recorder.steps


def test_stopped_and_resumed_run_sees_the_same_batches(tokens, tmp_path, uninterrupted):
    first, second = Recorder(stop_at=STOP), Recorder()
    args = overrides(tokens, tmp_path, "stopped")
    train(args, first)
    assert [s[0] for s in first.steps] == list(range(1, STOP + 1))
    train(args, second, resume=True)  # from last.ckpt at step STOP
    assert_same_steps(first.steps + second.steps, uninterrupted)


RUN_AND_RECORD = """
    import sys
    sys.path[:0] = [{tests!r}, {here!r}]
    from pathlib import Path
    from test_exact_resume import Recorder, train
    train({args!r}, Recorder(Path({log!r})))
"""


def test_killed_and_resumed_run_sees_the_same_batches(tokens, tmp_path, uninterrupted):
    """SIGKILL after the checkpoint of step 10 (the run goes on a little meanwhile); the resume takes the newest
    intact checkpoint, and its steps plus the killed run's steps up to that checkpoint are the uninterrupted ones."""
    from nar.runs.folder import resume_checkpoint

    args, log = overrides(tokens, tmp_path, "killed"), tmp_path / "steps.jsonl"
    code = textwrap.dedent(RUN_AND_RECORD).format(tests=str(Path(__file__).parents[1]), here=str(Path(__file__).parent),
                                                  args=args, log=str(log))
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "killed" / "checkpoints" / "step_0000010.ckpt"
    sigkill_once_exists(proc, ckpt, 240, "checkpoint of step 10")
    saved = resume_checkpoint(tmp_path / "killed")
    assert saved is not None and saved.step >= 10
    killed = [json.loads(line) for line in log.read_text().splitlines()]
    resumed = Recorder()
    train(args, resumed, resume=True)
    steps = [tuple(s) for s in killed if s[0] <= saved.step] + resumed.steps
    assert_same_steps(steps, uninterrupted)


class _Killed(RuntimeError):
    pass


class _KillAt(Recorder):
    """Records like Recorder, and dies (an exception, as a crash) as the first batch after ``step`` starts."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise _Killed(f"killed at step {trainer.global_step}")


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_resumed_from_an_epochs_last_batch_with_a_validation_there(tokens, tmp_path, how):
    """Step 8 ends data epoch 0 and is a validation and checkpoint step: the resumed run trains on epoch 1, not
    epoch 2 (Lightning begins a pass over the finished epoch and drops it, after a stop once, after a crash twice;
    the stream must follow what was trained on, not the passes begun)."""
    extra = {"trainer.max_steps": 12, "trainer.val_every": 4, "trainer.ckpt_every": 4, "data.num_workers": 0}
    full = Recorder()
    train(overrides(tokens, tmp_path / "full", "full", **extra), full)
    args = overrides(tokens, tmp_path / "resumed", "resumed", **extra)
    first = Recorder(stop_at=8) if how == "stopped" else _KillAt(8)
    try:
        train(args, first)
    except _Killed:
        assert how == "killed"
    resumed = Recorder()
    train(args, resumed, resume=True)
    assert_same_steps(first.steps + resumed.steps, full.steps)


class _SignalAt(Recorder):
    """Records like Recorder, and takes SIGTERM (the preemption handler's own entry) as micro-batch ``at`` starts."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from nar.lightning.callbacks.run_guard import PreemptionCallback

        if self.seen == self.at:
            PreemptionCallback.of(trainer)._handle(15, None)
        self.seen += 1


def test_a_preemption_between_accumulated_batches_saves_at_the_optimizer_step(tokens, tmp_path):
    """trainer.accumulate=2 and SIGTERM during the first micro-batch of step 5: the checkpoint waits for the step
    (the first micro-batch's gradient is in no checkpoint), and the resumed run trains as the uninterrupted one."""
    from nar.errors import RunInterrupted

    extra = {"trainer.max_steps": 8, "trainer.accumulate": 2, "trainer.ckpt_every": 100, "data.num_workers": 0}
    full = Recorder()
    train(overrides(tokens, tmp_path / "full", "full", **extra), full)
    assert len(full.steps) == 16
    args = overrides(tokens, tmp_path / "pre", "pre", **extra)
    first = _SignalAt(2 * 4)
    with pytest.raises(RunInterrupted):
        train(args, first)
    assert [s[0] for s in first.steps][-2:] == [4, 5]  # stopped after step 5's second micro-batch
    resumed = Recorder()
    train(args, resumed, resume=True)
    assert_same_steps(first.steps + resumed.steps, full.steps)
