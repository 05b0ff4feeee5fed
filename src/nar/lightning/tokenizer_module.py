"""LightningModule that trains a VQ tokenizer (image or video) and validates its reconstructions.

Objective (LlamaGen/taming): ``w_rec * rec + w_cb * ||sg(z) - e||^2 + beta * ||z - sg(e)||^2
+ w_ent * entropy + w_p * LPIPS + lambda * w_adv * GAN``, where ``lambda`` is the adaptive weight
(ratio of gradient norms at the decoder's last layer) once the GAN has started. Optimisation is manual
because the generator and the PatchGAN discriminator alternate within one batch. A resumed run trains with its own
``optim.weight_decay`` and ``optim.betas``, not those its checkpoint's optimizers were saved with (the learning rates
are set from the config at every step).

Validation logs ``val/psnr``, ``val/ssim`` (per frame for videos), ``val/codebook_usage``,
``val/codebook_perplexity``, ``val/rfid`` (when on), ``val/samples`` (validated on, all ranks) and the first batch's reconstructions to
TensorBoard (images as a grid, videos as animated GIFs).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

import lightning as L
from nar.config import from_dict, to_dict
from nar.errors import ConfigError
from nar.lightning.checkpointing import fit_optional_state
from nar.lightning.trainer import take_optimizer_settings
from nar.pictures import add_gif
from nar.tokenizers.config import TokenizerLossConfig, TokenizerOptimConfig, TokenizerValConfig, VQConfig
from nar.tokenizers.io import LIGHTNING_CONFIG_KEY
from nar.tokenizers.losses import (
    PatchDiscriminator,
    adaptive_adversarial_weight,
    build_lpips,
    check_discriminator_depth,
    frames_as_images,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from nar.tokenizers.usage import CodebookUsage
from nar.tokenizers.vq import VQTokenizer

log = logging.getLogger(__name__)


def _typed(schema: type, value: Any) -> Any:
    if value is None:
        return schema()
    if isinstance(value, schema):
        return value
    if isinstance(value, dict):
        return from_dict(schema, value)
    raise ConfigError(f"expected {schema.__name__} or dict, got {type(value).__name__}")


def batch_pixels(batch: Any) -> torch.Tensor:
    """The pixel tensor of a batch: ``{"image"|"video": x, ...}`` (nar.data), ``(x, ...)`` or ``x``."""
    if isinstance(batch, dict):
        for key in ("image", "video"):
            if key in batch:
                return batch[key]
        raise ConfigError(f"batch has no 'image' or 'video' entry (keys {sorted(batch)})")
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


class TokenizerModule(L.LightningModule):
    """Trains :class:`~nar.tokenizers.vq.VQTokenizer`; ``self.tokenizer`` is what gets exported.

    Checkpoints hold the tokenizer and (when ``loss.adversarial_weight > 0``) the discriminator, never the frozen
    LPIPS network, so a run resumes with the perceptual loss turned on or off. A resume that turns the GAN on
    trains a fresh discriminator (as one idle until ``loss.adversarial_start_step`` would start); one that turns
    it off drops the saved discriminator, with a warning.

    Args:
        model, loss, optim, val: typed configs (or their dicts, as stored in the checkpoint's hparams).
        fid_extractor: feature extractor for rFID (tests inject a tiny one); ``None`` = InceptionV3.
    """

    def __init__(self, model: VQConfig | dict, loss: TokenizerLossConfig | dict | None = None,
                 optim: TokenizerOptimConfig | dict | None = None, val: TokenizerValConfig | dict | None = None,
                 fid_extractor: nn.Module | None = None) -> None:
        super().__init__()
        self.model_cfg: VQConfig = _typed(VQConfig, model)
        self.loss_cfg: TokenizerLossConfig = _typed(TokenizerLossConfig, loss)
        self.optim_cfg: TokenizerOptimConfig = _typed(TokenizerOptimConfig, optim)
        self.val_cfg: TokenizerValConfig = _typed(TokenizerValConfig, val)
        self.save_hyperparameters({"model": to_dict(self.model_cfg), "loss": to_dict(self.loss_cfg),
                                   "optim": to_dict(self.optim_cfg), "val": to_dict(self.val_cfg)})
        self.automatic_optimization = False

        if self.loss_cfg.adversarial_weight > 0:
            check_discriminator_depth(self.model_cfg.image_size, self.loss_cfg.disc_layers)

        self.tokenizer = VQTokenizer(self.model_cfg)
        lpips = (build_lpips(self.loss_cfg.perceptual_vgg_path, self.loss_cfg.perceptual_lin_path)
                 if self.loss_cfg.perceptual_weight > 0 else None)
        # Unregistered on purpose (as nar.metrics' feature extractors): a fixed metric, so its weights stay out of
        # checkpoints and a resume may turn it on or off; it follows the inputs' device (perceptual_loss).
        object.__setattr__(self, "_lpips", lpips)
        self.discriminator = (PatchDiscriminator(self.loss_cfg.disc_channels, self.loss_cfg.disc_layers)
                              if self.loss_cfg.adversarial_weight > 0 else None)
        # Batches trained on (a host int: no device sync per step); saved in checkpoints.
        self.batches_seen = 0

        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # mean of per-image PSNR
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_usage = CodebookUsage(self.model_cfg.codebook_size)
        self.val_fid = self._build_fid(fid_extractor) if self.val_cfg.rfid else None

    def _build_fid(self, extractor: nn.Module | None):
        try:
            from nar.metrics.fidelity import ImageFidelity
        except ImportError as err:
            log.warning("val/rfid is OFF: nar.metrics.fidelity is unavailable (%s)", err)
            return None
        return ImageFidelity(("fid",), extractor=extractor, input_range=(-1.0, 1.0),
                             inception_weights=self.val_cfg.inception_weights or None)

    @property
    def lpips(self) -> nn.Module | None:
        """The frozen LPIPS network, or None when the perceptual loss is off (not a submodule: see __init__)."""
        return self._lpips

    # --- losses ---------------------------------------------------------------------------------
    def perceptual_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance of ``x_hat`` to ``x`` (``[B, 3, H, W]`` or ``[B, 3, T, H, W]``, per frame); with
        ``loss.lpips_dropout``, training steps drop the heads' inputs (LlamaGen's LPIPS in train mode)."""
        lpips = self._lpips
        if next(lpips.parameters()).device != x.device:
            lpips.to(x.device)
        return lpips(x_hat, x, dropout=self.training and self.loss_cfg.lpips_dropout).mean()

    def reconstruction_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        if self.loss_cfg.reconstruction == "l1":
            return F.l1_loss(x_hat, x)
        return F.mse_loss(x_hat, x)

    def generator_losses(self, x: torch.Tensor, gan_on: bool) -> dict[str, torch.Tensor]:
        """All terms of the tokenizer's objective for pixels ``x``; ``"loss"`` is the weighted total."""
        cfg = self.loss_cfg
        out = self.tokenizer(x, cfg.entropy_temperature if cfg.entropy_weight > 0 else None)
        x_hat, q = out.reconstruction, out.quantized
        terms = {"rec": self.reconstruction_loss(x, x_hat), "codebook": q.codebook_loss,
                 "commitment": q.commitment_loss, "entropy": q.entropy_loss}
        nll = cfg.reconstruction_weight * terms["rec"]
        if self.lpips is not None:
            terms["perceptual"] = self.perceptual_loss(x, x_hat)
            nll = nll + cfg.perceptual_weight * terms["perceptual"]
        total = (nll + cfg.codebook_weight * q.codebook_loss + cfg.commitment_beta * q.commitment_loss
                 + cfg.entropy_weight * q.entropy_loss)
        if gan_on:
            # Frozen for the generator's pass: gradients flow through it to x_hat, none land on its weights.
            self.discriminator.requires_grad_(False)
            terms["gan"] = generator_adversarial_loss(self.discriminator(x_hat))
            self.discriminator.requires_grad_(True)
            weight = (adaptive_adversarial_weight(nll, terms["gan"], self.tokenizer.last_layer)
                      if cfg.adaptive_weight and self.training else torch.ones((), device=x.device))
            terms["gan_weight"] = weight
            total = total + cfg.adversarial_weight * weight * terms["gan"]
        terms["loss"] = total
        terms["x_hat"] = x_hat
        return terms

    def gan_active(self) -> bool:
        return self.discriminator is not None and self.batches_seen >= self.loss_cfg.adversarial_start_step

    # --- training -------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch_pixels(batch)
        gan_on = self.gan_active()
        optimizers = self.optimizers()
        opt_g = optimizers[0] if isinstance(optimizers, list) else optimizers
        self._warmup(opt_g, self.optim_cfg.lr)

        terms = self.generator_losses(x, gan_on)
        x_hat = terms.pop("x_hat")
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"])
        if self.optim_cfg.grad_clip > 0:
            self.clip_gradients(opt_g, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()

        if gan_on:
            opt_d = optimizers[1]
            self._warmup(opt_d, self.optim_cfg.disc_lr)
            d_loss = hinge_discriminator_loss(self.discriminator(x.detach()), self.discriminator(x_hat.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)  # under DDP, Lightning re-arms gradient sync for each manual backward
            if self.optim_cfg.grad_clip > 0:  # both networks, as LlamaGen's vq_train.py clips them
                self.clip_gradients(opt_d, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
            # The unwrapped optimizer: Lightning would count this step in global_step, making max_steps
            # mean half as many batches once the GAN starts. (Precision "32" / "bf16-mixed" need no scaler.)
            opt_d.optimizer.step()
            terms["disc"] = d_loss.detach()
        self.batches_seen += 1
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"},
                      on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=x.shape[0])
        return terms["loss"].detach()

    def _warmup(self, optimizer: Any, base_lr: float) -> None:
        steps = self.optim_cfg.warmup_steps
        scale = min(1.0, (self.batches_seen + 1) / steps) if steps else 1.0
        for group in optimizer.param_groups:
            group["lr"] = base_lr * scale

    def optimizer_settings(self) -> list[list[dict[str, Any]]]:
        """Per optimizer (the tokenizer's, then the discriminator's when there is one), the weight decay and betas
        of each parameter group: the tokenizer's decayed weights, then its spared ones (weight decay 0)."""
        cfg = self.optim_cfg
        decayed, spared = {"weight_decay": cfg.weight_decay}, {"weight_decay": 0.0}
        settings = [[decayed, spared]] + ([[decayed]] if self.discriminator is not None else [])
        return [[{**group, "betas": tuple(cfg.betas)} for group in groups] for groups in settings]

    def configure_optimizers(self):
        cfg = self.optim_cfg
        # weight decay only on matrices/kernels, never on norms, biases or the codebook
        decay = [p for n, p in self.tokenizer.named_parameters() if p.dim() >= 2 and "embedding" not in n]
        no_decay = [p for n, p in self.tokenizer.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
        settings = self.optimizer_settings()
        opt_g = torch.optim.AdamW([{"params": decay, **settings[0][0]}, {"params": no_decay, **settings[0][1]}],
                                  lr=cfg.lr)
        if self.discriminator is None:
            return opt_g
        opt_d = torch.optim.AdamW([{"params": self.discriminator.parameters(), **settings[1][0]}], lr=cfg.disc_lr)
        return [opt_g, opt_d]

    def on_train_start(self) -> None:
        # After Lightning has restored a resumed checkpoint's optimizers, with the weight decay and betas of the run
        # that saved them: this run's take over (the learning rates are set at every step, _warmup).
        changed: list[str] = []
        for optimizer, groups in zip(self.trainer.optimizers, self.optimizer_settings()):
            changed += [c for c in take_optimizer_settings(optimizer, groups) if c not in changed]
        if changed and self.trainer.is_global_zero:
            log.info("step %d: the optimizers take this run's settings, not their checkpoint's: %s", self.global_step,
                     ", ".join(changed))

    # --- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = batch_pixels(batch)
        out = self.tokenizer(x)
        x_hat = out.reconstruction.clamp(-1.0, 1.0)
        self.log("val/loss", self.reconstruction_loss(x, out.reconstruction), on_epoch=True, sync_dist=True,
                 batch_size=x.shape[0])
        # the samples validated on, every rank's summed: fewer than selected where damaged ones were tolerated
        self.log("val/samples", float(x.shape[0]), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True,
                 batch_size=x.shape[0])
        real01, fake01 = (frames_as_images(x) + 1) / 2, (frames_as_images(x_hat) + 1) / 2
        self.val_psnr.update(fake01, real01)
        self.val_ssim.update(fake01, real01)
        self.val_usage.update(out.quantized.codes)
        if self.val_fid is not None:
            self.val_fid.update(frames_as_images(x), real=True)
            self.val_fid.update(frames_as_images(x_hat), real=False)
        if batch_idx == 0 and self.val_cfg.log_samples:
            self._log_reconstructions(x[: self.val_cfg.log_samples], x_hat[: self.val_cfg.log_samples])

    def on_validation_epoch_end(self) -> None:
        usage = self.val_usage.compute()
        metrics = {"val/psnr": self.val_psnr.compute(), "val/ssim": self.val_ssim.compute(),
                   "val/codebook_usage": usage["usage"], "val/codebook_perplexity": usage["perplexity"]}
        if self.val_fid is not None:
            try:  # compute() syncs first, so every rank takes the same branch
                metrics["val/rfid"] = self.val_fid.compute()["fid"]
            except ConfigError as err:  # fewer than two samples: no covariance
                log.warning("val/rfid skipped: %s", err)
            self.val_fid.reset()
        # metric objects are already synchronised across ranks by compute()
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=True)
        for metric in (self.val_psnr, self.val_ssim, self.val_usage):
            metric.reset()

    def _log_reconstructions(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image") or self.global_rank != 0:
            return
        real, fake = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1), ((x_hat.detach().float().cpu() + 1) / 2).clamp(0, 1)
        step = self.batches_seen
        if x.dim() == 4:
            from torchvision.utils import make_grid

            pairs = torch.stack([real, fake], dim=1).flatten(0, 1)  # original, reconstruction, original, ...
            writer.add_image("val/reconstructions", make_grid(pairs, nrow=2 * min(4, len(real))), step)
        else:
            side_by_side = torch.cat([real, fake], dim=-1)  # [B, 3, T, H, 2W]
            add_gif(writer, "val/reconstructions", side_by_side, step)

    # --- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lets nar.tokenizers.load_tokenizer read a training checkpoint directly
        checkpoint[LIGHTNING_CONFIG_KEY] = to_dict(self.model_cfg)
        checkpoint["batches_seen"] = self.batches_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_seen = int(checkpoint.get("batches_seen", 0))
        # Lightning loads the state dict strictly after this hook: fit it to the networks this config builds.
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for key in [k for k in state if k.startswith("lpips.")]:
            del state[key]  # written while LPIPS was a registered submodule: a fixed metric, never trained
        fit_optional_state(
            state, "discriminator.", self.discriminator is not None, lambda: self.discriminator.state_dict(),
            filled="the checkpoint has no discriminator (its run had loss.adversarial_weight=0): training a fresh "
                   "discriminator from here",
            dropped="loss.adversarial_weight=0: the checkpoint's discriminator weights are dropped (a later resume "
                    "with the GAN on starts a fresh one)")
