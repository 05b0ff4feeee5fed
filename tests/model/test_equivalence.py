"""Decoding through the KV cache reproduces the training pass, for every geometry and head layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nar.model import NARConfig, NARModel

CASES = [
    dict(grid=[7]),
    dict(grid=[3, 5]),
    dict(grid=[4, 4], head_layout="parallel", head_blocks=[2, 1]),
    dict(grid=[2, 3, 4]),
    dict(grid=[2, 3, 4], head_layout="parallel"),
    dict(grid=[3, 4], head_sharing="shared", head_blocks=[0, 0]),
    dict(grid=[3, 4], head_sharing="shared", shared_axis=0),
    dict(grid=[3, 4], head_sharing="shared", shared_axis=0, parents="row"),
    dict(grid=[2, 3, 4], parents="col"),
    dict(grid=[3, 4], mixing="probs"),
    dict(grid=[3, 4], position="absolute"),
    dict(grid=[3, 4], n_kv_head=2),
    dict(grid=[3, 4], mode="raster"),
    dict(grid=[2, 2, 3], mode="raster"),
    dict(grid=[3, 4], condition="caption", caption_len=5, caption_dim=8),
    dict(grid=[2, 3], condition="caption", caption_len=1, caption_dim=8),
    dict(grid=[2, 3], mode="raster", condition="caption", caption_len=4, caption_dim=8),
    # PAR: k - 1 transition tokens fed with the last region's first cell (none with one region or one-cell regions)
    dict(grid=[4, 4], mode="par", regions=[2, 2]),
    dict(grid=[4, 6], mode="par", regions=[2, 3]),
    dict(grid=[8], mode="par", regions=[4]),
    dict(grid=[2, 4, 4], mode="par", regions=[1, 2, 2]),
    dict(grid=[2, 4, 4], mode="par", regions=[2, 2, 2]),
    dict(grid=[4, 4], mode="par", regions=[4, 4]),
    dict(grid=[4, 4], mode="par", regions=[2, 2], position="absolute"),
    dict(grid=[4, 4], mode="par", regions=[2, 2], condition="caption", caption_len=5, caption_dim=8),
]


def tiny(**kw) -> NARModel:
    base = dict(dim=32, n_layer=2, n_head=4, vocab_size=24, num_classes=5, token_dropout=0.0,
                resid_dropout=0.0, ffn_dropout=0.0)
    base.update(kw)
    model = NARModel(NARConfig(**base)).eval()
    torch.manual_seed(1)
    for p in model.parameters():  # heads start at zero; give every weight some signal
        torch.nn.init.normal_(p, std=0.2)
    return model


def inputs(model: NARModel, batch: int = 3):
    cfg = model.cfg
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.num_cells))
    if cfg.condition == "class":
        return tokens, torch.randint(0, cfg.num_classes, (batch,)), None
    feats = torch.randn(batch, cfg.caption_len, cfg.caption_dim)
    lengths = torch.randint(1, cfg.caption_len + 1, (batch,))
    mask = (torch.arange(cfg.caption_len)[None] >= cfg.caption_len - lengths[:, None]).float()
    return tokens, feats, mask


def teacher_forced(model: NARModel, tokens, cond, cond_mask, layout: str) -> torch.Tensor:
    out = torch.zeros(tokens.shape[0], model.cfg.num_cells, model.cfg.vocab_size)
    state = model.start_inference(tokens.shape[0], cond_mask=cond_mask, layout=layout)
    for i, plan in enumerate(state.plans):
        if i == 0:
            logits = model.prefill(cond, state)
        else:
            logits = model.decode_step(tokens[:, state.plans[i - 1].outputs], i, state)
        out[:, plan.outputs] = logits
    return out


@pytest.mark.parametrize("layout", ["decode", "sequence"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_cached_decoding_equals_training_pass(case, layout):
    model = tiny(**case)
    tokens, cond, mask = inputs(model)
    with torch.no_grad():
        ref = model.forward_train(tokens, cond, mask)
        got = teacher_forced(model, tokens, cond, mask, layout)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_pass_counts():
    assert tiny(grid=[4, 4]).num_passes == 7
    assert tiny(grid=[2, 4, 4]).num_passes == 8
    assert tiny(grid=[4, 4], mode="raster").num_passes == 16
    assert tiny(grid=[4, 4], mode="par", regions=[2, 2]).num_passes == 4 + 3
    assert tiny(grid=[8, 8], mode="par", regions=[4, 4]).num_passes == 16 + 3


def test_par_adds_only_its_transition_tokens():
    """nar and raster state dicts are unchanged; PAR is the raster network plus k - 1 transition embeddings."""
    raster = set(tiny(grid=[4, 4], mode="raster").state_dict())
    assert not any("transition" in key for key in set(tiny(grid=[4, 4]).state_dict()) | raster)
    par = tiny(grid=[4, 4], mode="par", regions=[2, 2])
    assert set(par.state_dict()) == raster | {"transition_embeddings.weight"}
    assert par.transition_embeddings.weight.shape == (3, 32) and par.cfg.seq_len == 1 + 16 + 3
    assert set(tiny(grid=[4, 4], mode="par", regions=[4, 4]).state_dict()) == raster  # one-cell regions: none


def test_transition_token_j_feeds_only_the_parallel_phase():
    """Changing transition token j changes the logits of the parallel phase (first of all region j's second
    cell) and leaves the sequential phase (every region's first cell) alone."""
    model = tiny(grid=[4, 4], mode="par", regions=[2, 2])
    tokens, cond, _ = inputs(model)
    firsts = torch.tensor([0, 2, 8, 10])
    with torch.no_grad():
        ref = model.forward_train(tokens, cond)
        for j, second in enumerate([1, 3, 9]):
            model.transition_embeddings.weight[j] += 1.0
            diff = (model.forward_train(tokens, cond) - ref).abs().amax(dim=(0, 2))  # [N]
            model.transition_embeddings.weight[j] -= 1.0
            assert diff[firsts].max() == 0 and diff[second] > 1e-3


def test_caption_padding_does_not_change_logits():
    """A caption of length k gives the same logits whatever the padding around it."""
    model = tiny(grid=[3, 3], condition="caption", caption_len=6, caption_dim=8)
    tokens = torch.randint(0, 24, (1, 9))
    feats = torch.randn(1, 6, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=torch.float)
    other = feats.clone()
    other[:, :3] = torch.randn(1, 3, 8) * 5  # different garbage in the padded slots
    with torch.no_grad():
        a = model.forward_train(tokens, feats, mask)
        b = model.forward_train(tokens, other, mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_per_axis_logits_cover_their_cells():
    model = tiny(grid=[3, 4])
    tokens, cond, _ = inputs(model)
    logits, per_axis = model.forward_train(tokens, cond, return_axis_logits=True)
    assert len(per_axis) == 2 and model.head_names == ("row", "col")
    row_valid, col_valid = per_axis[0][1], per_axis[1][1]
    assert row_valid.sum() == 1 + 2 * 4 and col_valid.sum() == 1 + 3 * 3  # origin + cells with that parent


def test_half_precision_decoding_mixes_three_parents_by_their_exact_mean():
    """A video cell with three parents mixes its heads' logits by 1/3, which bf16 rounds to 0.333984375: decoding
    in bf16 must still give the float32 mean of the training pass (a 0.24 % larger scale was a temperature)."""
    model = tiny(grid=[3, 3, 3]).to(torch.bfloat16)
    tokens, cond, _ = inputs(model, 4)
    with torch.no_grad():
        state = model.start_inference(4)
        model.prefill(cond, state)
        for i in range(1, 4):  # step 3 holds an interior cell with three parents
            plan = state.plans[i]
            x = model.step_input(i, state, tokens=tokens[:, state.plans[i - 1].outputs])
            feats = model._features(x, plan.rope, plan.mask, state, plan)
        fused = model._mix_inference(feats, plan, state)
        mean = model._mix(feats, plan.sources, plan.weights)
    assert not plan.exact_weights
    assert dataclasses.replace(plan, cell_weight=None).exact_weights  # derived from cell_weight, never stale
    for parents in (2, 3):
        cells = (plan.weights > 0).sum(0) == parents
        assert cells.any()
        scale = (fused[:, cells] * mean[:, cells]).sum() / (mean[:, cells] ** 2).sum()
        assert abs(scale.item() - 1) < 1e-3, (parents, scale.item())
