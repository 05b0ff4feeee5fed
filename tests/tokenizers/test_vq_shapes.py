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


def test_video_codes_are_causal_in_time():
    """Tokens of the first t' steps depend only on the frames they cover, not on later frames."""
    tokenizer = VQTokenizer(tiny_video()).eval()
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    changed = x.clone()
    changed[:, :, 2:] = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    z = tokenizer.quant_conv(tokenizer.encoder(x))
    z_changed = tokenizer.quant_conv(tokenizer.encoder(changed))
    torch.testing.assert_close(z[:, :, 0], z_changed[:, :, 0])
    assert not torch.allclose(z[:, :, 1], z_changed[:, :, 1])


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
