"""The VQ tokenizer: LlamaGen's VQ architecture for images, the same body with causal 3-D convolutions
for videos. One class serves both (``config.kind``); its state-dict keys for images are LlamaGen's.

    x [B, 3, (T,) H, W] --encoder--> z [B, z_channels, *grid] --quant_conv--> [B, D, *grid]
      --quantize--> codes [B, *grid] --lookup--> [B, D, *grid] --post_quant_conv--> --decoder--> x_hat
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nar.tokenizers.blocks import AttnBlock, Downsample, FrameGroupNorm, ResnetBlock, Upsample, conv, swish
from nar.tokenizers.config import VQConfig
from nar.tokenizers.quantizer import QuantizerOutput, VectorQuantizer


def run_level(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One resolution level of the encoder or decoder: its res blocks, each followed by its attention
    block when the level has them (the resampling is left to the caller)."""
    for i, res in enumerate(block.res):
        h = res(h)
        if len(block.attn):
            h = block.attn[i](h)
    return h


class Encoder(nn.Module):
    """Levels of res-blocks, each but the last ending in a downsample; attention at the lowest level."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        dims = 2 if cfg.kind == "image" else 3
        groups, levels = cfg.norm_groups, len(cfg.encoder_ch_mult)
        widths = [cfg.base_channels * m for m in cfg.encoder_ch_mult]
        self.conv_in = conv(dims, 3, cfg.base_channels)
        self.conv_blocks = nn.ModuleList()
        block_in = cfg.base_channels
        for level, width in enumerate(widths):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                block.res.append(ResnetBlock(dims, block_in, width, groups, cfg.dropout))
                block_in = width
                if level == levels - 1:
                    block.attn.append(AttnBlock(width, groups))
            if level != levels - 1:
                temporal = dims == 3 and bool(cfg.temporal_downsample[level])
                block.downsample = Downsample(dims, width, temporal, cfg.causal_pad)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(dims, block_in, block_in, groups, cfg.dropout),
                                  AttnBlock(block_in, groups),
                                  ResnetBlock(dims, block_in, block_in, groups, cfg.dropout)])
        self.norm_out = FrameGroupNorm(block_in, groups)
        self.conv_out = conv(dims, block_in, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = run_level(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder` from the lowest level up, with one extra res-block per level."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        dims = 2 if cfg.kind == "image" else 3
        groups, levels = cfg.norm_groups, len(cfg.decoder_ch_mult)
        block_in = cfg.base_channels * cfg.decoder_ch_mult[-1]
        self.conv_in = conv(dims, cfg.z_channels, block_in)
        self.mid = nn.ModuleList([ResnetBlock(dims, block_in, block_in, groups, cfg.dropout),
                                  AttnBlock(block_in, groups),
                                  ResnetBlock(dims, block_in, block_in, groups, cfg.dropout)])
        self.conv_blocks = nn.ModuleList()
        for index, level in enumerate(reversed(range(levels))):  # index 0 = lowest resolution
            width = cfg.base_channels * cfg.decoder_ch_mult[level]
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                block.res.append(ResnetBlock(dims, block_in, width, groups, cfg.dropout))
                block_in = width
                if index == 0:
                    block.attn.append(AttnBlock(width, groups))
            if level != 0:
                # undoes the encoder's downsample between levels level-1 and level
                temporal = dims == 3 and bool(cfg.temporal_downsample[level - 1])
                block.upsample = Upsample(dims, width, temporal)
            self.conv_blocks.append(block)
        self.norm_out = FrameGroupNorm(block_in, groups)
        self.conv_out = conv(dims, block_in, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            h = run_level(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


@dataclass
class VQForward:
    """Training-pass outputs: ``reconstruction`` like the input, plus the quantizer's codes and losses."""

    reconstruction: torch.Tensor
    quantized: QuantizerOutput


class VQTokenizer(nn.Module):
    """Image (``[B, 3, H, W]``) or video (``[B, 3, T, H, W]``) VQ tokenizer, pixels in ``[-1, 1]``.

    The tokenizer interface used everywhere in ``nar``: :attr:`codebook_size`, :meth:`grid_shape`,
    :meth:`encode` and :meth:`decode`. :meth:`forward` is the training pass.
    """

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        dims = 2 if config.kind == "image" else 3
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim, config.codebook_l2_norm)
        self.quant_conv = conv(dims, config.z_channels, config.codebook_embed_dim, kernel=1)
        self.post_quant_conv = conv(dims, config.codebook_embed_dim, config.z_channels, kernel=1)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def input_axes(self) -> int:
        """Number of grid axes: 2 for images, 3 for videos."""
        return 2 if self.config.kind == "image" else 3

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def grid_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid of an input: ``(H, W)`` -> ``(H/f, W/f)``; ``(T, H, W)`` -> ``(T/ft, H/f, W/f)``.

        Leading entries (batch, channels) are ignored, so ``x.shape`` works as well.
        """
        sizes = tuple(int(s) for s in input_shape)[-self.input_axes:]
        if len(sizes) != self.input_axes:
            raise ValueError(f"{self.config.kind} tokenizer needs {self.input_axes} trailing sizes, got {tuple(input_shape)}")
        factors = (self.config.spatial_downsample,) * 2
        if self.input_axes == 3:
            factors = (self.config.temporal_factor, *factors)
        if any(s % f for s, f in zip(sizes, factors)):
            raise ValueError(f"input sizes {sizes} are not divisible by the downsampling factors {factors}")
        return tuple(s // f for s, f in zip(sizes, factors))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.input_axes + 2 or x.shape[1] != 3:
            layout = "[B, 3, H, W]" if self.input_axes == 2 else "[B, 3, T, H, W]"
            raise ValueError(f"{self.config.kind} tokenizer expects {layout}, got {tuple(x.shape)}")
        self.grid_shape(x.shape)

    def quantize_input(self, x: torch.Tensor, entropy_temperature: float | None = None) -> QuantizerOutput:
        """Encode and quantize; ``z_q [B, D, *grid]`` carries the straight-through gradient."""
        self._check_input(x)
        return self.quantize(self.quant_conv(self.encoder(x)), entropy_temperature)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, D, *grid]`` codebook vectors -> pixels ``[B, 3, (T,) H, W]``."""
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` / ``[B, 3, T, H, W]`` in [-1, 1] -> codes ``LongTensor [B, *grid]``."""
        return self.quantize_input(x).codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, *grid]`` -> pixels ``[B, 3, (T,) H, W]`` (roughly in [-1, 1]; not clamped)."""
        if codes.dim() != self.input_axes + 1:
            raise ValueError(f"{self.config.kind} tokenizer decodes codes [B, {self.input_axes} grid axes], "
                             f"got {tuple(codes.shape)}")
        return self.decode_latents(self.quantize.lookup(codes))

    def forward(self, x: torch.Tensor, entropy_temperature: float | None = None) -> VQForward:
        """Training pass: reconstruction with straight-through gradients and the quantizer's losses."""
        quantized = self.quantize_input(x, entropy_temperature)
        return VQForward(self.decode_latents(quantized.z_q), quantized)


def build_tokenizer(config: VQConfig | str) -> VQTokenizer:
    """A randomly initialised tokenizer from a config or a preset name (``"vq-16"``, ...)."""
    if isinstance(config, str):
        config = VQConfig.from_name(config)
    return VQTokenizer(config)
