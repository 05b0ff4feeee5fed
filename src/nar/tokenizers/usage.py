"""Codebook usage as a torchmetrics ``Metric``: per-code counts are summed across processes, so the
fraction of codes used and the code perplexity are exact under DDP."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class CodebookUsage(Metric):
    """``update(codes)`` with any integer shape; ``compute()`` -> usage and perplexity."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, codebook_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, codes: torch.Tensor) -> None:
        self.counts += torch.bincount(codes.flatten().long(), minlength=self.codebook_size)

    def compute(self) -> dict[str, torch.Tensor]:
        """``usage``: fraction of codes used at least once; ``perplexity``: exp(entropy) of the code
        histogram, the effective number of codes in use."""
        probs = self.counts.double() / self.counts.sum().clamp_min(1)
        perplexity = torch.exp(-(probs * probs.clamp_min(1e-30).log()).sum())
        return {"usage": (self.counts > 0).float().mean(), "perplexity": perplexity.float()}
