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
    with pytest.raises(NonFiniteLossError, match=r"step 0 \(batch 7.*'a'"):
        m.training_step(b, 7)


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
