"""The tokenizer LightningModule on CPU: the loss goes down, every loss term and metric runs, checkpoints load."""

from __future__ import annotations

import logging

import pytest
import torch
from tokenizer_helpers import tiny_image, tiny_video
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning as L
from nar.errors import ConfigError
from nar.lightning.tokenizer_module import TokenizerModule
from nar.tokenizers import TokenizerLossConfig, TokenizerOptimConfig, TokenizerValConfig, load_tokenizer
from nar.tokenizers.losses import PatchDiscriminator
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


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised VGG16 trunk in torchvision's layout (``features.*``), as a local file."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    return path


def test_lpips_from_local_files(vgg_file):
    from nar.tokenizers.losses import build_lpips

    lpips = build_lpips(str(vgg_file))
    x, y = smooth_images(2, 32), smooth_images(2, 32).flip(-1)
    assert torch.equal(lpips(x, x), torch.zeros(2))
    assert (lpips(x, y) > 0).all()


def test_lpips_dropout_drops_the_head_inputs_as_llamagen_in_training(vgg_file):
    """LlamaGen's LPIPS puts nn.Dropout() (p=0.5) before each linear head and trains in train mode:
    dropout=True draws the same masks in the same order; the network itself stays frozen and in eval mode."""
    from nar.tokenizers.losses import build_lpips

    lpips = build_lpips(str(vgg_file))
    x, y = smooth_images(2, 32), smooth_images(2, 32).flip(-1)
    plain = lpips(x, y)
    torch.manual_seed(3)
    got = lpips(x, y, dropout=True)

    torch.manual_seed(3)
    drop = nn.Dropout().train()  # LPIPS' NetLinLayer: Dropout() then the 1x1 convolution
    h_x, h_y = (x - lpips.shift) / lpips.scale, (y - lpips.shift) / lpips.scale
    ref = torch.zeros(2)
    with torch.no_grad():
        for stage, head in zip(lpips.stages, lpips.heads):
            h_x, h_y = stage(h_x), stage(h_y)
            unit_x = h_x / (h_x.square().sum(1, keepdim=True).sqrt() + 1e-10)
            unit_y = h_y / (h_y.square().sum(1, keepdim=True).sqrt() + 1e-10)
            ref = ref + head(drop((unit_x - unit_y).square())).mean(dim=(1, 2, 3))
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, plain)
    assert not lpips.training and not any(p.requires_grad for p in lpips.parameters())
    assert torch.equal(lpips(x, y), plain)  # without dropout: the fixed metric


def test_lpips_dropout_is_on_in_training_steps_only_and_off_by_default(vgg_file):
    x = smooth_images(2)
    x_hat = x.flip(-1)

    def module(**loss) -> TokenizerModule:
        return TokenizerModule(tiny_image(), val=TokenizerValConfig(rfid=False), loss=TokenizerLossConfig(
            perceptual_weight=1.0, perceptual_vgg_path=str(vgg_file), **loss))

    dropping = module(lpips_dropout=True)
    plain = dropping.lpips(x_hat, x).mean()
    dropping.train()
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        draws.append(dropping.perceptual_loss(x, x_hat))
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[0], plain)
    dropping.eval()  # validation
    assert torch.equal(dropping.perceptual_loss(x, x_hat), plain)

    default = module()
    assert TokenizerLossConfig().lpips_dropout is False
    default.train()
    assert torch.equal(default.perceptual_loss(x, x_hat), plain)


def test_codebook_usage_metric():
    usage = CodebookUsage(8)
    usage.update(torch.tensor([[0, 1], [1, 1]]))
    usage.update(torch.tensor([3]))
    result = usage.compute()
    assert float(result["usage"]) == pytest.approx(3 / 8)
    assert 1.0 < float(result["perplexity"]) < 3.0


GAN = {"adversarial_weight": 0.5, "adversarial_start_step": 0, "disc_channels": 8, "disc_layers": 1}


def fit(tmp_path, module: TokenizerModule, steps: int, ckpt=None) -> L.Trainer:
    run = trainer(tmp_path, steps=steps, limit_val_batches=0)
    run.fit(module, DataLoader(TensorDataset(smooth_images(4)), batch_size=2), ckpt_path=ckpt)
    return run


@pytest.mark.parametrize("first,second", [
    ({}, GAN),
    (GAN, {}),
    ({"perceptual_vgg_path": "absent"}, {"perceptual_vgg_path": "vgg"}),
    ({"perceptual_vgg_path": "vgg"}, {"perceptual_vgg_path": "absent"}),
], ids=["gan-turned-on", "gan-turned-off", "lpips-found", "lpips-file-gone"])
def test_resume_with_changed_losses(tmp_path, vgg_file, caplog, first, second):
    """The frozen LPIPS network is no part of the checkpoint; a GAN turned on at resume starts a fresh
    discriminator (as one idle until adversarial_start_step would be), one turned off leaves its weights behind."""
    def module(fields: dict) -> TokenizerModule:
        paths = {"vgg": str(vgg_file), "absent": str(tmp_path / "absent-vgg16.pth")}
        if "perceptual_vgg_path" in fields:
            fields = {**fields, "perceptual_weight": 1.0, "perceptual_vgg_path": paths[fields["perceptual_vgg_path"]]}
        return TokenizerModule(tiny_image(), loss=TokenizerLossConfig(**fields), val=TokenizerValConfig(rfid=False))

    ckpt = tmp_path / "a.ckpt"
    fit(tmp_path, module(first), steps=1).save_checkpoint(ckpt)
    assert not [k for k in torch.load(ckpt, weights_only=False)["state_dict"] if k.startswith("lpips.")]
    resumed = module(second)
    with caplog.at_level(logging.INFO):
        run = fit(tmp_path, resumed, steps=2, ckpt=str(ckpt))
    assert resumed.batches_seen == 2
    if second is GAN:
        assert "a fresh discriminator" in caplog.text and "train/disc" in run.callback_metrics
    if first is GAN:
        assert "discriminator weights are dropped" in caplog.text


