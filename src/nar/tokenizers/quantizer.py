"""Nearest-neighbour vector quantizer with LlamaGen's L2-normalised codebook (any number of spatial axes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# LlamaGen keeps a sliding window of the last 65536 codes in a buffer; checkpoints carry it, so we do too.
USAGE_WINDOW = 65536


@dataclass
class QuantizerOutput:
    """``z_q`` (straight-through, channel-first like the input), ``codes`` ``[B, *grid]`` and the
    unweighted losses: codebook ``||sg(z) - e||^2``, commitment ``||z - sg(e)||^2``, entropy (0 unless asked)."""

    z_q: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    entropy_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """Maps each ``embed_dim`` vector of ``z [B, C, *grid]`` to its nearest codebook entry.

    With ``l2_norm`` (LlamaGen) both the vectors and the codebook are projected onto the unit sphere
    before the lookup, and the normalised entries are what the decoder sees.
    """

    def __init__(self, codebook_size: int, embed_dim: int, l2_norm: bool = True) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # Official format only (float, as saved by LlamaGen); usage metrics are computed elsewhere.
        self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """The entries the decoder sees, ``[K, D]``."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=-1) if self.l2_norm else weight

    def forward(self, z: torch.Tensor, entropy_temperature: float | None = None) -> QuantizerOutput:
        """``z [B, D, *grid]`` -> :class:`QuantizerOutput`; the entropy loss is computed only when
        ``entropy_temperature`` is given (it needs a softmax over the whole codebook per vector)."""
        z_last = z.movedim(1, -1)  # [B, *grid, D]
        if self.l2_norm:
            z_last = F.normalize(z_last, dim=-1)
        flat_ND = z_last.reshape(-1, self.embed_dim)
        codebook_KD = self.codebook()
        # Squared distances written out as LlamaGen does, so argmin ties resolve the same way.
        dist_NK = (flat_ND.pow(2).sum(1, keepdim=True) + codebook_KD.pow(2).sum(1)
                   - 2 * flat_ND @ codebook_KD.t())
        codes_N = dist_NK.argmin(dim=1)
        z_q_last = codebook_KD[codes_N].view_as(z_last)

        codebook_loss = F.mse_loss(z_q_last, z_last.detach())
        commitment_loss = F.mse_loss(z_last, z_q_last.detach())
        if entropy_temperature is None:
            entropy_loss = z.new_zeros(())
        else:
            entropy_loss = codebook_entropy_loss(-dist_NK, entropy_temperature)

        z_q_last = z_last + (z_q_last - z_last).detach()  # straight-through gradient to the encoder
        return QuantizerOutput(
            z_q=z_q_last.movedim(-1, 1),
            codes=codes_N.view(z_last.shape[:-1]),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            entropy_loss=entropy_loss,
        )

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, *grid]`` -> channel-first entries ``[B, D, *grid]``."""
        if codes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes out of range [0, {self.codebook_size}): "
                             f"min {int(codes.min())}, max {int(codes.max())}")
        return self.codebook()[codes.long()].movedim(-1, 1)


def codebook_entropy_loss(affinity_NK: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-vector entropy minus the entropy of the batch-average assignment (both over the codebook).

    Minimising it makes each vector commit to one code while the batch as a whole spreads over many.
    """
    logits = affinity_NK.float() / temperature
    probs = logits.softmax(dim=-1)
    per_vector = -(probs * logits.log_softmax(dim=-1)).sum(-1).mean()
    avg = probs.mean(0)
    batch = -(avg * torch.log(avg + 1e-5)).sum()
    return per_vector - batch
