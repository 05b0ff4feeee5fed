"""A seeded tiny generator with large random weights, shared by the sampler tests (not a test module)."""

from __future__ import annotations

import torch

from nar.model import NARConfig, NARModel


def seeded_model(dim: int = 32, **fields) -> NARModel:
    """Two layers, 4 heads, vocabulary 32, 5 classes, no dropout; every weight N(0, 0.3) from seed 0, so the
    logits are far from flat and greedy decoding has no near-ties. ``fields`` set the grid, mode, heads…"""
    torch.manual_seed(0)
    cfg = NARConfig(dim=dim, n_layer=2, n_head=4, vocab_size=32, num_classes=5, token_dropout=0.0,
                    resid_dropout=0.0, ffn_dropout=0.0, **fields)
    model = NARModel(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model
