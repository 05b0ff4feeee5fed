"""The tokenizer LightningModule on CPU: the loss goes down, every loss term and metric runs, checkpoints load."""

from __future__ import annotations

import logging

import pytest
import torch
from tokenizer_helpers import tiny_image, tiny_video
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning as L
from nar.lightning.tokenizer_module import TokenizerModule
from nar.tokenizers import TokenizerLossConfig, TokenizerOptimConfig, TokenizerValConfig, load_tokenizer
from nar.tokenizers.usage import CodebookUsage


class TinyExtractor(nn.Module):
    """Stands in for InceptionV3 in rFID (same protocol, 8 features)."""

    name, num_features, has_logits = "tiny", 8, False

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16, 8)

    def forward(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = nn.functional.adaptive_avg_pool2d(images_uint8.float() / 255, 4)  # [B, 3, 4, 4]
        return {"features": self.proj(pooled.flatten(1))}


def smooth_images(n: int, size: int = 16, frames: int = 0) -> torch.Tensor:
    """Low-frequency random images (or clips) in [-1, 1]: learnable in a handful of steps."""
    shape = (n, 3, frames, 4, 4) if frames else (n, 3, 4, 4)
    coarse = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mode = "trilinear" if frames else "bilinear"
    out_size = (frames, size, size) if frames else (size, size)
    return nn.functional.interpolate(coarse, size=out_size, mode=mode, align_corners=False)


def trainer(tmp_path, steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=kwargs.pop("logger", False),
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, num_sanity_val_steps=0, check_val_every_n_epoch=None,
                     log_every_n_steps=1, **kwargs)


def test_few_cpu_steps_lower_the_loss(tmp_path):
    images = smooth_images(8)
    module = TokenizerModule(tiny_image(), optim=TokenizerOptimConfig(lr=3e-3), val=TokenizerValConfig(rfid=False))

    def loss() -> float:
        module.eval()
        with torch.no_grad():
            return float(module.generator_losses(images, gan_on=False)["loss"])

    before = loss()
    module.train()
    loader = DataLoader(TensorDataset(images), batch_size=8)
    trainer(tmp_path, steps=12, limit_val_batches=0).fit(module, loader)
    after = loss()
    assert after < 0.7 * before, (before, after)


def test_gan_entropy_metrics_and_checkpoint_round_trip(tmp_path, caplog):
    images = smooth_images(8)
    loss = TokenizerLossConfig(entropy_weight=0.1, adversarial_weight=0.5, adversarial_start_step=1, disc_layers=1,
                               perceptual_weight=1.0, perceptual_vgg_path=str(tmp_path / "absent-vgg16.pth"))
    with caplog.at_level(logging.WARNING):
        module = TokenizerModule(tiny_image(), loss=loss, val=TokenizerValConfig(log_samples=4),
                                 fid_extractor=TinyExtractor())
    assert module.lpips is None and "perceptual loss is OFF" in caplog.text
    loader = DataLoader(TensorDataset(images), batch_size=4)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    run = trainer(tmp_path, steps=3, val_check_interval=3, limit_val_batches=2, logger=logger)
    run.fit(module, loader, loader)

    assert run.global_step == 3 and module.batches_seen == 3  # discriminator steps are not counted
    metrics = run.callback_metrics
    for key in ("train/loss", "train/gan", "train/gan_weight", "train/disc", "train/entropy", "val/psnr",
                "val/ssim", "val/codebook_usage", "val/codebook_perplexity", "val/rfid"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 < float(metrics["val/codebook_usage"]) <= 1
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))

    ckpt = tmp_path / "last.ckpt"
    run.save_checkpoint(ckpt)
    reloaded = load_tokenizer(ckpt)
    resumed = TokenizerModule(tiny_image(), val=TokenizerValConfig(rfid=False))
    resumed.on_load_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=False))
    assert resumed.batches_seen == 3  # the GAN start step survives a restart
    module.tokenizer.eval()
    assert torch.equal(reloaded.encode(images), module.tokenizer.encode(images))


def test_video_module_trains_and_logs_gifs(tmp_path):
    clips = smooth_images(4, size=16, frames=4)
    module = TokenizerModule(tiny_video(), loss=TokenizerLossConfig(reconstruction="l1"),
                             val=TokenizerValConfig(log_samples=2), fid_extractor=TinyExtractor())
    loader = DataLoader([{"video": c, "label": 0} for c in clips], batch_size=2)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    run = trainer(tmp_path, steps=2, val_check_interval=2, limit_val_batches=1, logger=logger)
    run.fit(module, loader, loader)
    assert {"val/psnr", "val/ssim", "val/rfid"} <= set(run.callback_metrics)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*")).parent))
    events.Reload()
    gif = events.Images("val/reconstructions")[0]
    assert gif.encoded_image_string[:6] == b"GIF89a"


def test_lpips_from_local_files(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    from nar.tokenizers.losses import build_lpips

    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, tmp_path / "vgg.pth")
    lpips = build_lpips(str(tmp_path / "vgg.pth"))
    x, y = smooth_images(2, 32), smooth_images(2, 32).flip(-1)
    assert torch.equal(lpips(x, x), torch.zeros(2))
    assert (lpips(x, y) > 0).all()


def test_codebook_usage_metric():
    usage = CodebookUsage(8)
    usage.update(torch.tensor([[0, 1], [1, 1]]))
    usage.update(torch.tensor([3]))
    result = usage.compute()
    assert float(result["usage"]) == pytest.approx(3 / 8)
    assert 1.0 < float(result["perplexity"]) < 3.0
