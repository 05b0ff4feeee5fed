"""What decoding one grid of codes to pixels costs, counted on the meta device (nothing is run or allocated).

For the speed of tokens + pixels (``nar bench --decode-with``, ``benchmarks/roofline.py``): the VQ-16 decoder
of a 16x16 grid is 0.25 TFLOP, two thirds of what NAR-L's tokens cost under CFG, so a decode row's fraction
of peak has to count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nar.tokenizers.config import VQConfig
from nar.tokenizers.vq import build_tokenizer


@dataclass(frozen=True)
class DecodeCost:
    """One sample's decode (codes -> pixels): ``flops`` of its convolutions and attention; ``conv_bytes`` that
    its convolutions read and write at ``element_bytes`` per value (each one's input once, its output once: the
    activation traffic left when every norm, activation and residual add is fused into a convolution);
    ``weight_bytes`` of the decoder's parameters, read once per batch."""

    flops: int
    conv_bytes: int
    weight_bytes: int
    element_bytes: int


_CACHE: dict[tuple, DecodeCost] = {}


def decode_cost(tokenizer: VQConfig | str, grid: Sequence[int], element_bytes: int = 2) -> DecodeCost:
    """The :class:`DecodeCost` of one ``grid`` of codes through ``tokenizer``'s ``decode`` (a preset name or a
    config), from the latent lookup's output on: the post-quantisation convolution and the decoder."""
    key = (repr(tokenizer), tuple(grid), element_bytes)
    if key in _CACHE:
        return _CACHE[key]
    with torch.device("meta"):
        tok = build_tokenizer(tokenizer)
    tok = tok.to("meta").eval()
    convs = [m for m in tok.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    moved = [0]

    def count_io(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        moved[0] += (args[0].numel() + out.numel()) * element_bytes

    hooks = [m.register_forward_hook(count_io) for m in convs]
    latent = torch.zeros(1, tok.post_quant_conv.in_channels, *grid, device="meta")
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            tok.decode_latents(latent)
    finally:
        for h in hooks:
            h.remove()
    decoder_params = [*tok.post_quant_conv.parameters(), *tok.decoder.parameters()]
    weights = sum(p.numel() for p in decoder_params) * element_bytes
    cost = DecodeCost(int(counter.get_total_flops()), moved[0], weights, element_bytes)
    _CACHE[key] = cost
    return cost

