"""The CPU's two-level inverse-CDF draw samples the given distribution and never an impossible entry."""

from __future__ import annotations

import pytest
import torch

from nar.sampling.logits import inverse_cdf_sample


@pytest.mark.parametrize("V", [512, 300])  # two-level (512 = 8 blocks of 64) and the one-level fallback
def test_draws_follow_the_distribution(V: int) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(V, generator=g) ** 3
    p[10:80] = 0.0        # a whole empty block, and empties at the ends of blocks
    p[-5:] = 0.0
    rows, rounds = 4000, 25
    counts = torch.zeros(V)
    for _ in range(rounds):
        draws = inverse_cdf_sample(p.expand(rows, V) * 3.0, g)  # unnormalised on purpose
        counts += torch.bincount(draws, minlength=V)
    assert counts[10:80].sum() == 0 and counts[-5:].sum() == 0
    n = rows * rounds
    expected = p / p.sum() * n
    keep = expected > 0
    chi2 = (((counts - expected)[keep]) ** 2 / expected[keep]).sum().item()
    df = int(keep.sum()) - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5, (chi2, df)  # far beyond noise only if the sampler is biased


def test_one_hot_and_shape() -> None:
    probs = torch.zeros(3, 2, 1024)
    probs[0, 0, 0] = probs[0, 1, 1023] = probs[1, :, 64] = probs[2, :, 63] = 1.0
    out = inverse_cdf_sample(probs, torch.Generator().manual_seed(1))
    assert out.shape == (3, 2)
    assert out.tolist() == [[0, 1023], [64, 64], [63, 63]]
