"""Analytic detector for rendered (or generated) shape scenes, and GenEval's scoring rules.

Detection: every pixel takes its nearest palette colour (or background, or "none" when far from
all); each colour's 4-connected components above a minimum area are candidates; a candidate's shape
is the template (circle, square, triangle fitted to its bounding box) with the highest IoU, and it
is kept only when that IoU is high enough, so noise does not produce objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from nar.shapes.render import shape_mask
from nar.shapes.scene import BACKGROUND, COLORS, PALETTE, SHAPES, Scene, relative_position

# A pixel farther than this (RGB Euclidean) from every palette colour and white is unassigned.
MAX_COLOR_DISTANCE = 90.0
# Smallest object, as a fraction of the image area (64 px → 12 px; ground-truth objects are ≥ 100).
MIN_AREA_FRACTION = 0.003
# Template IoU needed to accept a component as a shape.
MIN_IOU = 0.7

_REFERENCE = np.asarray([PALETTE[c] for c in COLORS] + [BACKGROUND], dtype=np.float32)  # [C + 1, 3]


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detected object; ``box`` = pixel ``(x0, y0, x1, y1)`` with exclusive ends."""

    shape: str
    color: str
    box: tuple[int, int, int, int]
    area: int
    iou: float


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in ``image`` (``uint8 [H, W, 3]`` RGB), largest first (GenEval's confidence order)."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    pixels = image.astype(np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - _REFERENCE[None, None], axis=-1)  # [H, W, C + 1]
    nearest = dist.argmin(axis=-1)
    nearest[dist.min(axis=-1) > MAX_COLOR_DISTANCE] = -1
    min_area = max(4, int(round(MIN_AREA_FRACTION * height * width)))

    found: list[Detection] = []
    for ci, color in enumerate(COLORS):
        labels, n = ndimage.label(nearest == ci)
        if n == 0:
            continue
        for index, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == index
            area = int(comp.sum())
            if area < min_area:
                continue
            h, w = comp.shape
            best, best_iou = "", 0.0
            for shape in SHAPES:
                template = shape_mask(shape, w / 2, h / 2, w / 2, h / 2, h, w)
                iou = float((template & comp).sum() / max(1, (template | comp).sum()))
                if iou > best_iou:
                    best, best_iou = shape, iou
            if best_iou >= MIN_IOU:
                box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
                found.append(Detection(best, color, box, area, best_iou))
    found.sort(key=lambda d: -d.area)
    return found


def evaluate(spec: dict[str, Any] | Scene, image: np.ndarray) -> tuple[bool, str]:
    """GenEval's rule for one image: ``(correct, reason)``.

    ``include`` entries need at least ``count`` objects of the class (the largest ones are checked for
    ``color`` and ``position``, relative to an earlier entry's objects); ``exclude`` entries fail when
    ``count`` or more objects of the class are present.
    """
    if isinstance(spec, Scene):
        spec = spec.spec
    by_class: dict[str, list[Detection]] = {}
    for det in detect(image):
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
