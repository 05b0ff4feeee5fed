"""FLOPs of one training step of a generator, counted (not estimated) on the meta device.

Used for MFU: model FLOPs per second over the device's peak. The count covers the forward and backward of
``forward_train`` (matrix products and attention, as torch's FLOP counter sees them), for one sample.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from nar.model.config import NARConfig
from nar.model.nar import NARModel

_CACHE: dict[str, int] = {}


def _training_flops(cfg: NARConfig) -> int:
    with torch.device("meta"):
        model = NARModel(cfg)
    model = model.to("meta").train()
    batch = 2  # a batch of two, halved: per-sample cost without a batch-of-one special case
    tokens = torch.zeros(batch, cfg.num_cells, dtype=torch.long, device="meta")
    if cfg.condition == "class":
        cond, mask = torch.zeros(batch, dtype=torch.long, device="meta"), None
    else:
        cond = torch.zeros(batch, cfg.caption_len, cfg.caption_dim, device="meta")
        mask = torch.ones(batch, cfg.caption_len, dtype=torch.bool, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.forward_train(tokens, cond, mask).sum().backward()
    return counter.get_total_flops() // batch


def training_flops_per_sample(cfg: NARConfig) -> int:
    """FLOPs of the forward and backward pass of one sample (NAR-L, 16x16 tokens: 0.57 TFLOP)."""
    key = repr(cfg)
    if key not in _CACHE:
        _CACHE[key] = _training_flops(cfg)
    return _CACHE[key]
