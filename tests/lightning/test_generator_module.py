"""GeneratorModule pieces: loss and per-axis losses, weight decay groups, schedule, EMA, the NaN guard."""

from __future__ import annotations

import math

import pytest
import torch

from nar.config import load_config
from nar.lightning.generator_module import GeneratorModule, NonFiniteLossError, lr_factor
from nar.runs import TrainConfig


def tiny(mode: str = "nar", **extra):
    over = {"model.dim": 32, "model.n_layer": 1, "model.n_head": 2, "model.vocab_size": 16, "model.grid": "[3,4]",
            "model.num_classes": 3, "model.mode": mode, "ema.decay": 0.5, "ema.warmup": "false", "trainer.log_every": 1, **extra}
    return GeneratorModule(load_config(TrainConfig, [], [f"{k}={v}" for k, v in over.items()]))


def batch(B: int = 4):
    g = torch.Generator().manual_seed(0)
    return {"tokens": torch.randint(0, 16, (B, 3, 4), generator=g), "label": torch.arange(B) % 3}


def test_loss_is_cross_entropy_of_mixed_logits_and_heads_are_named() -> None:  # log_every=1: heads logged
    torch.manual_seed(0)
    m = tiny(**{"optim.cond_dropout": 0.0})
    b = batch()
    logged = {}
    m.log = lambda k, v, **kw: logged.__setitem__(k, float(torch.as_tensor(v).detach()))  # no trainer attached
    loss = m.training_step(b, 0)
    logits = m.model.forward_train(b["tokens"].view(4, -1), b["label"])
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), b["tokens"].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert math.isclose(float(loss.detach()), math.log(16), rel_tol=1e-5)  # zero-initialised heads: uniform logits
    assert {"train/loss", "train/loss_row", "train/loss_col"} <= set(logged)


def test_weight_decay_only_on_matrices() -> None:
    m = tiny()
    opt = m.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.model.parameters()))
    assert not any(p is q for p in opt.param_groups[0]["params"] for q in m.ema_model.parameters())


def test_schedule() -> None:
    assert lr_factor(0, 10, 100, "constant", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, "linear", 0.0) == pytest.approx(0.5)


