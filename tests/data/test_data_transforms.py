"""Pixel transforms against their references: torchvision's TenCrop, and deep greyscale images to 8 bits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as TV
from PIL import Image

from nar.data.official import OFFICIAL_TEN_CROP
from nar.data.transforms import (
    AUGMENTATION_NAMES,
    decode_image,
    random_crop_arr,
    resize_short_side,
    ten_crop,
    to_rgb,
)
from nar.errors import DataError


@pytest.mark.parametrize("h,w,size", [(35, 35, 32), (70, 70, 64), (281, 281, 256), (8, 11, 5), (9, 9, 4), (6, 6, 6)])
def test_ten_crop_is_torchvisions_views_in_our_order(h, w, size):
    """Odd margins (35 → 32: 3; 281 → 256: 25) put torchvision's centre at round(margin / 2) and its mirrored
    centre elsewhere than the centre mirrored; each of our views is the torchvision view of the same name."""
    x = torch.randn(3, h, w)
    ours, tv = ten_crop(x, size), TV.TenCrop(size)(x)
    for i, name in enumerate(AUGMENTATION_NAMES["ten_crop"]):
        assert torch.equal(ours[i], tv[OFFICIAL_TEN_CROP.index(name)]), name


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_png_keeps_its_tones():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)  # black → white
    rgb = np.asarray(decode_image(_png(ramp), name="ramp.png"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], (ramp >> 8).astype(np.uint8)) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_deep_greyscale_modes_scale_to_8_bits_or_name_the_file():
    grey = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    wide = Image.fromarray(grey.astype(np.int32) * 256 + 7)  # mode I, 16-bit values (older Pillow's 16-bit PNGs)
    assert wide.mode == "I" and np.array_equal(np.asarray(to_rgb(wide))[..., 1], grey)
    for scale in (1 / 255, 1.0):  # floats in [0, 1] and in [0, 255]
        img = Image.fromarray(grey.astype(np.float32) * np.float32(scale))
        assert img.mode == "F" and np.array_equal(np.asarray(to_rgb(img))[..., 0], grey)
    with pytest.raises(DataError, match=r"odd\.tif: I image with values in \[-5, 70000\]"):
        to_rgb(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)), name="odd.tif")
    with pytest.raises(DataError, match=r"<image>: F image"):
        to_rgb(Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32)))


def _crop_sides(img: Image.Image, out: np.ndarray, sides: range) -> list[int]:
    """The short sides in ``sides`` whose resize of ``img`` holds ``out`` as a window."""
    size, found = out.shape[0], []
    for side in sides:
        arr = np.asarray(resize_short_side(img, side))
        windows = np.lib.stride_tricks.sliding_window_view(arr, (size, size, 3))[..., 0, :, :, :]
        if (windows == out).all(axis=(-3, -2, -1)).any():
            found.append(side)
    return found


def test_random_crop_jitters_the_scale_as_llamagen():
    """LlamaGen's random_crop_arr: the short side to a random size in [size, ceil(size / min_crop_frac)], then a
    random size x size window; min_crop_frac 1 (the default) keeps the short side at size."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    size = 16
    jitter = range(size, -(-size * 5 // 4) + 1)  # 16..20 for 0.8
    seen = set()
    for seed in range(12):
        out = random_crop_arr(img, size, np.random.default_rng(seed), min_crop_frac=0.8)
        assert out.shape == (size, size, 3)
        sides = _crop_sides(img, out, range(size, 2 * size))
        assert sides and set(sides) <= set(jitter), sides
        seen.update(sides)
        plain = random_crop_arr(img, size, np.random.default_rng(seed))
        assert _crop_sides(img, plain, range(size, size + 1)) == [size]
    assert len(seen) > 1  # the scale varies
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_crop_frac"):
            random_crop_arr(img, size, np.random.default_rng(0), min_crop_frac=bad)
