"""Caption conditioning semantics (NAR_SPEC §2): right-aligned captions, masked padding, CFG with the null caption."""

from __future__ import annotations

import torch

from nar.model import NARConfig, NARModel
from nar.sampling import SamplingConfig, generate, guide


def tiny(caption_len: int = 8, **kw) -> NARModel:
    cfg = NARConfig(dim=32, n_layer=2, n_head=2, vocab_size=24, grid=[3, 3], condition="caption", caption_dim=12,
                    caption_len=caption_len, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, **kw)
    torch.manual_seed(0)
    return NARModel(cfg).eval()


def padded(words: torch.Tensor, slots: int, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align ``words [k, D]`` into ``slots`` slots; padding features = ``fill``."""
    k, d = words.shape
    feats = torch.full((1, slots, d), fill)
    feats[0, slots - k:] = words
    mask = torch.zeros(1, slots, dtype=torch.bool)
    mask[0, slots - k:] = True
    return feats, mask


def test_caption_logits_do_not_depend_on_the_padding():
    model = tiny(caption_len=8)
    words = torch.randn(3, 12)
    tokens = torch.randint(0, 24, (1, 9))
    with torch.no_grad():
        base = model.forward_train(tokens, *padded(words, 8))
        garbage = model.forward_train(tokens, *padded(words, 8, fill=7.5))  # masked keys: any content
    torch.testing.assert_close(garbage, base, atol=1e-5, rtol=0)

    # The same weights with 20 slots (more padding) and with exactly k slots (none): same logits.
    for slots in (20, 3):
        other = tiny(caption_len=slots)
        state = {k: v for k, v in model.state_dict().items() if "uncond_embedding" not in k}
        other.load_state_dict(state, strict=False)
        with torch.no_grad():
            logits = other.forward_train(tokens, *padded(words, slots))
        torch.testing.assert_close(logits, base, atol=1e-5, rtol=0)


def test_mixed_caption_lengths_in_one_batch_match_single_rows():
    model = tiny(caption_len=8)
    rows = [padded(torch.randn(k, 12), 8) for k in (1, 4, 8)]
    feats = torch.cat([f for f, _ in rows])
    mask = torch.cat([m for _, m in rows])
    tokens = torch.randint(0, 24, (3, 9))
    with torch.no_grad():
        batch = model.forward_train(tokens, feats, mask)
        single = torch.cat([model.forward_train(tokens[i:i + 1], *rows[i]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)


def test_cfg_guides_against_the_learned_null_caption():
    """Greedy CFG decoding == argmax of uncond + s·(cond − uncond) of the teacher-forced passes on its own tokens,
    where uncond uses the learned null caption (same mask)."""
    model = tiny(caption_len=8)
    with torch.no_grad():
        model.cls_embedding.uncond_embedding.normal_()  # make the null caption matter
    feats, mask = padded(torch.randn(5, 12), 8)
    feats, mask = feats.repeat(2, 1, 1), mask.repeat(2, 1)
    feats[1] = feats[1].roll(1, dims=-1)
    scale = 3.0
    tokens = generate(model, feats, SamplingConfig(cfg_scale=scale, greedy=True), cond_mask=mask)
    flat = tokens.reshape(2, -1)
    with torch.no_grad():
        cond = model.forward_train(flat, feats, mask)
        uncond = model.forward_train(flat, model.null_condition(feats), mask)
    expected = guide(torch.cat([cond, uncond]), scale).argmax(-1)
    assert torch.equal(flat, expected)
    plain = generate(model, feats, SamplingConfig(cfg_scale=1.0, greedy=True), cond_mask=mask).reshape(2, -1)
    assert torch.equal(plain, model.forward_train(plain, feats, mask).argmax(-1))


def test_caption_dropout_uses_the_null_caption():
    model = tiny(caption_len=8)
    feats = torch.randn(3, 8, 12)
    dropped = model.drop_condition(feats, torch.tensor([True, False, True]))
    null = model.cls_embedding.uncond_embedding
    assert torch.equal(dropped[1], feats[1])
    assert torch.equal(dropped[0], null) and torch.equal(dropped[2], null)
