"""Typed configs of the VQ tokenizers and of their training losses, with the named presets.

One schema covers images and videos (``kind``) so a YAML file or ``key=value`` override can switch
between them; every range check lives in ``__post_init__`` and raises :class:`~nar.errors.ConfigError`
naming the key, so a bad config fails before any weight is allocated.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nar.errors import ConfigError

KINDS = ("image", "video")
CAUSAL_PADS = ("stride", "kernel")


@dataclass
class VQConfig:
    """A LlamaGen-style VQ tokenizer (``kind="image"``) or its 3-D causal counterpart (``"video"``).

    Level ``i`` of the encoder has ``base_channels * encoder_ch_mult[i]`` channels; every level but the
    last halves H and W (and T, for videos, where ``temporal_downsample[i]`` is true). The decoder mirrors
    this with one more res-block per level, as LlamaGen does.
    """

    # A preset's name (see PRESETS): in a YAML, ``model: {preset: vq-tiny-emoji}`` takes the preset's fields as
    # defaults and the section's other keys on top (nar.config.load_config). Informational once loaded.
    preset: str = field(default="", compare=False)
    kind: str = "image"
    image_size: int = 256  # H = W of the inputs the tokenizer is trained on
    num_frames: int = 1  # T of the video clips (1 for images)
    base_channels: int = 128
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2  # encoder; the decoder has one more per level
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    norm_groups: int = 32
    dropout: float = 0.0
    # video only: one flag per downsampling step (len(encoder_ch_mult) - 1), true = also halve T
    temporal_downsample: list[bool] = field(default_factory=list)
    # video only: frames a causal convolution pads in front: "stride" (kernel - time stride, so a step that halves
    # T still sees every frame: latent step j covers frames 2j-1 .. 2j+1) or "kernel" (kernel - 1, as video
    # tokenizers saved before 2026-12-07 were built: their halving steps never read frames 2j+1, the last ones)
    causal_pad: str = "stride"

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(why, key=key)

        if self.kind not in KINDS:
            raise bad("kind", f"must be one of {KINDS}, got {self.kind!r}")
        if self.causal_pad not in CAUSAL_PADS:
            raise bad("causal_pad", f"must be one of {CAUSAL_PADS}, got {self.causal_pad!r}")
        for key in ("image_size", "num_frames", "base_channels", "num_res_blocks", "z_channels",
                    "codebook_embed_dim", "norm_groups"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.codebook_size < 2:
            raise bad("codebook_size", f"must be >= 2, got {self.codebook_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.base_channels % self.norm_groups:  # the width of the stem, which the first block normalises
            raise bad("base_channels", f"{self.base_channels} is not divisible by norm_groups={self.norm_groups}")
        for key in ("encoder_ch_mult", "decoder_ch_mult"):
            mult = list(getattr(self, key))
            if not mult or min(mult) < 1:
                raise bad(key, f"must be a non-empty list of positive ints, got {mult}")
            for m in mult:
                if (self.base_channels * m) % self.norm_groups:
                    raise bad(key, f"width base_channels*{m} = {self.base_channels * m} is not divisible "
                                   f"by norm_groups={self.norm_groups}")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise bad("decoder_ch_mult", f"needs as many levels as encoder_ch_mult "
                                         f"({len(self.decoder_ch_mult)} vs {len(self.encoder_ch_mult)})")
        factor = self.spatial_downsample
        if self.image_size % factor:
            raise bad("image_size", f"{self.image_size} is not divisible by the spatial downsampling factor "
                                    f"{factor} (2 ** (len(encoder_ch_mult) - 1))")
        if self.kind == "image":
            if self.num_frames != 1:
                raise bad("num_frames", f"must be 1 for kind='image', got {self.num_frames}")
            if self.temporal_downsample:
                raise bad("temporal_downsample", "only applies to kind='video'")
        else:
            if len(self.temporal_downsample) != len(self.encoder_ch_mult) - 1:
                raise bad("temporal_downsample", f"needs one flag per downsampling step "
                                                 f"({len(self.encoder_ch_mult) - 1}), got {list(self.temporal_downsample)}")
            if self.num_frames % self.temporal_factor:
                raise bad("num_frames", f"{self.num_frames} is not divisible by the temporal downsampling "
                                        f"factor {self.temporal_factor}")

    @property
    def spatial_downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of an input of the configured size: ``(h, w)`` or ``(t, h, w)``."""
        hw = self.image_size // self.spatial_downsample
        return (hw, hw) if self.kind == "image" else (self.num_frames // self.temporal_factor, hw, hw)

    def decoded_size(self, grid: Sequence[int]) -> list[int]:
        """What a token grid decodes to: ``[H, W]`` for ``(h, w)``, ``[T, H, W]`` for ``(t, h, w)``."""
        factors = [self.spatial_downsample] * 2
        if len(grid) == 3:
            factors.insert(0, self.temporal_factor)
        return [g * f for g, f in zip(grid, factors)]

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> VQConfig:
        """A preset by name (see :data:`PRESETS`), with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown tokenizer preset {name!r}; known: {sorted(PRESETS)}")
        return replace(copy.deepcopy(PRESETS[name]), preset=name, **overrides)

    @classmethod
    def preset_fields(cls, name: str) -> dict[str, Any]:
        """The fields of preset ``name`` as a plain dict (the config loader's defaults for ``preset: name``)."""
        return asdict(cls.from_name(name))

    @classmethod
    def from_official(cls, official: dict[str, Any], **overrides: Any) -> VQConfig:
        """Translate LlamaGen's ``ModelArgs`` fields (as in the conformance fixture's ``config``)."""
        known = {"codebook_size", "codebook_embed_dim", "codebook_l2_norm", "encoder_ch_mult",
                 "decoder_ch_mult", "z_channels"}
        fields = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in official.items() if k in known}
        if "dropout_p" in official:
            fields["dropout"] = float(official["dropout_p"])
        fields.update(overrides)
        guessed = "image_size" not in fields
        if guessed:  # the official args carry no size; pick one the levels divide
            fields["image_size"] = max(256, 2 ** (len(fields.get("encoder_ch_mult", [1] * 5)) - 1))
        cfg = cls(**fields)
        # not a field (never saved or compared): says that image_size is this guess, not the size it was trained on
        # (LlamaGen's VQ-16 serves 256 and 512 px alike), so no check may hold a grid to it
        cfg.image_size_guessed = guessed
        return cfg


# Paper-scale and CPU-sized tokenizers. Tiny ones use 8 norm groups so that narrow widths stay legal.
PRESETS: dict[str, VQConfig] = {
    # LlamaGen VQ-16 (72M params), the tokenizer of NAR's ImageNet models: 256 px -> 16x16 tokens.
    "vq-16": VQConfig(),
    # LlamaGen VQ-8 (same widths, one level fewer): 256 px -> 32x32 tokens.
    "vq-8": VQConfig(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
    # 32 px emoji -> 8x8 tokens (widths 16/32/64, 0.77M parameters); 2000 steps of batch 16 reach
    # val PSNR 22.1 dB, SSIM 0.81 (experiments/tokenizers/README.md).
    "vq-tiny-emoji": VQConfig(image_size=32, base_channels=16, encoder_ch_mult=[1, 2, 4],
                              decoder_ch_mult=[1, 2, 4], num_res_blocks=1, z_channels=32,
                              codebook_size=512, codebook_embed_dim=8, norm_groups=8),
    # UCF-101 16x128x128 clips -> 4x16x16 tokens (the paper's video grid).
    "vq-video-ucf101": VQConfig(kind="video", image_size=128, num_frames=16, base_channels=128,
                                encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4],
                                z_channels=256, codebook_size=16384, codebook_embed_dim=8,
                                temporal_downsample=[True, True, False]),
    # Atari 16-frame clips at 32x32 -> 4x8x8 tokens (widths 16/32/64, 2.1M parameters), CPU-sized.
    "vq-video-tiny-atari": VQConfig(kind="video", image_size=32, num_frames=16, base_channels=16,
                                    encoder_ch_mult=[1, 2, 4], decoder_ch_mult=[1, 2, 4],
                                    num_res_blocks=1, z_channels=32, codebook_size=512,
                                    codebook_embed_dim=8, norm_groups=8,
                                    temporal_downsample=[True, True]),
}


@dataclass
class TokenizerLossConfig:
    """Weights of the training objective (LlamaGen's defaults where it has them)."""

    reconstruction: str = "l2"  # "l1" or "l2", on pixels in [-1, 1]
    reconstruction_weight: float = 1.0
    codebook_weight: float = 1.0  # ||sg(z) - e||^2 pulls codes to the encoder outputs
    commitment_beta: float = 0.25  # beta ||z - sg(e)||^2 keeps the encoder near its codes
    entropy_weight: float = 0.0  # > 0: sharp per-token code assignment with a spread-out average
    entropy_temperature: float = 0.01
    perceptual_weight: float = 0.0  # LPIPS(VGG16); needs perceptual_vgg_path (runs stop without it unless allow_degraded)
    perceptual_vgg_path: str = ""  # torchvision VGG16 state dict (features.* keys), a local file
    perceptual_lin_path: str = ""  # LPIPS linear heads; "" = the copy torchmetrics ships
    # true: LPIPS drops half of each linear head's input in training steps (p=0.5, as LlamaGen, whose LPIPS has
    # dropout layers and trains in train mode); the VGG trunk stays frozen and validation never drops
    lpips_dropout: bool = False
    adversarial_weight: float = 0.0  # > 0 turns on the PatchGAN discriminator
    adversarial_start_step: int = 0
    # scale the GAN term by the ratio of gradient norms at the last layer (taming's VQGAN); LlamaGen's VQLoss
    # leaves it off, so tokenizers/imagenet.yaml sets false
    adaptive_weight: bool = True
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        if self.reconstruction not in ("l1", "l2"):
            raise ConfigError(f"must be 'l1' or 'l2', got {self.reconstruction!r}", key="reconstruction")
        for key in ("reconstruction_weight", "codebook_weight", "commitment_beta", "entropy_weight",
                    "perceptual_weight", "adversarial_weight", "adversarial_start_step"):
            value = getattr(self, key)
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"must be a finite number >= 0, got {value}", key=key)
        if not 0 < self.entropy_temperature < math.inf:  # also refuses NaN
            raise ConfigError(f"must be > 0, got {self.entropy_temperature}", key="entropy_temperature")
        if self.disc_channels < 1 or self.disc_layers < 1:
            raise ConfigError("must be >= 1", key="disc_channels" if self.disc_channels < 1 else "disc_layers")


@dataclass
class TokenizerOptimConfig:
    """AdamW for the tokenizer and (when on) the discriminator; LlamaGen used lr 1e-4, betas (0.9, 0.95) and
    no weight decay (plain Adam: its --weight-decay flag is unused)."""

    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        # comparisons written so that NaN fails them
        for key in ("lr", "disc_lr"):
            if not 0 < getattr(self, key) < math.inf:
                raise ConfigError(f"must be a finite number > 0, got {getattr(self, key)}", key=key)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"two values in [0, 1), got {list(self.betas)}", key="betas")
        for key in ("weight_decay", "grad_clip", "warmup_steps"):
            if not 0 <= getattr(self, key) < math.inf:
                raise ConfigError(f"must be a finite number >= 0, got {getattr(self, key)}", key=key)


@dataclass
class TokenizerValConfig:
    """What validation measures and logs."""

    rfid: bool = True  # reconstruction FID with nar.metrics' InceptionV3 (per frame for videos)
    inception_weights: str = ""  # "" = the default converted FID network
    log_samples: int = 8  # reconstructions written to TensorBoard from the first validation batch

    def __post_init__(self) -> None:
        if self.log_samples < 0:
            raise ConfigError(f"must be >= 0, got {self.log_samples}", key="log_samples")
