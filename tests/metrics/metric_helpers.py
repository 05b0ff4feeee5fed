"""Test helpers: a tiny injected extractor (the real Inception is too slow for CPU unit tests) and images."""

from __future__ import annotations

import torch
from torch import nn


class TinyExtractor(nn.Module):
    """Follows the extractor protocol: uint8 [B, 3, H, W] → {"features": [B, 16], "logits": [B, 10]}."""

    name = "tiny-test-extractor"
    num_features = 16
    has_logits = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.proj = nn.Linear(8 * 4 * 4, self.num_features)
        self.head = nn.Linear(self.num_features, 10)

    def forward(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        assert images_uint8.dtype == torch.uint8
        x = images_uint8.float() / 127.5 - 1
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)
        features = torch.tanh(self.proj(x)) + 0.1 * x[:, : self.num_features]
        return {"features": features, "logits": 3 * self.head(features)}


class TinySpatialExtractor(TinyExtractor):
    """:class:`TinyExtractor` with sFID's spatial features too: ``"spatial": [B, 8]``, its first 2 conv channels
    pooled to 2x2 in NHWC order (the Inception's: the first 7 channels of ``mixed_6/conv``, ``[B, 2023]``)."""

    spatial = True
    num_spatial = 8

    def forward(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images_uint8)
        conv = torch.relu(self.conv(images_uint8.float() / 127.5 - 1))
        out["spatial"] = nn.functional.adaptive_avg_pool2d(conv[:, :2], 2).permute(0, 2, 3, 1).flatten(1)
        return out


def random_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 [n, 3, size, size], smooth enough that features are spread out."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, size // 8, size // 8), generator=g).float()
    up = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (up + torch.randint(-20, 21, up.shape, generator=g)).clamp(0, 255).to(torch.uint8)

