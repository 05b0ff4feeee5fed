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


def _sampling_flops(cfg: NARConfig) -> int:
    with torch.device("meta"):
        model = NARModel(cfg)
    model = model.to("meta").eval()
    state = model.start_inference(1, device="meta")  # one sequence, the decode layout's passes
    plans = state.plans
    if cfg.condition == "class":
        cond = torch.zeros(1, dtype=torch.long, device="meta")
    else:
        cond = torch.zeros(1, cfg.caption_len, cfg.caption_dim, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.prefill(cond, state)
        for step in range(1, len(plans)):  # each pass feeds the cells the one before produced
            model.decode_step(torch.zeros(1, len(plans[step - 1].outputs), dtype=torch.long, device="meta"),
                              step, state)
    total = counter.get_total_flops()
    # Attention: SDPA's own op where a kernel is picked, its math decomposition's batched products on meta;
    # replaced by the exact prefix each pass reads.
    counted = sum(f for op, f in counter.get_flop_counts().get("Global", {}).items()
                  if "attention" in str(op) or str(op) == "aten.bmm")
    pairs = sum(len(plan.positions) * plan.kv_limit for plan in plans)  # query-key pairs per block
    attention = 4 * pairs * cfg.n_head * cfg.head_dim * len(model.blocks())  # QK^T and PV, 2 FLOPs a MAC
    return total - counted + attention


def sampling_flops_per_image(cfg: NARConfig, guided: bool) -> int:
    """FLOPs of generating one sample's tokens: every pass's matrix products and its attention over the cache
    prefix it reads, doubled under classifier-free guidance (the null-condition rows). NAR-L, CFG: 0.37 TFLOP.

    The passes are those the samplers run (the model's prefill and decode steps over the decode layout's plans),
    counted on the meta device: each feeds the rows of its plan (the cells the pass before produced, PAR's
    transition tokens, never the last pass's outputs) and projects its outputs through the heads. Attention
    is counted from the exact prefix length of each plan."""
    key = f"sample:{cfg!r}"
    if key not in _CACHE:
        _CACHE[key] = _sampling_flops(cfg)
    return _CACHE[key] * (2 if guided else 1)