def test_a_checkpoint_holding_lpips_weights_still_resumes(tmp_path, vgg_file):
    """Checkpoints written while LPIPS was a registered submodule hold its weights: they are ignored."""
    from nar.tokenizers.losses import build_lpips

    loss = TokenizerLossConfig(perceptual_weight=1.0, perceptual_vgg_path=str(vgg_file))
    ckpt = tmp_path / "old.ckpt"
    fit(tmp_path, TokenizerModule(tiny_image(), loss=loss, val=TokenizerValConfig(rfid=False)), 1).save_checkpoint(ckpt)
    old = torch.load(ckpt, weights_only=False)
    old["state_dict"].update({f"lpips.{k}": v for k, v in build_lpips(str(vgg_file)).state_dict().items()})
    torch.save(old, ckpt)
    for lpips_on in (loss, TokenizerLossConfig()):
        resumed = TokenizerModule(tiny_image(), loss=lpips_on, val=TokenizerValConfig(rfid=False))
        fit(tmp_path, resumed, 2, ckpt=str(ckpt))
        assert resumed.batches_seen == 2


def test_resume_into_another_discriminator_names_the_key(tmp_path):
    from dataclasses import replace

    from nar.config import to_dict
    from nar.tokenizers.io import LIGHTNING_CONFIG_KEY
    from nar.workflows.tokenizer import check_resumable, tokenizer_config

    cfg = tokenizer_config("emoji", root="/nonexistent/shards",
                           overrides=[f"loss.{k}={v}" for k, v in {**GAN, "disc_layers": 2}.items()])
    ckpt = tmp_path / "last.ckpt"
    for theirs, refused in [(replace(cfg.loss, disc_layers=1), True), (cfg.loss, False),
                            (replace(cfg.loss, adversarial_weight=0.0, disc_layers=1), False)]:
        torch.save({LIGHTNING_CONFIG_KEY: to_dict(cfg.model), "hyper_parameters": {"loss": to_dict(theirs)}}, ckpt)
        if refused:
            with pytest.raises(ConfigError, match=r"last\.ckpt was trained with loss\.disc_layers=1 \(config: 2\)"):
                check_resumable(cfg, ckpt)
        else:
            check_resumable(cfg, ckpt)


def test_grad_clip_bounds_the_discriminator_too(tmp_path, monkeypatch):
    """optim.grad_clip clips both networks' gradients (as LlamaGen's vq_train.py does)."""
    clip, norms = 1e-3, {}
    original = TokenizerModule.training_step

    def step(self, batch, batch_idx):
        out = original(self, batch, batch_idx)
        for name, net in (("tokenizer", self.tokenizer), ("discriminator", self.discriminator)):
            norms[name] = float(torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None]).norm())
        return out

    monkeypatch.setattr(TokenizerModule, "training_step", step)
    torch.manual_seed(0)
    module = TokenizerModule(tiny_image(), loss=TokenizerLossConfig(**GAN), optim=TokenizerOptimConfig(grad_clip=clip),
                             val=TokenizerValConfig(rfid=False))
    fit(tmp_path, module, steps=1)
    assert set(norms) == {"tokenizer", "discriminator"}
    for name, norm in norms.items():
        assert 0 < norm <= clip * (1 + 1e-4), (name, norm)


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_a_discriminator_too_deep_for_the_images_fails_at_start_up(layers):
    """Each PatchGAN layer halves the images; once its 4x4 kernels no longer fit, the module refuses to build
    (naming loss.disc_layers) instead of crashing when the GAN starts."""
    cfg = tiny_image()
    x = torch.zeros(2, 3, cfg.image_size, cfg.image_size)  # two: batch norm needs more than one value
    try:
        PatchDiscriminator(8, layers)(x)
        fits = True
    except RuntimeError:  # "Kernel size can't be greater than actual input size"
        fits = False
    loss = TokenizerLossConfig(adversarial_weight=0.5, adversarial_start_step=10**6, disc_channels=8, disc_layers=layers)
    if fits:
        TokenizerModule(cfg, loss=loss, val=TokenizerValConfig(rfid=False))
    else:
        with pytest.raises(ConfigError, match=rf"loss\.disc_layers.*{cfg.image_size}"):
            TokenizerModule(cfg, loss=loss, val=TokenizerValConfig(rfid=False))
    TokenizerModule(cfg, loss=TokenizerLossConfig(disc_layers=layers), val=TokenizerValConfig(rfid=False))  # no GAN


def test_the_discriminator_output_size_is_what_it_computes():
    from nar.tokenizers.losses import discriminator_output_size

    for size in (4, 8, 16, 24, 32):
        for layers in (1, 2, 3):
            expected = discriminator_output_size(size, layers)
            if expected >= 1:
                assert PatchDiscriminator(8, layers)(torch.zeros(2, 3, size, size)).shape[-2:] == (expected, expected)
            else:
                with pytest.raises(RuntimeError):
                    PatchDiscriminator(8, layers)(torch.zeros(2, 3, size, size))


def test_the_run_config_checks_the_discriminator_depth():
    from nar.workflows.tokenizer import tokenizer_config

    with pytest.raises(ConfigError, match=r"loss\.disc_layers"):
        tokenizer_config("emoji", root="/nonexistent/shards",
                         overrides=["model.image_size=8", "loss.adversarial_weight=0.5", "loss.disc_layers=3"])
