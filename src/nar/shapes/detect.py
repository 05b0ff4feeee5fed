"""Analytic detector for rendered (or generated) shape scenes, and GenEval's scoring rules.

Detection: every pixel takes its nearest palette colour (or background, or "none" when far from
all); each colour's 4-connected components are candidates. A candidate is an object only when it is
a clean blob the renderer could have drawn (:func:`_accept` lists the checks: size within the scene's
object-size range, a square bounding box, a template IoU that also bounds its fill ratio, pure colour,
no other colour inside its box). The shape is the template (circle, square, triangle fitted to the
box) with the highest IoU.

A scene is more than its objects: rendered scenes are flat objects on white, so every non-white pixel
is explained by an accepted object. :func:`read_scene` also measures the *clutter*, the fraction of
the image that is neither background nor (near) an accepted object, and :func:`evaluate` fails a
cluttered image outright. Without this, decoded random tokens (a dense patchwork of coloured
fragments) pass "an X is present" and "X left of Y" checks by picking the right fragments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from nar.shapes.render import shape_mask
from nar.shapes.scene import (
    BACKGROUND,
    COLORS,
    MAX_HALF_SIZE,
    MIN_HALF_SIZE,
    PALETTE,
    SHAPES,
    Scene,
    relative_position,
)

# A pixel farther than this (RGB Euclidean) from every palette colour and white is unassigned.
MAX_COLOR_DISTANCE = 90.0
# Smallest object area, as a fraction of the smallest object the scenes contain (a triangle of
# half-size MIN_HALF_SIZE covers 2 r² of the image): half of it, so a slightly eroded decoded object
# still counts while fragments do not.
MIN_AREA_RATIO = 0.5
# Largest box side, as a multiple of the largest object's side (2 MAX_HALF_SIZE), plus one pixel:
# blobs bigger than any drawn object are merged clutter.
MAX_SIDE_RATIO = 1.25
# Drawn objects have square boxes (one half-size for both axes); allow this aspect ratio for
# pixel rounding and decoding blur (at 32 px a 6 px object may lose a row).
MAX_ASPECT = 1.5
# Template IoU needed to accept a component as a shape. It bounds the fill ratio and solidity too:
# a ragged or hollow blob cannot overlap a filled template this well.
MIN_IOU = 0.7
# Mean RGB distance of a blob's pixels to its palette colour: decoded objects are near-flat, while
# fragments of noise are blends that only happen to be nearest to some palette colour.
MAX_MEAN_COLOR_DISTANCE = 60.0
# Fraction of a blob's box that may be another object colour (or unassigned): drawn objects keep a
# gap between boxes, so a box shared with other colours is a patch of a patchwork.
MAX_FOREIGN_FRACTION = 0.1
# A pixel this far (RGB Euclidean) from white is foreground: it must lie on or next to an object.
BACKGROUND_TOLERANCE = 60.0
# Accepted objects explain foreground within this many pixels of their blob (decoded edges blur).
EXPLAIN_MARGIN = 1
# Fraction of the image that may be unexplained foreground before the image fails every prompt,
# about one mid-sized object (a circle of half-size 0.13 covers 0.053): ground truth has none,
# tokenizer reconstructions at 32 px a blurred fringe (95th percentile 0.05), decoded random tokens
# 0.4–0.7 (shapes val, 300 images).
MAX_CLUTTER = 0.05

_REFERENCE = np.asarray([PALETTE[c] for c in COLORS] + [BACKGROUND], dtype=np.float32)  # [C + 1, 3]
_BACKGROUND_INDEX = len(COLORS)
# Sub-pixel growths of the box-fitted template: a render of half-size r covers the pixels whose
# centres are inside, so its box can be up to one pixel narrower than 2 r.
_TEMPLATE_GROWTH = (0.0, 0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detected object; ``box`` = pixel ``(x0, y0, x1, y1)`` with exclusive ends."""

    shape: str
    color: str
    box: tuple[int, int, int, int]
    area: int
    iou: float


@dataclasses.dataclass(frozen=True)
class SceneReading:
    """What :func:`read_scene` sees: the objects (largest first) and the unexplained foreground fraction."""

    detections: list[Detection]
    clutter: float


