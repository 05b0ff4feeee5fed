"""encode -> decode shapes and the tokenizer interface for image and video grids."""

from __future__ import annotations

import pytest
import torch
from tokenizer_helpers import tiny_image, tiny_video

from nar.tokenizers import VQConfig, VQTokenizer, build_tokenizer


@pytest.mark.parametrize("height,width", [(16, 16), (16, 24), (8, 32)])
def test_image_encode_decode_shapes(height, width):
    tokenizer = VQTokenizer(tiny_image()).eval()
    x = torch.rand(3, 3, height, width) * 2 - 1
    codes = tokenizer.encode(x)
    assert tokenizer.grid_shape(x.shape) == (height // 2, width // 2)
    assert codes.shape == (3, height // 2, width // 2) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < tokenizer.codebook_size
    assert tokenizer.decode(codes).shape == x.shape


@pytest.mark.parametrize("frames,height,width", [(4, 16, 16), (8, 16, 24)])
def test_video_encode_decode_shapes(frames, height, width):
    tokenizer = VQTokenizer(tiny_video()).eval()
    x = torch.rand(2, 3, frames, height, width) * 2 - 1
    codes = tokenizer.encode(x)
    assert tokenizer.grid_shape(x.shape) == (frames // 2, height // 4, width // 4)
    assert codes.shape == (2, frames // 2, height // 4, width // 4)
    assert tokenizer.decode(codes).shape == x.shape


@pytest.mark.parametrize("config", [tiny_video(), VQConfig.from_name("vq-video-tiny-atari")], ids=["x2", "x4"])
def test_video_codes_are_causal_in_time_and_see_every_frame(config):
    """Frame t of a clip reaches the latent step that stands for it (t // factor) and no earlier one: causal,
    and no frame skipped by a time-halving step (the last frames of a clip included)."""
    torch.manual_seed(0)
    tokenizer = VQTokenizer(config).eval()
    factor, frames = config.temporal_factor, 2 * config.temporal_factor
    x = torch.rand(1, 3, frames, 16, 16) * 2 - 1
    with torch.no_grad():
        z = tokenizer.quant_conv(tokenizer.encoder(x))
        for t in range(frames):
            changed = x.clone()
            changed[:, :, t] = torch.rand(1, 3, 16, 16) * 2 - 1
            moved = (tokenizer.quant_conv(tokenizer.encoder(changed)) - z).abs().amax(dim=(0, 1, 3, 4))
            step = t // factor
            assert (moved[:step] == 0).all(), f"frame {t} reaches step {moved[:step].nonzero()} before its own"
            assert moved[step] > 0, f"frame {t} never reaches its own step {step}"


def test_grid_shape_of_presets():
    assert VQConfig.from_name("vq-16").grid == (16, 16)
    assert VQConfig.from_name("vq-video-ucf101").grid == (4, 16, 16)
    assert build_tokenizer("vq-tiny-emoji").grid_shape((32, 32)) == (8, 8)
    assert VQTokenizer(tiny_video()).grid_shape((8, 32, 32)) == (4, 8, 8)


def test_bad_inputs_raise_clear_errors():
    tokenizer = VQTokenizer(tiny_image()).eval()
    with pytest.raises(ValueError, match="not divisible"):
        tokenizer.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tokenizer.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode(torch.full((1, 8, 8), 32))
