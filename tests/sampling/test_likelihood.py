"""NAR_SPEC §9 on a grid small enough to enumerate: the training pass gives every grid a probability, those
sum to one, and the fast sampler (unguided, temperature 1) draws grids with exactly those frequencies, for
nar, raster and PAR (with a transition token) alike."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nar.model import NARConfig, NARModel
from nar.sampling import SamplingConfig
from nar.sampling.fast import FastSampler

VOCAB = 3


@pytest.mark.parametrize("decoding", [dict(mode="nar"), dict(mode="raster"), dict(mode="par", regions=[1, 2])],
                         ids=["nar", "raster", "par"])
def test_grid_probabilities_sum_to_one_and_match_the_sampler(decoding):
    torch.manual_seed(0)
    model = NARModel(NARConfig(dim=16, n_layer=1, n_head=2, vocab_size=VOCAB, num_classes=2, grid=[2, 2],
                               token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, **decoding)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    assert model.cfg.num_transition_tokens == (1 if decoding["mode"] == "par" else 0)
    grids = torch.tensor(list(itertools.product(range(VOCAB), repeat=4)))  # [81, 4] every grid
    label = torch.ones(len(grids), dtype=torch.long)
    with torch.no_grad():
        logp = -F.cross_entropy(model.forward_train(grids, label).transpose(1, 2), grids, reduction="none").sum(1)
    prob = logp.exp()  # [81]
    torch.testing.assert_close(prob.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)

    n = 20000
    drawn = FastSampler(model, n, SamplingConfig())(torch.ones(n, dtype=torch.long),
                                                    generator=torch.Generator().manual_seed(0))
    index = (drawn.flatten(1) * VOCAB ** torch.arange(3, -1, -1)).sum(1)  # grid -> its row in `grids`
    freq = torch.bincount(index, minlength=len(grids)).float() / n
    # Total variation: ~0.02 from the noise of 20000 draws over 81 grids (seeded, so deterministic).
    assert 0.5 * (freq - prob).abs().sum() < 0.035
