"""Condition embedders: class labels (with a null class) and caption features (with a learned null caption)."""

from __future__ import annotations

import torch
from torch import nn


class ClassEmbedding(nn.Module):
    """Class id → one condition token. Row ``num_classes`` is the null class used for CFG."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels [B]`` → ``[B, 1, D]``."""
        return self.embedding_table(labels)[:, None]

    def null_like(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.null_id)

    def drop(self, labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace ``labels`` by the null class where ``drop [B]`` is True."""
        return torch.where(drop, self.null_id, labels)


class CaptionMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedding(nn.Module):
    """Caption features ``[B, L, caption_dim]`` (right-aligned) → ``L`` condition tokens."""

    def __init__(self, caption_dim: int, dim: int, caption_len: int):
        super().__init__()
        self.caption_len = caption_len
        self.cap_proj = CaptionMLP(caption_dim, dim)
        self.uncond_embedding = nn.Parameter(torch.randn(caption_len, caption_dim) / caption_dim**0.5)

    def check(self, features: torch.Tensor) -> None:
        """Raise ValueError unless ``features`` is ``[B, caption_len, caption_dim]`` (a shape check, no sync)."""
        want = tuple(self.uncond_embedding.shape)
        if features.dim() != 3 or tuple(features.shape[1:]) != want:
            raise ValueError(f"caption features must be [B, {want[0]}, {want[1]}] (caption_len, caption_dim), "
                             f"got shape {tuple(features.shape)}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check(features)
        return self.cap_proj(features.to(self.cap_proj.fc1.weight.dtype))

    def null_like(self, features: torch.Tensor) -> torch.Tensor:
        self.check(features)
        return self.uncond_embedding.to(features.dtype).expand_as(features)

    def drop(self, features: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace captions by the learned null caption where ``drop [B]`` is True (mask unchanged, as the
        official training does)."""
        return torch.where(drop[:, None, None], self.uncond_embedding.to(features.dtype), features)