def test_warmup_can_start_from_a_fraction_of_the_rate_as_the_official_video_trainer() -> None:
    """NAR-videos' base trainer counts its step from 1 at the first update and multiplies the rate by
    ``r + (1 - r) * step / warmup`` (``r`` = min_lr_mult); optim.warmup_start_ratio=r does the same with our
    0-based steps. The default (0) keeps ``(step + 1) / warmup``."""
    warmup, total, r = 8, 100, 0.01

    def official(step: int) -> float:  # its 1-based step counter; this test only covers the warm-up part
        return r + (1.0 - r) * (step + 1) / warmup

    for step in (0, warmup // 2, warmup - 1):
        got = lr_factor(step, warmup, total, "cosine", 0.01, warmup_start_ratio=r)
        assert got == pytest.approx(official(step), rel=1e-12)
    assert lr_factor(warmup - 1, warmup, total, "cosine", 0.01, warmup_start_ratio=r) == pytest.approx(1.0)
    for step in range(warmup):  # the default is unchanged
        assert lr_factor(step, warmup, total, "cosine", 0.0) == pytest.approx((step + 1) / warmup)

    m = tiny(**{"optim.warmup_steps": warmup, "optim.warmup_start_ratio": r, "trainer.max_steps": total})
    opt = m.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["lr"] == pytest.approx(m.cfg.optim.lr * official(0))  # the rate of the first step


def official_epoch_cosine_lr(step: int, epoch_steps: int, epochs: int, lr: float, min_ratio: float) -> float:
    """train_t2i_webdata.py's scheduler as its loop drives it: ``CosineAnnealingLR(T_max=epochs, eta_min)``,
    one ``scheduler.step()`` after each epoch's optimizer steps (so epoch 0 trains at the full rate)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min_ratio * lr)
    for _ in range(step // epoch_steps):
        opt.step()  # no gradients: a no-op, in the order torch expects
        sched.step()
    return opt.param_groups[0]["lr"]


def test_cosine_can_move_once_per_epoch_as_the_official_t2i_scheduler() -> None:
    """optim.schedule_interval=epoch: the factor of every step of epoch e is the official per-epoch cosine's rate
    for e, from the full rate in epoch 0 to the last epoch's (above eta_min = min_lr_ratio x lr, which the
    official run never trains at), then min_lr_ratio if trainer.max_steps runs past optim.epochs."""
    epoch_steps, epochs, ratio = 7, 5, 0.01
    m = tiny(**{"optim.schedule": "cosine", "optim.schedule_interval": "epoch", "optim.epoch_steps": epoch_steps,
                "optim.epochs": epochs, "optim.min_lr_ratio": ratio, "trainer.max_steps": epoch_steps * epochs})
    lr, factor = m.cfg.optim.lr, m.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    last = epoch_steps * epochs - 1
    for step in (0, epoch_steps // 2, epoch_steps - 1, epoch_steps, 2 * epoch_steps + 3, last - epoch_steps + 1, last):
        assert lr * factor(step) == pytest.approx(official_epoch_cosine_lr(step, epoch_steps, epochs, lr, ratio),
                                                  rel=1e-9), step
    assert factor(0) == factor(epoch_steps - 1) == 1.0 and factor(epoch_steps) < 1.0  # moves at the boundary only
    assert factor(last) > ratio and factor(last + 1) == pytest.approx(ratio)
    # linear moves at the same boundaries: epoch e at 1 - e / epochs of the way down
    assert lr_factor(2 * epoch_steps + 3, 0, 100, "linear", 0.0, epoch_steps=epoch_steps, epochs=epochs,
                     interval="epoch") == pytest.approx(1.0 - 2 / epochs)
    # the default still moves every step over trainer.max_steps
    assert tiny(**{"optim.schedule": "cosine", "trainer.max_steps": 100}).configure_optimizers()[
        "lr_scheduler"]["scheduler"].lr_lambdas[0](50) == pytest.approx(0.5)


def test_an_epoch_schedule_after_a_warmup_counts_epochs_from_step_0() -> None:
    """The warm-up still moves every step; the epochs it overlaps are not shifted (as multistep counts them)."""
    epoch_steps, epochs = 4, 3
    got = [lr_factor(s, 6, 100, "cosine", 0.0, epoch_steps=epoch_steps, epochs=epochs, interval="epoch")
           for s in range(12)]
    assert got[:6] == pytest.approx([(s + 1) / 6 for s in range(6)])
    assert got[6:8] == pytest.approx([0.75, 0.75]) and got[8:] == pytest.approx([0.25] * 4)  # epochs 1 and 2


def test_epoch_steps_are_derived_for_an_epoch_schedule(token_root, tmp_path, caplog) -> None:
    """samples // global batch; a trainer.max_steps that is not optim.epochs of them is named."""
    from lightning_helpers import tiny_overrides

    from nar.data.shards import read_meta
    from nar.workflows.train import with_epoch_steps

    samples = int(read_meta(token_root)["splits"]["train"]["samples"])
    per_epoch = {"optim.schedule": "cosine", "optim.schedule_interval": "epoch", "data.batch_size": 4}
    with caplog.at_level("WARNING", logger="nar.workflows.train"):
        cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, **per_epoch, **{
            "optim.epochs": 3, "trainer.max_steps": 3 * (samples // 4)}))
        assert with_epoch_steps(cfg).optim.epoch_steps == samples // 4
        assert "trainer.max_steps" not in caplog.text
        with_epoch_steps(load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, **per_epoch)))
    assert "optim.epochs=300" in caplog.text and "trainer.max_steps=20" in caplog.text
    for unmoved in ({"optim.schedule": "cosine"}, {"optim.schedule": "constant", "optim.schedule_interval": "epoch"}):
        cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, **unmoved))
        assert with_epoch_steps(cfg).optim.epoch_steps is None  # no epochs to count: the data is not read


def test_an_epoch_schedule_without_epoch_steps_is_refused() -> None:
    from nar.errors import NarError

    with pytest.raises(NarError, match="epoch_steps"):
        tiny(**{"optim.schedule": "cosine", "optim.schedule_interval": "epoch"}).configure_optimizers()


@pytest.mark.parametrize("interval", ["epochs", "Step", ""])
def test_schedule_interval_must_be_step_or_epoch(interval: str) -> None:
    from nar.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule_interval"):
        load_config(TrainConfig, [], [f"optim.schedule_interval={interval}"])


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_warmup_start_ratio_out_of_range_names_the_key(ratio: float) -> None:
    from nar.errors import ConfigError

    with pytest.raises(ConfigError, match="warmup_start_ratio"):
        load_config(TrainConfig, [], [f"optim.warmup_start_ratio={ratio}"])


def test_ema_moves_towards_the_weights() -> None:
    m = tiny()
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.ema_model.parameters()]
    m.update_ema()  # decay 0.5: halfway
    for b, e, p in zip(before, m.ema_model.parameters(), m.model.parameters()):
        assert torch.allclose(e, (b + p) / 2, atol=1e-6)
    assert m.eval_model is m.ema_model


def test_non_finite_loss_names_step_and_batch() -> None:
    m = tiny()
    m.log = lambda *a, **k: None
    with torch.no_grad():
        m.model.heads[0].proj.weight.fill_(float("nan"))
    b = batch()
    b["__key__"] = ["a", "b", "c", "d"]
    with pytest.raises(NonFiniteLossError, match=r"step 0 \(batch 7.*'a'") as diverged:
        m.training_step(b, 7)
    from nar.errors import EXIT_RUNTIME

    assert diverged.value.exit_code == EXIT_RUNTIME  # a failure at run time (nar.errors), not a usage error


def test_raster_baseline_trains_with_the_same_trunk() -> None:
    m = tiny("raster")
    m.log = lambda *a, **k: None
    assert m.model.num_passes == 12 and tiny().model.num_passes == 6
    m.training_step(batch(), 0).backward()


