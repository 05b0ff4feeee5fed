"""nar.tokenizers.cost: the counted decode cost equals the convolutions and attention a real decode runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nar.tokenizers import build_tokenizer
from nar.tokenizers.blocks import AttnBlock
from nar.tokenizers.cost import decode_cost


@pytest.mark.parametrize("preset", ["vq-tiny-emoji", "vq-video-tiny-atari"])
def test_decode_cost_counts_every_convolution_and_attention(preset):
    tok = build_tokenizer(preset).eval()
    grid = tok.grid_shape([3, *([tok.config.num_frames] if tok.config.kind == "video" else []),
                           tok.config.image_size, tok.config.image_size])
    flops, moved = [0], [0]

    def conv(module, args, out):  # 2 FLOPs per multiply-add; input read once, output written once (fp32 here)
        flops[0] += 2 * (module.in_channels // module.groups) * math.prod(module.kernel_size) * out.numel()
        moved[0] += (args[0].numel() + out.numel()) * 4

    def attention(module, args, out):  # QK^T and PV over the positions of each frame, width C
        frames = out.shape[2] if out.dim() == 5 else 1
        c, n = out.shape[1], math.prod(out.shape[-2:])
        flops[0] += frames * 2 * (2 * n * n * c)

    for m in tok.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            m.register_forward_hook(conv)
        elif isinstance(m, AttnBlock):
            m.register_forward_hook(attention)
    codes = torch.randint(0, tok.codebook_size, (1, *grid))
    with torch.no_grad():
        pixels = tok.decode(codes)
    assert pixels.shape[0] == 1
    cost = decode_cost(preset, grid, element_bytes=4)
    assert cost.flops == flops[0]
    assert cost.conv_bytes == moved[0]
    decoder = [*tok.post_quant_conv.parameters(), *tok.decoder.parameters()]
    assert cost.weight_bytes == 4 * sum(p.numel() for p in decoder)
    half = decode_cost(preset, grid)  # bf16 by default: half the bytes, the same FLOPs
    assert (half.flops, half.conv_bytes, half.weight_bytes) == (cost.flops, cost.conv_bytes // 2, cost.weight_bytes // 2)
