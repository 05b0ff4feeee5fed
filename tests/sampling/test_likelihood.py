"""NAR_SPEC §9 on a grid small enough to enumerate: the training pass is the exact likelihood of the sampler.

On a 2×3 grid with a vocabulary of 3 (729 grids) and a class condition, for every head configuration and
mixing rule of the ablations, for raster and for PAR: the probabilities the teacher-forced pass gives all
grids sum to one, and the fast sampler (unguided, temperature 1) draws grids with those frequencies.

The frequency check is Pearson's chi-square test of the draws against the enumerated probabilities, grids
with fewer than 5 expected draws pooled into one bin. Its threshold is the 1 - 1e-4 quantile of the chi-square
distribution with the pooled bins' degrees of freedom, so a correct sampler fails a configuration with
probability 1e-4 for a random seed (about 1e-3 over this whole test); the seeds are fixed, so the test is
deterministic. A wrong mask, a wrong mixing rule or a sampler drawing from other logits than the training
pass moves the statistic far past it (checked below by scoring a perturbed model's frequencies).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from nar.model import NARConfig, NARModel
from nar.sampling import SamplingConfig
from nar.sampling.fast import FastSampler

VOCAB, GRID, DRAWS, FALSE_ALARM = 3, [2, 3], 12000, 1e-4
CONFIGS = {
    "mixed_chain_1_0": dict(head_blocks=[1, 0]),
    "mixed_0_0": dict(head_blocks=[0, 0]),
    "mixed_parallel_1_1": dict(head_blocks=[1, 1], head_layout="parallel"),
    "mixed_probs": dict(mixing="probs"),
    "none_shared_head": dict(head_sharing="shared", head_blocks=[0, 0]),
    "row_only": dict(head_sharing="shared", shared_axis=0, parents="row"),
    "column_only": dict(head_sharing="shared", shared_axis=-1, parents="col"),
    "raster": dict(mode="raster"),
    "par": dict(mode="par", regions=[1, 3]),
}


def build(options: dict) -> NARModel:
    torch.manual_seed(0)
    model = NARModel(NARConfig(dim=16, n_layer=1, n_head=2, vocab_size=VOCAB, num_classes=2, grid=GRID,
                               token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, **options)).eval()
    for p in model.parameters():  # far from uniform: a wrong rule would show
        torch.nn.init.normal_(p, std=0.5)
    return model


def grid_probabilities(model: NARModel, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    cells = GRID[0] * GRID[1]
    grids = torch.tensor(list(itertools.product(range(VOCAB), repeat=cells)))  # [729, 6], raster order
    with torch.no_grad():
        logits = model.forward_train(grids, torch.full((len(grids),), label))
        logp = -F.cross_entropy(logits.transpose(1, 2), grids, reduction="none").sum(1)
    return grids, logp.double().exp()


def frequencies(model: NARModel, label: int, seed: int = 0) -> torch.Tensor:
    drawn = FastSampler(model, DRAWS, SamplingConfig())(torch.full((DRAWS,), label),
                                                       generator=torch.Generator().manual_seed(seed))
    cells = drawn.flatten(1)
    index = (cells * VOCAB ** torch.arange(cells.shape[1] - 1, -1, -1)).sum(1)  # a grid's row in the enumeration
    return torch.bincount(index, minlength=VOCAB ** cells.shape[1]).double()


def chi_square(counts: torch.Tensor, prob: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic with small-expectation bins pooled, and the threshold of the stated false-alarm rate."""
    expected = prob * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, float(chi2.ppf(1 - FALSE_ALARM, int(keep.sum()) - 1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_pass_is_the_samplers_exact_likelihood(name: str) -> None:
    model = build(CONFIGS[name])
    label = 1
    grids, prob = grid_probabilities(model, label)
    torch.testing.assert_close(prob.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)
    stat, threshold = chi_square(frequencies(model, label), prob)
    assert stat < threshold, f"{name}: chi-square {stat:.1f} >= {threshold:.1f} (false-alarm rate {FALSE_ALARM})"


def test_the_check_has_power() -> None:
    """Draws of the model with another class (same network, other logits) fail the chi-square test by far."""
    model = build(CONFIGS["mixed_chain_1_0"])
    _, prob = grid_probabilities(model, label=1)
    stat, threshold = chi_square(frequencies(model, label=0), prob)
    assert stat > 10 * threshold
