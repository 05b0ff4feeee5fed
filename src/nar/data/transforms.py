"""Pixel transforms shared by writers, readers and token extraction.

Images are resized the way the official extraction (LlamaGen / ADM ``center_crop_arr``) does: halve
with a box filter while the short side is at least twice the target, then bicubic to the target and
crop. Tensors come out as float ``[3, H, W]`` (videos ``[3, T, H, W]``) in ``[-1, 1]``. A whole stored video is
read as one window of consecutive frames (:func:`video_window`): a fresh one per training draw, the centre one
otherwise.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nar.errors import DataError


def decode_image(data: bytes, *, name: str = "<bytes>") -> Image.Image:
    """An RGB ``PIL.Image`` from encoded bytes; transparent images are composited on white."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for bad files
        raise DataError(f"{name}: cannot decode image: {err}") from None
    return to_rgb(img, name=name)


def to_rgb(img: Image.Image, *, name: str | None = None) -> Image.Image:
    """RGB copy of ``img``; alpha (RGBA, LA, palette with transparency) is composited on white. Greyscale
    deeper than 8 bits is scaled to 8 (PIL's own conversion clips it: a 16-bit PNG comes out almost all
    white), see :func:`_grey_to_8bit`; ``name`` (default: the image's file) goes into its errors."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_grey_to_8bit(img, name or getattr(img, "filename", "") or "<image>")).convert("RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_8bit(img: Image.Image, name: str) -> np.ndarray:
    """``uint8 [H, W]`` of an ``I;16*``, ``I`` or ``F`` image: 16-bit values (``I;16``, and ``I`` within
    ``[0, 65535]``, as Pillow opened 16-bit PNGs before ``I;16``) keep their high byte; floats within ``[0, 1]``
    are scaled by 255, within ``[0, 255]`` rounded. Other ranges are ambiguous: DataError naming the image."""
    arr = np.asarray(img)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return (arr >> 8).astype(np.uint8)
    lo, hi = arr.min(initial=0), arr.max(initial=0)
    if arr.dtype.kind in "iu" and 0 <= lo and hi <= 65535:
        return (arr >> 8).astype(np.uint8)
    if arr.dtype.kind == "f" and 0 <= lo and hi <= 1:
        return np.rint(arr * 255).astype(np.uint8)
    if arr.dtype.kind == "f" and 0 <= lo and hi <= 255:
        return np.rint(arr).astype(np.uint8)
    raise DataError(f"{name}: {img.mode} image with values in [{lo}, {hi}]: cannot map to 8 bits (expected "
                    f"16-bit [0, 65535] integers, or floats in [0, 1] or [0, 255])")


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size``, box-halving first like ADM's ``center_crop_arr``."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    return img.resize(tuple(max(size, round(x * scale)) for x in img.size), resample=Image.BICUBIC)


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """ADM / LlamaGen centre crop: ``uint8 [size, size, 3]``."""
    arr = np.asarray(resize_short_side(to_rgb(img), size))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def random_crop_arr(img: Image.Image, size: int, rng: np.random.Generator, *, min_crop_frac: float = 1.0) -> np.ndarray:
    """Resize the short side and crop a random ``size × size`` window: ``uint8 [size, size, 3]``.

    The short side goes to ``size``, or, with ``min_crop_frac < 1``, to a random whole size in
    ``[size, ceil(size / min_crop_frac)]`` (LlamaGen / ADM ``random_crop_arr``, which tokenizer training uses with
    0.8): the window then covers between ``min_crop_frac`` and all of the short side. That size takes one more
    number from ``rng``, before the window's two, so the default draws exactly what it always did.
    """
    if not 0 < min_crop_frac <= 1:  # also refuses NaN
        raise ValueError(f"min_crop_frac must be in (0, 1], got {min_crop_frac}")
    side = size
    if min_crop_frac < 1:
        side = int(rng.integers(size, math.ceil(size / min_crop_frac) + 1))
    arr = np.asarray(resize_short_side(to_rgb(img), side))
    top = int(rng.integers(0, arr.shape[0] - size + 1))
    left = int(rng.integers(0, arr.shape[1] - size + 1))
    return arr[top : top + size, left : left + size]


def to_tensor_pm1(arr: np.ndarray) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` → float ``[3, ..., H, W]`` in ``[-1, 1]`` (channels first)."""
    # numpy, not torch: single-threaded, so a DataLoader-less caller does not fight for cores
    x = np.moveaxis(np.asarray(arr, dtype=np.float32), -1, 0)
    return torch.from_numpy(np.ascontiguousarray(x) * np.float32(1 / 127.5) - np.float32(1.0))


