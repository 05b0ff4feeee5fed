"""What a resumed run takes from its config rather than from its checkpoint: the optimizer's hyper-parameters and
the learning-rate schedule (generator and tokenizer), and a TensorBoard log that shows each step once after a
kill left events past the checkpoint it resumes."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning as L
from nar.lightning.generator_module import lr_factor
from nar.lightning.trainer import take_optimizer_settings
from token_data import write_token_shards


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), grid=(4, 4), vocab=64, train=96, val=8)


def overrides(tokens: Path, runs: Path, **extra) -> list[str]:
    base = {"name": "run", "runs_root": str(runs), "data.root": str(tokens), "data.batch_size": 8,
            "data.num_workers": 0, "data.shuffle_buffer": 16, "model.dim": 32, "model.n_layer": 1, "model.n_head": 2,
            "trainer.accelerator": "cpu", "trainer.precision": "32-true", "trainer.max_steps": 10,
            "trainer.val_every": 0, "trainer.ckpt_every": 5, "trainer.log_every": 1, "trainer.threads": 1,
            "eval.metrics": "[]", "eval.num_samples": 2, "eval.batch_size": 2, "optim.warmup_steps": 0}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train(args: list[str], resume: bool = False) -> dict:
    from nar.workflows.train import fit, generator_config

    return fit(generator_config(overrides=args), resume=resume, final_validation=False, enable_progress_bar=False)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of ``<run>/tb`` as TensorBoard shows it (``read_scalars``: one accumulator over the folder,
    honouring a resumed writer's purge of the steps it logs again)."""
    from nar.lightning.logs import read_scalars

    return read_scalars(run_dir)


def groups(run_dir: Path) -> list[dict]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return state["optimizer_states"][0]["param_groups"]


def test_a_resume_trains_with_the_configured_optimizer_settings(tokens, tmp_path, caplog):
    """The reviewer's case: 10 steps at lr 1e-4 and weight decay 0.05, resumed with lr 1e-2, weight decay 0.5 (and
    other betas and eps): the resumed steps train with those (train/lr is the new lr), the spared group keeps no
    decay, and the log names what changed."""
    train(overrides(tokens, tmp_path, **{"optim.lr": 1e-4, "optim.weight_decay": 0.05}))
    with caplog.at_level(logging.INFO, logger="nar"):
        train(overrides(tokens, tmp_path, **{"trainer.max_steps": 20, "optim.lr": 1e-2, "optim.weight_decay": 0.5,
                                             "optim.betas": "[0.8,0.9]", "optim.eps": 1e-6}), resume=True)
    lrs = dict(scalars(tmp_path / "run")["train/lr"])
    assert sorted(lrs) == list(range(20))
    assert [lrs[s] for s in range(10)] == pytest.approx([1e-4] * 10)
    assert [lrs[s] for s in range(10, 20)] == pytest.approx([1e-2] * 10)
    saved = groups(tmp_path / "run")
    assert [g["weight_decay"] for g in saved] == [0.5, 0.0]
    assert all(tuple(g["betas"]) == (0.8, 0.9) and g["eps"] == 1e-6 and g["initial_lr"] == 1e-2 for g in saved)
    line = next(r.getMessage() for r in caplog.records if "takes this run's settings" in r.getMessage())
    for change in ("lr 0.0001 -> 0.01", "weight_decay 0.05 -> 0.5", "betas (0.9, 0.95) -> (0.8, 0.9)",
                   "eps 1e-08 -> 1e-06"):
        assert change in line, line


def test_a_longer_cosine_run_trains_its_first_resumed_step_at_the_new_schedule(tokens, tmp_path):
    """A cosine run of 10 steps ends at lr 0; given trainer.max_steps=20 at the resume, its step 11 trains at the
    20-step schedule's value for step index 10 (half the peak), not at the old schedule's 0."""
    lr = 1e-3
    train(overrides(tokens, tmp_path, **{"optim.lr": lr, "optim.schedule": "cosine"}))
    train(overrides(tokens, tmp_path, **{"optim.lr": lr, "optim.schedule": "cosine", "trainer.max_steps": 20}),
          resume=True)
    lrs = dict(scalars(tmp_path / "run")["train/lr"])
    assert [lrs[s] for s in range(10)] == pytest.approx([lr * lr_factor(s, 0, 10, "cosine", 0.0) for s in range(10)])
    assert [lrs[s] for s in range(10, 20)] == pytest.approx(
        [lr * lr_factor(s, 0, 20, "cosine", 0.0) for s in range(10, 20)])
    assert lrs[10] == pytest.approx(lr * 0.5)


