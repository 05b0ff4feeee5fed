"""CUDA checks: the official VQ on the GPU, and VQ-16 training steps in bf16 (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from nar.lightning.tokenizer_module import TokenizerModule
from nar.tokenizers import TokenizerLossConfig, TokenizerValConfig, VQConfig, load_official_vq

pytestmark = pytest.mark.gpu


def test_official_vq_on_cuda_matches_fixture(conformance):
    vq = conformance["vq"]
    torch.backends.cudnn.allow_tf32 = False
    tokenizer = load_official_vq(vq["checkpoint"]["model"], vq["config"]).cuda().eval()
    codes = tokenizer.encode(vq["images"].cuda())
    assert torch.equal(codes.cpu(), vq["codes"])
    torch.testing.assert_close(tokenizer.decode(vq["codes"].cuda()).cpu(), vq["decoded"], atol=1e-4, rtol=0)


def test_vq16_bf16_steps_lower_the_loss():
    torch.manual_seed(0)
    module = TokenizerModule(VQConfig.from_name("vq-16"),
                             loss=TokenizerLossConfig(adversarial_weight=0.5, adversarial_start_step=0),
                             val=TokenizerValConfig(rfid=False)).cuda()
    coarse = torch.rand(8, 3, 8, 8, device="cuda") * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=256, mode="bilinear")
    opt = torch.optim.AdamW(module.tokenizer.parameters(), lr=1e-4, betas=(0.9, 0.95))
    losses = []
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            terms = module.generator_losses(x, gan_on=True)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["rec"]))
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]
