"""Convolutional building blocks shared by the image (2-D) and video (3-D, causal in time) VQ models.

Module and parameter names follow LlamaGen so official checkpoints load without renaming. Videos are
``[B, C, T, H, W]``; everything that mixes information across positions either looks only at earlier
frames (causal convolutions) or stays inside one frame (group norm, attention), so the code of frame
``t`` never depends on later frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _fold_frames(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[B, C, T, H, W]`` -> ``[B*T, C, H, W]`` (images pass through); returns the frame count."""
    if x.dim() != 5:
        return x, 0
    return rearrange(x, "b c t h w -> (b t) c h w"), x.shape[2]


def _unfold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    if not frames:
        return x
    return rearrange(x, "(b t) c h w -> b c t h w", t=frames)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per image / per video frame (eps 1e-6, LlamaGen's)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, frames = _fold_frames(x)
        return _unfold_frames(super().forward(x), frames)


class CausalConv3d(nn.Conv3d):
    """3-D convolution that pads time only at the front, so no output step sees a frame after the ones it stands
    for. With time stride s it pads ``kernel - s`` frames (``causal_pad="stride"``): output step j reads frames
    ``s*j + s - kernel .. s*j + s - 1``, every frame of its own stride among them, so none is skipped;
    ``causal_pad="kernel"`` pads ``kernel - 1`` (the same for stride 1; with stride 2 it never reads frames
    ``2j + 1``, the layout of video tokenizers saved before 2026-12-07)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1),
                 spatial_pad: tuple[int, int, int, int] | None = None, causal_pad: str = "stride") -> None:
        super().__init__(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=0)
        p = kernel // 2
        front = kernel - stride[0] if causal_pad == "stride" else kernel - 1
        # F.pad order: (w_left, w_right, h_top, h_bottom, t_front, t_back)
        self.pad = (*(spatial_pad if spatial_pad is not None else (p, p, p, p)), front, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


def conv(dims: int, in_ch: int, out_ch: int, kernel: int = 3) -> nn.Module:
    """Size-preserving convolution: plain 2-D for images, causal 3-D for videos."""
    if dims == 2:
        return nn.Conv2d(in_ch, out_ch, kernel_size=kernel, padding=kernel // 2)
    if kernel == 1:
        return nn.Conv3d(in_ch, out_ch, kernel_size=1)
    return CausalConv3d(in_ch, out_ch, kernel)


class ResnetBlock(nn.Module):
    def __init__(self, dims: int, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(in_ch, groups)
        self.conv1 = conv(dims, in_ch, out_ch)
        self.norm2 = FrameGroupNorm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(dims, out_ch, out_ch)
        # LlamaGen's name for the 1x1 projection of the skip path when the width changes
        self.nin_shortcut = conv(dims, in_ch, out_ch, kernel=1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of one image or one frame, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = FrameGroupNorm(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_img, frames = _fold_frames(x)  # [N, C, H, W]
        h = self.norm(x_img)
        n, c, hh, ww = h.shape
        # [N, C, H, W] -> [N, 1, H*W, C]: one head whose dimension is the full width
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale C^-1/2, as LlamaGen
        out = out.squeeze(1).transpose(1, 2).reshape(n, c, hh, ww)
        return _unfold_frames(x_img + self.proj_out(out), frames)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution with LlamaGen's asymmetric (right/bottom) zero padding.

    For videos ``temporal`` also halves T with a causal stride-2 step in time.
    """

    def __init__(self, dims: int, channels: int, temporal: bool = False, causal_pad: str = "stride") -> None:
        super().__init__()
        if dims == 2:
            self.conv: nn.Module = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)
        else:
            self.conv = CausalConv3d(channels, channels, 3, stride=(2 if temporal else 1, 2, 2),
                                     spatial_pad=(0, 1, 0, 1), causal_pad=causal_pad)
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (in time too when ``temporal``) followed by a size-preserving convolution."""

    def __init__(self, dims: int, channels: int, temporal: bool = False) -> None:
        super().__init__()
        self.scale = 2.0 if dims == 2 else (2.0 if temporal else 1.0, 2.0, 2.0)
        self.conv = conv(dims, channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))