def test_unchanged_settings_leave_the_optimizer_bit_for_bit():
    """Nothing changed: no value is touched (the exact resume), and nothing is reported."""
    weight = torch.nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.AdamW([{"params": [weight], "weight_decay": 0.05}, {"params": [], "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / 7)))
    for _ in range(3):
        opt.step()
        sched.step()
    before = [dict(g) for g in opt.param_groups]
    settings = [{"lr": 3e-4, "weight_decay": 0.05, "betas": (0.9, 0.95), "eps": 1e-8},
                {"lr": 3e-4, "weight_decay": 0.0, "betas": (0.9, 0.95), "eps": 1e-8}]
    assert take_optimizer_settings(opt, settings, sched) == []
    assert [dict(g) for g in opt.param_groups] == before
    assert take_optimizer_settings(opt, [{**settings[0], "lr": 1e-3}, settings[1]], sched) == [
        "lr 0.0003 -> 0.001", f"current lr {before[0]['lr']:g} -> {1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 7)):g}"]
    assert sched.base_lrs == [1e-3, 3e-4] and sched.get_last_lr()[0] == opt.param_groups[0]["lr"]


def test_a_resumed_tokenizer_takes_the_configured_weight_decay_and_betas(tmp_path):
    from nar.lightning.tokenizer_module import TokenizerModule
    from nar.tokenizers import TokenizerLossConfig, TokenizerOptimConfig, TokenizerValConfig, VQConfig

    vq = VQConfig(image_size=16, base_channels=16, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2], num_res_blocks=1,
                  z_channels=8, codebook_size=32, codebook_embed_dim=4, norm_groups=8)
    gan = TokenizerLossConfig(adversarial_weight=0.5, adversarial_start_step=0, disc_channels=8, disc_layers=1)
    images = DataLoader(TensorDataset(torch.rand(4, 3, 16, 16) * 2 - 1), batch_size=2)

    def fit(optim: TokenizerOptimConfig, steps: int, ckpt: str | None = None) -> TokenizerModule:
        module = TokenizerModule(vq, loss=gan, optim=optim, val=TokenizerValConfig(rfid=False))
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, images, ckpt_path=ckpt)
        if ckpt is None:
            trainer.save_checkpoint(tmp_path / "a.ckpt")
        return module

    fit(TokenizerOptimConfig(weight_decay=0.01), steps=1)
    resumed = fit(TokenizerOptimConfig(weight_decay=0.2, betas=[0.5, 0.9]), steps=2, ckpt=str(tmp_path / "a.ckpt"))
    tokenizer_opt, disc_opt = resumed.trainer.optimizers
    assert [g["weight_decay"] for g in tokenizer_opt.param_groups] == [0.2, 0.0]
    assert [g["weight_decay"] for g in disc_opt.param_groups] == [0.2]
    assert all(tuple(g["betas"]) == (0.5, 0.9) for o in (tokenizer_opt, disc_opt) for g in o.param_groups)


def test_a_resume_after_a_kill_logs_each_step_once(tokens, tmp_path):
    """A run killed after logging steps past its last intact checkpoint (here: the checkpoints of step 10 gone,
    step 5 left) resumes at step 5 and logs steps 6-10 again: TensorBoard shows each of them once, the
    resumed run's."""
    args = overrides(tokens, tmp_path)
    train(args)
    for name in ("last.ckpt", "step_0000010.ckpt"):
        (tmp_path / "run" / "checkpoints" / name).unlink()
    first = dict(scalars(tmp_path / "run")["train/loss"])
    assert train(args, resume=True)["global_step"] == 10
    losses = scalars(tmp_path / "run")["train/loss"]
    assert [s for s, _ in losses] == list(range(10))  # Lightning logs step k at k - 1
    again = dict(losses)
    assert [again[s] for s in range(5)] == [first[s] for s in range(5)]
    # steps 6-10 are the resumed run's (its own event file holds them), the killed run's copies are hidden
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    resumed_file = sorted((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))[-1]
    acc = EventAccumulator(str(resumed_file), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, again[s]) for s in range(5, 10)]


def test_extending_a_finished_run_keeps_its_final_validation_in_tensorboard(tokens, tmp_path):
    """A run that reached its max_steps logged its final validation at its last step and nothing past it: its
    extension (--resume with more steps) hides none of it, as a purge from that step would (nothing logs it again)."""
    from nar.workflows.train import fit, generator_config

    fit(generator_config(overrides=overrides(tokens, tmp_path)), final_validation=True, enable_progress_bar=False)
    before = dict(scalars(tmp_path / "run")["val/loss"])
    assert before
    extended = overrides(tokens, tmp_path, **{"trainer.max_steps": 12})
    assert train(extended, resume=True)["global_step"] == 12
    assert dict(scalars(tmp_path / "run")["val/loss"]) == before
    assert [s for s, _ in scalars(tmp_path / "run")["train/loss"]] == list(range(12))  # each step once
