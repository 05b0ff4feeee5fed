"""The embedded ``shapes`` domain: scenes for the GenEval task families, a renderer and an analytic detector.

>>> rng = np.random.default_rng(0)
>>> scene = sample_scene(rng, "color_attr")
>>> image = render_scene(scene, size=64)        # uint8 [64, 64, 3]
>>> score(scene.spec, image)
True
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (doctest)

from nar.shapes.detect import Detection, SceneReading, detect, evaluate, read_scene, score
from nar.shapes.render import render_scene, shape_mask
from nar.shapes.scene import (
    COLORS,
    FAMILIES,
    PALETTE,
    RELATIONS,
    SHAPES,
    Primitive,
    Scene,
    caption,
    parse_prompt,
    prompt_for,
    relative_position,
    sample_scene,
)

__all__ = [
    "COLORS",
    "FAMILIES",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "Detection",
    "Primitive",
    "Scene",
    "SceneReading",
    "caption",
    "detect",
    "evaluate",
    "parse_prompt",
    "prompt_for",
    "read_scene",
    "relative_position",
    "render_scene",
    "sample_scene",
    "score",
    "shape_mask",
]