def test_pixels_are_tokenized_on_the_fly() -> None:
    from nar.tokenizers import build_tokenizer

    tok = build_tokenizer("vq-tiny-emoji").eval()  # 32 px -> 8x8 tokens
    over = {"model.dim": 32, "model.n_layer": 1, "model.n_head": 2, "model.vocab_size": tok.codebook_size,
            "model.grid": "[8,8]", "model.num_classes": 3}
    m = GeneratorModule(load_config(TrainConfig, [], [f"{k}={v}" for k, v in over.items()]), tokenizer=tok)
    m.log = lambda *a, **k: None
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens, cond, _ = m.batch_inputs({"image": images, "label": torch.tensor([0, 2])})
    assert tokens.shape == (2, 64) and torch.equal(tokens, tok.encode(images).view(2, -1))
    m.training_step({"image": images, "label": torch.tensor([0, 2])}, 0).backward()
    assert not any(p.grad is not None for p in tok.parameters())  # the tokenizer stays frozen


@pytest.mark.parametrize("condition", ["class", "caption"])
def test_without_condition_dropout_every_weight_gets_a_gradient(condition: str) -> None:
    """DDP runs with find_unused_parameters=False: a parameter left out of the graph (the null caption when
    nothing is dropped) would stop the run at its second step. The null caption joins with a zero gradient."""
    torch.manual_seed(0)
    m = tiny(**{"optim.cond_dropout": 0.0, "model.condition": condition, "model.caption_dim": 8,
                "model.caption_len": 3})
    m.log = lambda *a, **k: None
    for head in m.model.heads:  # non-zero heads: every weight upstream of them gets a gradient
        torch.nn.init.normal_(head.proj.weight, std=0.1)
    b = batch()
    b["capfeat"], b["capmask"] = torch.randn(4, 3, 8), torch.ones(4, 3, dtype=torch.bool)
    torch.manual_seed(1)
    loss = m.training_step(b, 0)
    loss.backward()
    missing = [n for n, p in m.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    # the same loss as the model without any drop mask (the same dropout draws)
    tokens, cond, mask = m.batch_inputs(b)
    torch.manual_seed(1)
    assert torch.equal(loss.detach(), torch.nn.functional.cross_entropy(
        m.model.forward_train(tokens, cond, mask).reshape(-1, 16), tokens.reshape(-1)).detach())


def test_bf16_true_keeps_the_ema_in_float32(tmp_path) -> None:
    """trainer.precision=bf16-true casts the module to bf16, but an EMA step of (1 - decay) x the gap rounds away
    in bf16: the EMA copy stays float32 (lerping towards the bf16 weights), in checkpoints and through a resume,
    and validation (teacher forced and sampled) runs on it."""
    import lightning as L
    from nar.lightning.callbacks import FrontierDecodingCallback

    over = {"trainer.precision": "bf16-true", "ema.decay": 0.999, "optim.lr": 1e-2, "trainer.max_steps": 4,
            "eval.num_samples": 4, "eval.batch_size": 4, "eval.metrics": "[]"}
    torch.manual_seed(0)
    m = tiny(**over)
    data = torch.utils.data.DataLoader([{k: v[i] for k, v in batch(8).items()} for i in range(8)], batch_size=4)

    def trainer(**kw):
        args = dict(accelerator="cpu", devices=1, precision="bf16-true", max_steps=4, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0)
        return L.Trainer(**{**args, **kw})

    shadow: list[torch.Tensor] = []  # a float32 EMA of the same bf16 weights
    plain = GeneratorModule.update_ema

    def update_ema(self) -> None:
        if not shadow:
            shadow.extend(e.detach().float().clone() for e in self.ema_model.parameters())
        for s, p in zip(shadow, self.model.parameters()):
            s.lerp_(p.detach().float(), 1 - 0.999)
        plain(self)

    GeneratorModule.update_ema = update_ema
    try:
        trainer().fit(m, data)
    finally:
        GeneratorModule.update_ema = plain
    assert next(m.model.parameters()).dtype == torch.bfloat16
    ema = list(m.ema_model.parameters())
    assert all(e.dtype == torch.float32 for e in ema)
    assert max((e - s).abs().max().item() for e, s in zip(ema, shadow)) < 1e-6

    fitted = trainer()
    fitted.fit(m, data)  # nothing left to train: sets up the trainer that saves
    fitted.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    saved = {k: v for k, v in state.items() if k.startswith("ema_model.")}
    assert saved and all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
    resumed = tiny(**over)
    trainer().fit(resumed, data, ckpt_path=tmp_path / "last.ckpt")
    for name, value in resumed.ema_model.state_dict().items():
        assert value.dtype == saved[f"ema_model.{name}"].dtype and torch.equal(value, saved[f"ema_model.{name}"])

    decoding = FrontierDecodingCallback(resumed.cfg, tmp_path)
    trainer(callbacks=[decoding], limit_val_batches=1.0).validate(resumed, data, verbose=False)
    assert all(e.dtype == torch.float32 for e in resumed.ema_model.parameters())
    assert decoding.last_results["val/forward_passes"] == resumed.model.num_passes