def resize_video(frames: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` → ``uint8 [T, size, size, 3]``: short side to ``size`` (antialiased), centre crop."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def window_start(num_frames: int, length: int, rng: np.random.Generator | None) -> int:
    """First frame of a ``length``-frame window of a ``num_frames``-frame video: with ``rng`` any start that fits,
    uniformly (one scalar ``rng.integers(num_frames - length + 1)``, as the official LARP loader's
    ``np.random.randint``), else the centre one (``(num_frames - length) // 2``); 0 for a video shorter than a
    window."""
    last = max(0, num_frames - length)
    return last // 2 if rng is None else int(rng.integers(last + 1))


def video_window(frames: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """``[T, H, W, 3]`` → ``length`` consecutive frames ``[length, H, W, 3]`` from :func:`window_start` (``rng``:
    a training draw; None: the centre window); a video shorter than a window repeats its last frame."""
    if length < 1:
        raise ValueError(f"a window needs length ≥ 1, got {length}")
    if len(frames) < 1:
        raise ValueError("a window needs a video of at least one frame")
    start = window_start(len(frames), length, rng)
    if start + length <= len(frames):
        return frames[start : start + length]
    return frames[np.minimum(start + np.arange(length), len(frames) - 1)]


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[..., H, W]`` → ``[10, ..., size, size]``: centre, four corners, then the same five mirrored.

    The views are torchvision's ``TenCrop`` ones, which LlamaGen's extraction uses: the centre at
    ``round((H - size) / 2)``, and the mirrored five cut from the mirrored image, so with an odd margin the
    mirrored centre is not the centre mirrored. The order is ours: the centre first, so that augmentation 0
    is always the plain evaluation view, and each view named by where it was cut from the original image
    (:data:`AUGMENTATION_NAMES`; the mirrored image's top-left crop is ``top_right_flip``).
    """
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"ten_crop: input {h}×{w} smaller than crop {size}")
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))  # torchvision's center_crop

    def five(img: torch.Tensor) -> list[torch.Tensor]:  # centre, top-left, top-right, bottom-left, bottom-right
        return [img[..., top : top + size, left : left + size], img[..., :size, :size], img[..., :size, w - size :],
                img[..., h - size :, :size], img[..., h - size :, w - size :]]

    center, tl, tr, bl, br = five(x)
    m_center, m_tl, m_tr, m_bl, m_br = five(x.flip(-1))  # m_tl is the original's top-right corner, mirrored
    return torch.stack([center, tl, tr, bl, br, m_center, m_tr, m_tl, m_br, m_bl])


AUGMENTATION_NAMES: dict[str, list[str]] = {
    "none": ["center"],
    "flip": ["center", "center_flip"],
    "ten_crop": ["center", "top_left", "top_right", "bottom_left", "bottom_right"]
    + [f"{n}_flip" for n in ("center", "top_left", "top_right", "bottom_left", "bottom_right")],
}


def field(sample: dict[str, Any], *exts: str) -> tuple[str, Any]:
    """The first of ``exts`` present in ``sample``; :class:`DataError` naming the sample if none is."""
    for ext in exts:
        if ext in sample:
            return ext, sample[ext]
    raise DataError(f"{sample.get('__shard__', '?')}:{sample.get('__key__', '?')}: no field among {exts}")
