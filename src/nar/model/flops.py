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


def sampling_flops_per_image(cfg: NARConfig, guided: bool) -> int:
    """FLOPs of generating one sample's tokens: every pass's matrix products and its attention over the cache
    prefix it reads, doubled under classifier-free guidance (the null-condition rows). NAR-L, CFG: 0.38 TFLOP.

    The matrix products are counted on the meta device through the teacher-forced pass, which feeds the same
    tokens through the same blocks and heads as the passes of a generation; its attention term (over the whole
    masked square) is replaced by the exact prefix lengths of the decode layout."""
    key = f"sample:{cfg!r}"
    if key not in _CACHE:
        with torch.device("meta"):
            model = NARModel(cfg)
        model = model.to("meta").eval()
        tokens = torch.zeros(1, cfg.num_cells, dtype=torch.long, device="meta")
        if cfg.condition == "class":
            cond, mask = torch.zeros(1, dtype=torch.long, device="meta"), None
        else:
            cond = torch.zeros(1, cfg.caption_len, cfg.caption_dim, device="meta")
            mask = torch.ones(1, cfg.caption_len, dtype=torch.bool, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.forward_train(tokens, cond, mask)
        total = counter.get_total_flops()
        # Attention: SDPA's own op where a kernel is picked, its math decomposition's batched products on meta.
        square = sum(f for op, f in counter.get_flop_counts().get("Global", {}).items()
                     if "attention" in str(op) or str(op) == "aten.bmm")
        layout = model.decode_layout
        prefix = sum(len(step.positions) * step.kv_limit for step in layout.steps)  # query-key pairs per block
        attention = 4 * prefix * cfg.n_head * cfg.head_dim * len(model.blocks())  # QK^T and PV, 2 FLOPs a MAC
        _CACHE[key] = total - square + attention
    return _CACHE[key] * (2 if guided else 1)
