"""Best checkpoints: ranked only by validations that logged the metric, in the metric's own direction, and a
metric the run never logs refused at start instead of ending the run at its first validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning_helpers import sigterm_at_decode, tiny_overrides

from nar.config import load_config
from nar.errors import ConfigError
from nar.runs import TrainConfig
from nar.runs.config import TokenizerRunConfig

# FID validations of 8 samples against the reconstructions of 8 val samples (not all 32 of token_root's split):
# the ranking and the stops are the subject, and each reconstruction batch is an Inception pass at 299 px
FEW_REAL = {"data.eval_batch_size": 8, "data.limit_val_samples": 8}


def test_best_metric_must_be_logged_and_takes_its_direction() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.best_metric.*'val/fid' is not logged.*val/bits_per_token"):
        load_config(TrainConfig, [], ["trainer.keep_best=2", "eval.metrics=[]"])
    with pytest.raises(ConfigError, match=r"trainer\.best_metric.*val/is_mean"):  # IS needs a classifier
        load_config(TrainConfig, [], ["trainer.keep_best=1", "trainer.best_metric=val/is_mean", "eval.metrics=[is]"])
    modes = {key: load_config(TrainConfig, [], ["trainer.keep_best=1", f"trainer.best_metric={key}",
                                                  "eval.metrics=[fid,pr,kid]"]).best_mode()
             for key in ("val/fid", "val/precision", "val/kid_mean", "val/bits_per_token")}
    assert modes == {"val/fid": "min", "val/precision": "max", "val/kid_mean": "min", "val/bits_per_token": "min"}
    video = ["model.grid=[2,4,4]", "trainer.keep_best=1", "eval.metrics=[fvd]"]
    assert load_config(TrainConfig, [], [*video, "trainer.best_metric=val/fvd_proxy_inception"]).best_mode() == "min"
    with pytest.raises(ConfigError, match=r"trainer\.best_metric.*'val/fvd'"):  # no I3D: the proxy's key
        load_config(TrainConfig, [], [*video, "trainer.best_metric=val/fvd"])
    t2i = load_config(TrainConfig, [], ["trainer.keep_best=1", "trainer.best_metric=val/geneval_counting",
                                        "eval.metrics=[text]"])
    assert t2i.best_mode() == "max"
    # tokenizer runs log val/rfid (not val/fid), PSNR and SSIM (higher is better)
    tok = load_config(TokenizerRunConfig, [], ["trainer.keep_best=1"])
    assert tok.trainer.best_metric == "val/rfid" and tok.best_mode() == "min"
    assert load_config(TokenizerRunConfig, [], ["trainer.keep_best=1", "trainer.best_metric=val/psnr"]).best_mode() == "max"
    with pytest.raises(ConfigError, match=r"trainer\.best_metric.*val/rfid"):
        load_config(TokenizerRunConfig, [], ["trainer.keep_best=1", "val.rfid=false"])


def test_bits_only_validations_neither_end_the_run_nor_rank_a_step(token_root: Path, tmp_path: Path) -> None:
    """Validations at steps 2, 4, 6, 8 decode every second time (4 and 8): the best-by-FID files are those two
    steps. Lightning's own callback raised at step 2 (no val/fid), and the FID of step 4, left among the callback
    metrics, would have ranked step 6 too."""
    from nar.workflows.train import fit

    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="best", **{
        "trainer.max_steps": 8, "trainer.val_every": 2, "trainer.ckpt_every": 4, "trainer.keep_best": 3,
        "trainer.best_metric": "val/fid", "eval.decode_every": 2, "eval.num_samples": 4, **FEW_REAL}))
    fit(cfg, enable_progress_bar=False)
    best = sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("best_*.ckpt"))
    assert best == ["best_0000004.ckpt", "best_0000008.ckpt"]


def test_a_stop_during_a_decoding_validation_comes_within_a_chunk(token_root: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """SIGTERM while the first validation decodes (chunk 1 of 4): the validation ends after that chunk and counts
    for nothing (no score, no loss: --resume validates the step again), and the checkpoint is of that step, saved
    as the validation ends, instead of after every chunk of the validation or after one more step and an
    unscheduled validation of it."""
    from nar.errors import RunInterrupted
    from nar.lightning.logs import read_metrics
    from nar.runs.folder import read_checkpoint_info
    from nar.workflows.train import fit

    decoded = sigterm_at_decode(monkeypatch)
    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="stop", **{
        "trainer.max_steps": 50, "trainer.val_every": 2, "trainer.ckpt_every": 50, "trainer.keep_best": 1,
        "eval.num_samples": 16, "eval.batch_size": 4}))
    with pytest.raises(RunInterrupted):
        fit(cfg, enable_progress_bar=False)
    assert decoded == [4]
    assert read_checkpoint_info(cfg.run_dir / "checkpoints" / "last.ckpt").step == 2
    rows = read_metrics(cfg.run_dir)
    assert [r["step"] for r in rows] == [2] and not [k for k in rows[0] if k.startswith("val/")]
    assert not list((cfg.run_dir / "checkpoints").glob("best_*.ckpt"))


def test_a_stop_during_the_last_validation_is_an_interruption_and_resume_scores_it(token_root: Path, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """SIGTERM while the validation of the last step decodes: no step is left to save at, so the checkpoint is
    saved as fit ends and the run is interrupted (not a finished run without its final scores); --resume then
    validates that step again."""
    from nar.errors import RunInterrupted
    from nar.lightning.logs import read_metrics
    from nar.workflows.train import fit

    sigterm_at_decode(monkeypatch)
    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="last", **{
        "trainer.max_steps": 4, "trainer.val_every": 4, "eval.num_samples": 8, "eval.batch_size": 4, **FEW_REAL}))
    with pytest.raises(RunInterrupted):
        fit(cfg, enable_progress_bar=False)
    assert not any("val/fid" in r for r in read_metrics(cfg.run_dir))
    out = fit(cfg, resume=True, enable_progress_bar=False)
    assert out["global_step"] == 4 and "val/fid" in read_metrics(cfg.run_dir)[-1]


def test_decoding_validations_follow_the_step_and_val_every_counts_steps(token_root: Path, tmp_path: Path) -> None:
    """eval.decode_every picks validations by their step (every second one of val_every=2: steps 4, 8, 12), so a
    callback made fresh by a resume after step 2 decodes where an uninterrupted run does; and trainer.val_every
    counts optimizer steps when trainer.accumulate gathers several batches into one."""
    from types import SimpleNamespace

    from nar.lightning.callbacks.decoding import FrontierDecodingCallback
    from nar.lightning.trainer import build_trainer

    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, **{
        "trainer.max_steps": 12, "trainer.val_every": 2, "eval.decode_every": 2}))
    callback = FrontierDecodingCallback(cfg, tmp_path)
    decoded: list[int] = []
    callback.run = lambda trainer, pl_module: decoded.append(trainer.global_step)
    for step in (4, 6, 8, 10, 12):
        trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), global_step=step,
                                  max_steps=12)
        callback.on_validation_epoch_end(trainer, None)
    assert decoded == [4, 8, 12]

    accumulated = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, **{
        "trainer.val_every": 3, "trainer.accumulate": 2}))
    trainer = build_trainer(accumulated, logger=False, enable_progress_bar=False)
    assert trainer.val_check_interval == 3 * 2  # Lightning counts batches


def test_the_final_validation_ranks_and_a_sigterm_in_it_is_an_interruption(token_root: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """trainer.val_every=0: the validation the run ends with (outside fit) ranks a best checkpoint, which
    Lightning's callback skipped outside fitting; SIGTERM during it exits as interrupted (Lightning's stop is a
    SystemExit with status 0), and --resume validates the last step."""
    from nar.errors import RunInterrupted
    from nar.lightning.generation import ChunkGenerator
    from nar.lightning.logs import read_metrics
    from nar.workflows.train import fit

    over = {"trainer.max_steps": 3, "trainer.val_every": 0, "trainer.keep_best": 1, "trainer.best_metric": "val/fid",
            "eval.num_samples": 8, "eval.batch_size": 4, **FEW_REAL}
    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="ranked", **over))
    fit(cfg, enable_progress_bar=False)
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("best_*.ckpt")) == ["best_0000003.ckpt"]

    plain = ChunkGenerator.decode
    calls = sigterm_at_decode(monkeypatch)
    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="stopped", **over))
    with pytest.raises(RunInterrupted, match="during a validation at step 3"):
        fit(cfg, enable_progress_bar=False)
    assert calls == [4]  # stopped after its first chunk
    monkeypatch.setattr(ChunkGenerator, "decode", plain)
    fit(cfg, resume=True, enable_progress_bar=False)
    assert "val/fid" in read_metrics(cfg.run_dir)[-1]



@pytest.fixture
def sigint_kept():
    """The process's SIGINT handler as it was, whatever the test's run did to it; yields it."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    yield previous
    signal.signal(signal.SIGINT, previous)


