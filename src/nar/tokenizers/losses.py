"""Training losses of the VQ tokenizers: LPIPS (VGG16) perceptual distance and a PatchGAN discriminator.

Plain ``nn.Module``s; the Lightning module combines them. Videos are scored frame by frame.
Nothing is downloaded: the VGG16 weights come from a configured local file, the LPIPS linear heads
from a configured file or the copy that ships inside torchmetrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from nar.checkpoints import read_checkpoint
from nar.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# Where each LPIPS stage of torchvision's VGG16 ``features`` ends (after relu1_2 … relu5_3).
VGG_STAGE_ENDS = (4, 9, 16, 23, 30)
VGG_STAGE_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS' dropout before each linear head (nn.Dropout()'s default rate), active where it trains in train mode.
LPIPS_HEAD_DROPOUT = 0.5


def frames_as_images(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B*T, C, H, W]``; images pass through."""
    return rearrange(x, "b c t h w -> (b t) c h w") if x.dim() == 5 else x


def torchmetrics_lpips_heads() -> Path | None:
    """The LPIPS(VGG) linear heads that the installed torchmetrics ships, if present."""
    try:
        import torchmetrics.functional.image as tm_image
    except ImportError:
        return None
    path = Path(tm_image.__file__).parent / "lpips_models" / "vgg.pth"
    return path if path.is_file() else None


class LPIPS(nn.Module):
    """Learned perceptual distance (Zhang et al. 2018) on VGG16 features; inputs in [-1, 1], frozen.

    ``forward(x, y)`` returns one distance per image ``[N]`` (videos: per frame). ``dropout=True`` drops each
    head's input as LPIPS' dropout layers do in train mode (LlamaGen trains its tokenizer so: ``loss.lpips_dropout``).
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"])  # VGG16's convolutional trunk, without the 120M-weight classifier
        starts = (0, *VGG_STAGE_ENDS[:-1])
        self.stages = nn.ModuleList(features[a:b] for a, b in zip(starts, VGG_STAGE_ENDS))
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, kernel_size=1, bias=False) for w in VGG_STAGE_WIDTHS)
        # LPIPS's input scaling (ImageNet statistics expressed for [-1, 1] pixels)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path: str | Path, heads_path: str | Path | None = None) -> LPIPS:
        """Load VGG16 (torchvision state dict; ``features.*`` keys) and the LPIPS heads (``lin{i}.model.1.weight``)."""
        model = cls()
        vgg = read_checkpoint(vgg_path)
        vgg = {k.removeprefix("features."): v for k, v in vgg.items() if not k.startswith("classifier.")}
        for stage in model.stages:
            # slicing a Sequential keeps the layer indices, so a stage's keys are torchvision's keys
            missing = [key for key in stage.state_dict() if key not in vgg]
            if missing:
                raise CheckpointError(f"{vgg_path}: VGG16 weights {missing} missing (expects torchvision vgg16 keys)")
            stage.load_state_dict({key: vgg[key] for key in stage.state_dict()}, strict=True)
        heads_path = heads_path or torchmetrics_lpips_heads()
        if heads_path is None:
            raise CheckpointError("no LPIPS linear heads: set perceptual_lin_path (torchmetrics' lpips_models/vgg.pth)")
        heads = read_checkpoint(heads_path)
        for i, head in enumerate(model.heads):
            key = f"lin{i}.model.1.weight"
            if key not in heads:
                raise CheckpointError(f"{heads_path}: LPIPS head '{key}' missing")
            head.weight.data.copy_(heads[key])
        return model

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric: always eval mode; forward(dropout=True) asks for dropout

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, dropout: bool = False) -> torch.Tensor:
        h_x = (frames_as_images(x) - self.shift) / self.scale
        h_y = (frames_as_images(y) - self.shift) / self.scale
        total = h_x.new_zeros(h_x.shape[0])
        for stage, head in zip(self.stages, self.heads):
            h_x, h_y = stage(h_x), stage(h_y)
            diff = (_unit(h_x) - _unit(h_y)).square()
            if dropout:  # explicit: train() keeps this module in eval mode
                diff = F.dropout(diff, p=LPIPS_HEAD_DROPOUT, training=True)
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)


def build_lpips(vgg_path: str, heads_path: str = "") -> LPIPS | None:
    """LPIPS from local files, or ``None`` with a warning when the VGG16 file is not configured/present."""
    if not vgg_path or not Path(vgg_path).is_file():
        log.warning("perceptual loss is OFF: VGG16 weights file %r not found (set loss.perceptual_vgg_path "
                    "to a local torchvision vgg16 state dict)", vgg_path)
        return None
    return LPIPS.from_files(vgg_path, heads_path or None)


# The PatchGAN's convolutions: kernel 4, padding 1; the strides come from _disc_strides.
DISC_KERNEL, DISC_PADDING = 4, 1


def _disc_strides(layers: int) -> list[int]:
    """Stride of each convolution of a ``layers``-layer PatchDiscriminator: the stem and ``layers - 1`` more
    halve the image, the last hidden layer and the logit layer keep its size (each trims one pixel)."""
    return [2] + [2 if i < layers else 1 for i in range(1, layers + 1)] + [1]


def discriminator_output_size(image_size: int, layers: int) -> int:
    """Side of the patch-logit map that a ``layers``-layer PatchDiscriminator gives for ``image_size``-px inputs;
    below 1 when the images shrink under the 4x4 kernel on the way (the convolution would fail)."""
    size = image_size
    for stride in _disc_strides(layers):
        if size + 2 * DISC_PADDING < DISC_KERNEL:
            return 0
        size = (size + 2 * DISC_PADDING - DISC_KERNEL) // stride + 1
    return size


def check_discriminator_depth(image_size: int, layers: int) -> None:
    """Refuse (naming ``loss.disc_layers``) a discriminator whose kernels outgrow ``image_size``-px images, which
    would otherwise crash only when the GAN starts (``loss.adversarial_start_step``)."""
    if discriminator_output_size(image_size, layers) >= 1:
        return
    fitting = [n for n in range(1, layers) if discriminator_output_size(image_size, n) >= 1]
    remedy = (f"use loss.disc_layers<={fitting[-1]}" if fitting else
              "the images are too small for a PatchGAN: set loss.adversarial_weight=0")
    raise ConfigError(f"{layers} layers shrink {image_size}-px images (model.image_size) below the discriminator's "
                      f"{DISC_KERNEL}x{DISC_KERNEL} kernel; {remedy}", key="loss.disc_layers")


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) discriminator: ``[N, 3, H, W]`` -> patch logits ``[N, 1, h, w]``; videos per frame
    (``h = w =`` :func:`discriminator_output_size`)."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        strides = _disc_strides(layers)
        conv = {"kernel_size": DISC_KERNEL, "padding": DISC_PADDING}
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, stride=strides[0], **conv), nn.LeakyReLU(0.2, True)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            blocks += [nn.Conv2d(width, out, stride=strides[i], bias=False, **conv),
                       nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        blocks.append(nn.Conv2d(width, 1, stride=strides[-1], **conv))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(frames_as_images(x))


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """``‖∇ rec‖ / ‖∇ adv‖`` at the decoder's last layer (Esser et al.), clamped, without gradient."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