def _best_shape(comp: np.ndarray) -> tuple[str, float]:
    """The template (fitted to ``comp``'s ``[h, w]`` box) with the highest IoU, and that IoU."""
    h, w = comp.shape
    best, best_iou = "", 0.0
    for shape in SHAPES:
        for grow in _TEMPLATE_GROWTH:
            template = shape_mask(shape, w / 2, h / 2, w / 2 + grow, h / 2 + grow, h, w)
            iou = float((template & comp).sum() / max(1, (template | comp).sum()))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def read_scene(image: np.ndarray) -> SceneReading:
    """Objects in ``image`` (``uint8 [H, W, 3]`` RGB) and the fraction of it that is clutter."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    pixels = image.astype(np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - _REFERENCE[None, None], axis=-1)  # [H, W, C + 1]
    nearest = dist.argmin(axis=-1)
    nearest[dist.min(axis=-1) > MAX_COLOR_DISTANCE] = -1
    side = min(height, width)
    min_area = max(4, int(MIN_AREA_RATIO * 2 * (MIN_HALF_SIZE * side) ** 2))
    max_side = MAX_SIDE_RATIO * 2 * MAX_HALF_SIZE * side + 1

    found: list[Detection] = []
    explained = np.zeros((height, width), dtype=bool)
    for ci, color in enumerate(COLORS):
        labels, n = ndimage.label(nearest == ci)
        for index, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == index
            area = int(comp.sum())
            h, w = comp.shape
            if area < min_area or max(h, w) > max_side or max(h, w) > MAX_ASPECT * min(h, w):
                continue
            if dist[sl][..., ci][comp].mean() > MAX_MEAN_COLOR_DISTANCE:
                continue
            # Blended edge pixels (next to the blob, or matching no colour) are blur, not another object.
            other = (nearest[sl] >= 0) & (nearest[sl] != ci) & (nearest[sl] != _BACKGROUND_INDEX)
            foreign = (other & ~ndimage.binary_dilation(comp, iterations=EXPLAIN_MARGIN)).mean()
            if foreign > MAX_FOREIGN_FRACTION:
                continue
            shape, iou = _best_shape(comp)
            if iou < MIN_IOU:
                continue
            found.append(Detection(shape, color, (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), area, iou))
            explained[sl] |= comp
    found.sort(key=lambda d: -d.area)
    if EXPLAIN_MARGIN:
        explained = ndimage.binary_dilation(explained, iterations=EXPLAIN_MARGIN)
    foreground = dist[..., _BACKGROUND_INDEX] > BACKGROUND_TOLERANCE
    clutter = float((foreground & ~explained).sum() / (height * width))
    return SceneReading(found, clutter)


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in ``image`` (``uint8 [H, W, 3]`` RGB), largest first (GenEval's confidence order)."""
    return read_scene(image).detections


def evaluate(spec: dict[str, Any] | Scene, image: np.ndarray) -> tuple[bool, str]:
    """GenEval's rule for one image: ``(correct, reason)``.

    An image whose clutter exceeds :data:`MAX_CLUTTER` fails whatever the prompt. Otherwise
    ``include`` entries need at least ``count`` objects of the class (the largest ones are checked for
    ``color`` and ``position``, relative to an earlier entry's objects); ``exclude`` entries fail when
    ``count`` or more objects of the class are present.
    """
    if isinstance(spec, Scene):
        spec = spec.spec
    reading = read_scene(image)
    if reading.clutter > MAX_CLUTTER:
        return False, f"cluttered: {reading.clutter:.1%} of the image is foreground no object explains"
    by_class: dict[str, list[Detection]] = {}
    for det in reading.detections:
        by_class.setdefault(det.shape, []).append(det)
    correct, reasons = True, []
    groups: list[list[Detection] | None] = []
    for req in spec.get("include", []):
        cls, count = req["class"], int(req["count"])
        objs = by_class.get(cls, [])[:count]
        matched = True
        if len(objs) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(objs)}")
        else:
            if "color" in req:
                colors = [o.color for o in objs]
                if colors.count(req["color"]) < count:
                    matched = False
                    reasons.append(f"expected {req['color']} {cls}, found {colors}")
            if "position" in req and matched:
                rel, target = req["position"]
                anchors = groups[target]
                if anchors is None:
                    matched = False
                    reasons.append(f"no target for {cls} {rel}")
                else:
                    for obj in objs:
                        for anchor in anchors:
                            if rel not in relative_position(obj.box, anchor.box):
                                matched = False
                                reasons.append(f"expected {cls} {rel} target")
                                break
                        if not matched:
                            break
        correct &= matched
        groups.append(objs if matched else None)
    for req in spec.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        if len(by_class.get(cls, [])) >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {len(by_class.get(cls, []))}")
    return correct, "; ".join(reasons)


def score(spec: dict[str, Any] | Scene, image: np.ndarray) -> bool:
    """Whether ``image`` (``uint8 [H, W, 3]``) satisfies the GenEval spec (or the scene's spec)."""
    return evaluate(spec, image)[0]
