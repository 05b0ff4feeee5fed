"""The seed of each batch of a sampling job, shared by ``nar sample``, ``nar evaluate`` and the decoding validation."""

from __future__ import annotations

import numpy as np


def batch_seed(seed: int, b: int) -> int:
    """The seed of batch ``b`` of a job seeded ``seed`` (``seed >= 0``): the two hashed together (numpy's
    ``SeedSequence``), so neighbouring seeds share no batch, as ``seed + b`` would (batch 1 of seed 0 = batch 0
    of seed 1). In ``[0, 2**63)``, what ``torch.Generator.manual_seed`` takes."""
    return int(np.random.SeedSequence([seed, b]).generate_state(1, np.uint64)[0] >> np.uint64(1))
