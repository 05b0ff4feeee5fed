"""A deliberately plain NAR decoder, formulated as the official sampler is, for side-by-side benchmarks.

Per step it rebuilds positions on the host, attends over the whole KV cache through a dense boolean
mask (math-kernel friendly, not flash), and writes the sampled tokens one at a time in a Python loop. It
computes the same function as :func:`nar.sampling.generate`, token for token for the same seed (tested
sampled and greedy); only the speed differs.
"""

from __future__ import annotations

import torch

from nar.model import NARModel
from nar.sampling.logits import (
    SamplingConfig,
    apply_guidance,
    check_condition,
    guidance_on,
    sample_tokens,
    with_null,
)


@torch.no_grad()
def reference_generate(model: NARModel, cond: torch.Tensor, sampling: SamplingConfig | None = None,
                       cond_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Same contract as :func:`nar.sampling.generate`; returns tokens ``[B, *grid]``."""
    sampling = sampling or SamplingConfig()
    check_condition(model, cond, cond_mask)
    B = cond.shape[0]
    cond, cond_mask = with_null(model, cond, cond_mask, sampling)
    state = model.start_inference(cond.shape[0], cond_mask=cond_mask, layout="sequence", device=cond.device)
    schedule = model.schedule
    tokens = torch.zeros(B, model.cfg.num_cells, dtype=torch.long, device=cond.device)
    generated = 0
    for i, step in enumerate(schedule.steps):
        if i == 0:
            logits = model.prefill(cond, state)
        else:
            # Positions rebuilt from Python lists on every step, as the official loop does.
            fed_cells = torch.tensor(schedule.steps[i - 1].outputs.tolist(), device=cond.device)
            fed = tokens[:, fed_cells]
            logits = model.decode_step(torch.cat([fed, fed]) if sampling.guided else fed, i, state)
        # One draw per pass, as the plain loop makes it: per-cell draws would consume the generator in
        # another order and give other tokens for the same seed once the batch or the frontier exceeds 1.
        drawn = sample_tokens(apply_guidance(logits, sampling, guidance_on(sampling, generated)), sampling, generator)
        for j, cell in enumerate(step.outputs.tolist()):  # written one token at a time
            tokens[:, cell] = drawn[:, j]
        generated += len(step.outputs)
    return tokens.view(B, *model.cfg.grid)
