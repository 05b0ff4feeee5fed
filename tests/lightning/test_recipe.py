"""The official recipe as the ImageNet configs' defaults, checkpoint retention, throughput and profiling.

The learning rate and the parameter groups are compared with the official formulas of
NAR-images/autoregressive/train/train_c2i.py: ``MultiStepLR(milestones=[int(E*0.5), int(E*2/3), int(E*5/6)],
gamma=0.2)`` stepped once per epoch, weight decay on the parameters with >= 2 dimensions (named in the official
key format).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning_helpers import tiny_overrides

from nar.config import load_config
from nar.errors import ConfigError
from nar.lightning.generator_module import GeneratorModule
from nar.runs import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def official_lr(step: int, epoch_steps: int, epochs: int = 300, lr: float = 1e-4) -> float:
    """torch's MultiStepLR as the official loop drives it: one scheduler.step() after each epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(epochs * 0.5), int(epochs * 2 / 3), int(epochs * 5 / 6)], gamma=0.2)
    for _ in range(step // epoch_steps):
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.fixture(scope="module")
def imagenet_schedule() -> tuple[float, object]:
    """``(optim.lr, the lr factor of a step)`` of the NAR-B ImageNet recipe's scheduler, built once (one layer:
    the schedule does not depend on depth, and each full NAR-B took seconds to build)."""
    cfg = load_config(TrainConfig, [ROOT / "experiments/imagenet/nar_b.yaml"],
                      ["trainer.devices=8", "optim.epoch_steps=5004", "model.n_layer=1"])
    sched = GeneratorModule(cfg).configure_optimizers()["lr_scheduler"]["scheduler"]
    return cfg.optim.lr, sched.lr_lambdas[0]


@pytest.mark.parametrize("step", [0, 5003, 5004, 750_599, 750_600, 1_000_799, 1_000_800, 1_251_000, 1_501_199])
def test_learning_rate_follows_the_official_multistep(step: int, imagenet_schedule) -> None:
    lr, factor = imagenet_schedule
    assert lr * factor(step) == pytest.approx(official_lr(step, 5004), rel=1e-12)


def test_parameter_groups_match_the_official_rule() -> None:
    from nar.model.official import to_official_state_dict

    cfg = load_config(TrainConfig, [ROOT / "experiments/imagenet/nar_b.yaml"],
                      ["trainer.devices=8", "optim.epoch_steps=5004", "model.n_layer=2"])
    module = GeneratorModule(cfg)
    opt = module.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    official = to_official_state_dict(module.model)  # official names -> the same tensors' values
    ours_by_value = {name: p for name, p in module.model.named_parameters()}
    # The official rule: every parameter with >= 2 dimensions decays, the others do not. Match by shape and data.
    for name, tensor in official.items():
        match = [p for p in ours_by_value.values() if p.shape == tensor.shape and torch.equal(p.detach(), tensor)]
        assert match, name
        assert (id(match[0]) in decayed) == (tensor.dim() >= 2), name
    assert cfg.ema.enabled is False and cfg.optim.betas == [0.9, 0.95] and cfg.optim.grad_clip == 1.0


def test_the_video_recipe_spares_the_lookup_tables_from_weight_decay() -> None:
    """Its warm-up starts where NAR-videos' does. NAR-videos' trainer decays nn.Linear weights only: with optim.decay_embeddings=false the token and class
    tables (and an absolute position table) sit in the no-decay group; every other >= 2-D weight still decays."""
    ucf = load_config(TrainConfig, [ROOT / "experiments/ucf101/nar_l.yaml"],
                      ["model.n_layer=1", "model.dim=64", "model.n_head=2", "model.position=absolute"])
    assert ucf.optim.decay_embeddings is False
    module = GeneratorModule(ucf)
    optimizers = module.configure_optimizers()
    # base_trainer.py's warm-up line from min_lr_mult (= the cosine's floor) with its 1-based step counter
    mult, warmup = ucf.optim.min_lr_ratio, ucf.optim.warmup_steps
    factor = optimizers["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert factor(0) == pytest.approx(mult + (1 - mult) / warmup) and factor(warmup - 1) == pytest.approx(1.0)
    groups = optimizers["optimizer"].param_groups
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    tables = {"tok_embeddings.weight", "cls_embedding.embedding_table.weight", "pos_embedding"}
    matrices = {n for n, p in module.model.named_parameters() if p.dim() >= 2}
    assert tables <= matrices and decayed == matrices - tables  # every other matrix (wqkv, heads ...) decays
    image = load_config(TrainConfig, [ROOT / "experiments/imagenet/nar_b.yaml"], ["model.n_layer=1"])
    assert image.optim.decay_embeddings is True  # the image recipe decays them (test above)


def test_global_batch_is_fixed_whatever_the_devices() -> None:
    for devices, nodes, accumulate, per_device in ((8, 1, 1, 32), (4, 2, 1, 32), (8, 1, 2, 16), (1, 1, 1, 256)):
        cfg = load_config(TrainConfig, ["imagenet/nar_l.yaml"], [f"trainer.devices={devices}",
                                                                 f"trainer.num_nodes={nodes}",
                                                                 f"trainer.accumulate={accumulate}"])
        assert cfg.data.batch_size == per_device
    with pytest.raises(ConfigError, match=r"data\.global_batch.*trainer\.devices.*trainer\.accumulate"):
        load_config(TrainConfig, ["imagenet/nar_l.yaml"], ["trainer.devices=6"])


def test_an_explicit_batch_size_beside_global_batch_is_named(caplog) -> None:
    """data.global_batch decides the per-process batch: a data.batch_size of its own is replaced, not silently."""
    from nar.config import from_dict, to_dict

    with caplog.at_level("WARNING", logger="nar.runs.config"):
        cfg = load_config(TrainConfig, ["imagenet/nar_l.yaml"], ["data.batch_size=32", "trainer.devices=1"])
    assert cfg.data.batch_size == cfg.data.global_batch
    assert re.search(r"data\.batch_size.*32 is ignored.*data\.global_batch.*trainer\.accumulate", caplog.text)
    caplog.clear()
    with caplog.at_level("WARNING", logger="nar.runs.config"):
        cfg = load_config(TrainConfig, ["imagenet/nar_l.yaml"], ["trainer.devices=8"])
        assert from_dict(TrainConfig, to_dict(cfg)).data.batch_size == cfg.data.batch_size  # a stored config
        assert load_config(TrainConfig, [], ["data.batch_size=32"]).data.batch_size == 32  # no global_batch
    assert "data.batch_size" not in caplog.text


def test_retention_throughput_and_profiler(token_root: Path, tmp_path: Path) -> None:
    """keep_recent newest step files, a permanent one every keep_every, the best by val/loss; throughput and
    FLOP/s in TensorBoard; the profiler's report in the run folder; the disk estimate at start."""
    from nar.lightning.logs import read_scalars
    from nar.workflows.train import fit

    cfg = load_config(TrainConfig, [], tiny_overrides(token_root, tmp_path, name="keep", **{
        "trainer.max_steps": 12, "trainer.ckpt_every": 2, "trainer.keep_recent": 2, "trainer.keep_every": 6,
        "trainer.keep_best": 1, "trainer.best_metric": "val/loss", "trainer.val_every": 4, "trainer.log_every": 1,
        "trainer.profiler": "simple", "eval.metrics": "[]"}))
    fit(cfg, enable_progress_bar=False)
    names = sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("*.ckpt"))
    assert [n for n in names if n.startswith("step_")] == ["step_0000010.ckpt", "step_0000012.ckpt"]
    assert [n for n in names if n.startswith("keep_")] == ["keep_0000006.ckpt", "keep_0000012.ckpt"]
    assert len([n for n in names if n.startswith("best_")]) == 1 and "last.ckpt" in names
    scalars = read_scalars(cfg.run_dir)
    assert any("samples_per_sec" in k for k in scalars) and any("flops_per_sec" in k for k in scalars)
    assert list(cfg.run_dir.glob("*profile*.txt"))


def test_training_throughput_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/train_throughput.py (the GPU MFU measurement) on a tiny trunk on the CPU."""
    import json

    from script_helpers import run_script

    run_script("train_throughput.py", "--preset", "NAR-tiny", "--batch", "4", "--dtype", "fp32", "--device", "cpu",
               "--steps", "2", "--warmup", "1", "--out", str(tmp_path))
    row = json.loads(next(tmp_path.glob("train-NAR-tiny-*.json")).read_text())
    assert row["images_per_s"] > 0 and row["model_tflops_per_s"] > 0 and row["mfu"] is None  # no CPU peak


def official_t2i_lr(step: int, epoch_steps: int, epochs: int, lr: float = 1e-4) -> float:
    """train_t2i_webdata.py's CosineAnnealingLR(T_max=--epochs, eta_min=1e-6), one scheduler.step() after each
    epoch's optimizer steps."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-6)
    for _ in range(step // epoch_steps):
        opt.step()  # no gradients: a no-op, in the order torch expects
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize("stages, epochs, epoch_steps", [(["nar_xl.yaml"], 60, 7812),
                                                          (["nar_xl.yaml", "nar_xl_512.yaml"], 40, 3906)])
def test_t2i_learning_rate_follows_the_official_per_epoch_cosine(stages: list[str], epochs: int,
                                                                 epoch_steps: int) -> None:
    """Stage 1 (--epochs 60 of the 4M pairs) and stage 2 (a fresh scheduler, --epochs 40 of the 2M pairs): the rate
    of a step is the official per-epoch cosine's for its epoch, from the first step to the last."""
    cfg = load_config(TrainConfig, [ROOT / "experiments" / "t2i" / s for s in stages],
                      ["trainer.devices=8", f"optim.epoch_steps={epoch_steps}", "model.n_layer=1", "model.dim=64",
                       "model.n_head=2"])
    assert cfg.trainer.max_steps == epochs * epoch_steps
    factor = GeneratorModule(cfg).configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    last = cfg.trainer.max_steps - 1
    for step in (0, epoch_steps - 1, epoch_steps, epochs // 2 * epoch_steps + 5, last - epoch_steps + 1, last):
        assert cfg.optim.lr * factor(step) == pytest.approx(official_t2i_lr(step, epoch_steps, epochs), rel=1e-9)