def signal_at(monkeypatch, owner: type, method: str, signum: int) -> list[int]:
    """``signum`` to this process in the first call of ``owner.method`` (as Ctrl-C or a cluster's preemption
    lands there); returns one entry per call."""
    import os

    plain, calls = getattr(owner, method), []

    def wrapped(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, wrapped)
    return calls


@pytest.mark.parametrize("where", ["decoding", "loss batches"])
def test_ctrl_c_in_the_final_validation_is_an_interruption(token_root: Path, tmp_path: Path, monkeypatch, where,
                                                           sigint_kept) -> None:
    """Ctrl-C (SIGINT) in the validation a run ends with (outside fit) stops it as SIGTERM does: after the chunk
    being decoded, or after the loss batch it came in, and the run is interrupted (exit 75, not Lightning's
    KeyboardInterrupt exit 1), its checkpoint kept for --resume. The handler is left as it was."""
    import signal

    from nar.errors import RunInterrupted
    from nar.lightning.generation import ChunkGenerator
    from nar.lightning.generator_module import GeneratorModule
    from nar.runs.folder import read_checkpoint_info
    from nar.workflows.train import fit

    over = {"trainer.max_steps": 2, "trainer.val_every": 0, "eval.num_samples": 8, "eval.batch_size": 4,
            "eval.metrics": "[]"}
    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="ctrl-c", **over))
    owner, method = (ChunkGenerator, "decode") if where == "decoding" else (GeneratorModule, "validation_step")
    calls = signal_at(monkeypatch, owner, method, signal.SIGINT)
    with pytest.raises(RunInterrupted, match="stopped by SIGINT during a validation at step 2"):
        fit(cfg, enable_progress_bar=False)
    assert len(calls) == 1  # stopped after the chunk or batch it came in, of 2
    assert read_checkpoint_info(cfg.run_dir / "checkpoints" / "last.ckpt").step == cfg.trainer.max_steps
    assert signal.getsignal(signal.SIGINT) is sigint_kept
