"""Rasterise a :class:`~nar.shapes.scene.Scene`: flat colours on white, no anti-aliasing.

Exact palette colours and hard edges keep the analytic detector exact on ground truth. The same
mask function is the detector's shape template, so rendering and detection agree by construction.
"""

from __future__ import annotations

import numpy as np

from nar.shapes.scene import BACKGROUND, PALETTE, Scene


def shape_mask(shape: str, cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> np.ndarray:
    """Boolean ``[height, width]`` mask of ``shape`` centred at pixel ``(cx, cy)`` with half-sizes ``rx, ry``.

    Pixel ``(i, j)`` is inside when its centre ``(j + 0.5, i + 0.5)`` is. The triangle points up.
    """
    py = np.arange(height, dtype=np.float64)[:, None] + 0.5
    px = np.arange(width, dtype=np.float64)[None, :] + 0.5
    u, v = (px - cx) / rx, (py - cy) / ry  # normalised to [-1, 1] inside the box
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":
        # apex (0, -1), base v = 1 from u = -1 to u = 1: half-width grows as (v + 1) / 2
        return (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as ``uint8 [size, size, 3]`` RGB on a white background."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for p in scene.primitives:
        mask = shape_mask(p.shape, p.x * size, p.y * size, p.r * size, p.r * size, size, size)
        image[mask] = PALETTE[p.color]
    return image
