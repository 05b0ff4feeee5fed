"""Compatibility with the official checkpoints: load the fixture's weights and reproduce its outputs.

Runs on ``../shared/conformance/official_nar_fixture.pt`` or the file named by
``NAR_CONFORMANCE_FIXTURE`` (same format, any size); every model is built from the fixture's config.
"""

from __future__ import annotations

import pytest
import torch

from nar.checkpoints import load_strict
from nar.errors import CheckpointError
from nar.model import NARConfig, NARModel
from nar.model.official import from_official_state_dict, to_official_state_dict

TOL = 1e-5


def build(entry: dict) -> NARModel:
    c = entry["config"]
    grid = c["grid"] if isinstance(c["grid"], (list, tuple)) else [c["grid"], c["grid"]]
    caption = c["cls_token_num"] > 1
    # a class model has no caption slots: caption_len keeps NARConfig's default (unused)
    slots = {"caption_len": c["cls_token_num"]} if caption else {}
    cfg = NARConfig(
        dim=c["dim"], n_layer=c["n_layer"], n_head=c["n_head"], vocab_size=c["vocab_size"], grid=list(grid),
        condition="caption" if caption else "class", num_classes=c["num_classes"], **slots, caption_dim=c["caption_dim"],
        norm_eps=c["norm_eps"], rope_base=c["rope_base"], multiple_of=c["multiple_of"],
        token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    model = NARModel(cfg)
    load_strict(model, from_official_state_dict(entry["checkpoint"]["model"], cfg), source="fixture")
    return model.eval()


@pytest.fixture(params=["c2i", "t2i"])
def kind(request, conformance):
    return request.param, conformance[request.param]


def test_training_logits_match(kind):
    name, entry = kind
    model = build(entry)
    with torch.no_grad():
        logits = model.forward_train(entry["tokens"], entry["cond"], entry["emb_mask"])
    torch.testing.assert_close(logits, entry["logits_train"], atol=TOL, rtol=0)


def test_training_mask_matches(kind):
    name, entry = kind
    model = build(entry)
    mask = model._full_mask(entry["emb_mask"], entry["tokens"].shape[0])[:, 0]
    expected = entry["attn_mask"]
    assert torch.equal(mask.expand_as(expected), expected)


@pytest.mark.parametrize("layout", ["sequence", "decode"])
def test_every_decode_step_matches(kind, layout):
    name, entry = kind
    model = build(entry)
    tokens, steps = entry["tokens"], entry["decode_steps"]
    state = model.start_inference(tokens.shape[0], cond_mask=entry["emb_mask"], layout=layout)
    assert len(state.plans) == len(steps)
    with torch.no_grad():
        for i, ref in enumerate(steps):
            if i == 0:
                logits = model.prefill(entry["cond"], state)
            else:
                fed = state.plans[i - 1].outputs
                assert torch.equal(model.cfg.num_cond_tokens + fed, ref["input_pos"]), f"step {i} input positions"
                logits = model.decode_step(tokens[:, fed], i, state)
            assert state.plans[i].outputs.tolist() == list(ref["next_tokens"]), f"step {i} outputs"
            torch.testing.assert_close(logits, ref["logits"], atol=TOL, rtol=0, msg=f"step {i}")


def test_export_round_trip(kind):
    name, entry = kind
    model = build(entry)
    exported = to_official_state_dict(model)
    original = {k: v for k, v in entry["checkpoint"]["model"].items() if "kv_cache" not in k}
    assert set(exported) == set(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value), key


def test_mismatch_lists_keys(kind):
    name, entry = kind
    model = build(entry)
    state = from_official_state_dict(entry["checkpoint"]["model"], model.cfg)
    state.pop("heads.0.proj.weight")
    state["bogus.weight"] = torch.zeros(1)
    state["tok_embeddings.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_strict(model, state, source="broken.pt")
    text = str(err.value)
    assert "broken.pt" in text and "heads.0.proj.weight" in text and "bogus.weight" in text
    assert "tok_embeddings.weight: checkpoint (3, 3)" in text
