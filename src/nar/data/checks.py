"""What one sample must look like, read from ``meta.json``: the single check that readers (skip and count)
and ``nar data verify`` (report) share.

A sample that decodes but contradicts ``meta.json`` — a token id ≥ ``codebook_size``, a token array whose
shape is not ``[A, *grid]``, a class outside ``classes``, a clip with the wrong frame count (a whole video, in a
folder of ``windows: per_visit``, may hold any number of frames from one up), an image of another size than a fixed
``image_size`` — raises :class:`InvalidSample` naming ``<shard>:<key>``.
A training batch therefore never holds such a sample (the model would fail on it with a bare
``IndexError`` or a ``torch.stack`` shape error naming nothing).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from nar.errors import DataError


class InvalidSample(DataError):
    """A sample that decodes but does not match ``meta.json``; ``name`` is ``<shard>:<key>``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader / writer processes
        return type(self), (self.name, self.reason)


def sample_name(raw: dict[str, Any]) -> str:
    """``<shard>:<key>`` of a raw sample from :func:`nar.data.shards.iter_tar`."""
    return f"{raw.get('__shard__', '?')}:{raw.get('__key__', '?')}"


def skip_reason(err: Exception) -> str:
    """How a skipped sample is reported (and counted: the text before the first colon is the kind)."""
    if isinstance(err, InvalidSample):
        return f"invalid sample: {err.reason}"
    return f"cannot decode sample: {err}"


def _optional_int(value: Any) -> int | None:
    return int(value) if value not in (None, "", 0) else None


# meta.json's ``windows`` of a video folder: fixed clips (also a folder without the field, written before it), or
# whole videos that readers cut a window of ``frames`` consecutive frames from at every visit
WINDOWS_FIXED, WINDOWS_PER_VISIT = "fixed", "per_visit"


def per_visit_window(meta: dict[str, Any], where: str = "meta.json") -> int | None:
    """The window length (``frames``) when ``meta`` describes whole videos read as a fresh window per training visit
    (``windows: per_visit``); None for fixed clips (``windows: fixed`` or absent). Another value, or a per-visit
    folder without ``frames``, is a :class:`DataError` naming ``where``."""
    windows = meta.get("windows") or WINDOWS_FIXED
    if windows == WINDOWS_FIXED:
        return None
    if windows != WINDOWS_PER_VISIT:
        raise DataError(f"{where}: windows {windows!r} is neither {WINDOWS_FIXED!r} (stored clips) nor "
                        f"{WINDOWS_PER_VISIT!r} (whole videos, a window per visit); rewrite the folder with `nar data`")
    frames = _optional_int(meta.get("frames"))
    if frames is None or frames < 1:
        raise DataError(f"{where}: windows {WINDOWS_PER_VISIT!r} needs frames, the window length (≥ 1), got "
                        f"{meta.get('frames')!r}")
    return frames


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """The checks ``meta.json`` implies; a field left ``None`` (or ``0`` classes) is not checked.

    ``unlabelled_ok``: a sample may lack a class (no ``cls`` or ``cls = -1``): true for caption
    datasets and datasets without ``classes``; a class-labelled dataset needs one on every sample.
    """

    num_classes: int = 0
    unlabelled_ok: bool = True
    grid: tuple[int, ...] | None = None
    codebook_size: int | None = None
    augmentations: int | None = None
    image_size: int | None = None  # stored images / frames are exactly this square size
    frames: int | None = None  # fixed clips: exactly this many frames
    window: int | None = None  # whole videos (windows: per_visit): any number ≥ 1, read as windows of this many

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> SampleSpec:
        """The spec of a dataset folder's ``meta.json`` (kind-specific fields as in docs/CONTRACTS.md)."""
        kind = meta.get("kind")
        classes = meta.get("classes") or []
        pixels = kind in ("image", "pairs", "video")
        window = per_visit_window(meta) if kind == "video" else None
        return cls(
            num_classes=len(classes),
            unlabelled_ok=not classes or meta.get("source_kind", kind) == "pairs",
            grid=tuple(int(g) for g in meta["grid"]) if kind == "tokens" and meta.get("grid") else None,
            codebook_size=_optional_int(meta.get("codebook_size")) if kind == "tokens" else None,
            augmentations=len(meta["augmentations"]) if kind == "tokens" and meta.get("augmentations") else None,
            image_size=_optional_int(meta.get("image_size")) if pixels else None,
            frames=_optional_int(meta.get("frames")) if kind == "video" and window is None else None,
            window=window,
        )

    def label(self, raw: dict[str, Any], name: str | None = None) -> int:
        """The sample's class (−1: none), checked against ``classes``."""
        name = name or sample_name(raw)
        if "cls" in raw:
            try:
                cls = int(bytes(raw["cls"]).decode("ascii").strip())
            except (ValueError, UnicodeDecodeError):
                raise InvalidSample(name, f"class {bytes(raw['cls'])[:20]!r} is not an integer") from None
        else:
            cls = -1
        if cls == -1:
            if not self.unlabelled_ok:
                raise InvalidSample(name, f"no class, but meta.json lists {self.num_classes} classes")
            return cls
        if cls < -1 or (self.num_classes and cls >= self.num_classes):
            raise InvalidSample(name, f"class {cls} outside [0, {self.num_classes or '∞'})")
        return cls

    def tokens(self, codes: np.ndarray, name: str) -> np.ndarray:
        """``tokens.npy``: integer ``[A, *grid]``, ids in ``[0, codebook_size)``."""
        if not np.issubdtype(codes.dtype, np.integer):
            raise InvalidSample(name, f"tokens.npy must hold integers, got {codes.dtype}")
        if self.grid is not None and tuple(codes.shape[1:]) != self.grid:
            raise InvalidSample(name, f"tokens.npy has shape {list(codes.shape)}, but meta.json's grid {list(self.grid)} "
                                      f"needs [A, {', '.join(map(str, self.grid))}]")
        if codes.ndim < 2 or codes.shape[0] < 1:
            raise InvalidSample(name, f"tokens.npy must be [A, *grid] with A ≥ 1, got shape {list(codes.shape)}")
        if self.augmentations is not None and codes.shape[0] != self.augmentations:
            raise InvalidSample(name, f"tokens.npy holds {codes.shape[0]} augmentations, meta.json names {self.augmentations}")
        if codes.size:
            lo, hi = int(codes.min()), int(codes.max())
            top = self.codebook_size
            if lo < 0 or (top is not None and hi >= top):
                bad = lo if lo < 0 else hi
                raise InvalidSample(name, f"token id {bad} outside [0, {top if top is not None else '∞'}) (codebook_size)")
        return codes

    def frames_array(self, frames: np.ndarray, name: str) -> np.ndarray:
        """``frames.npy``: uint8 ``[T, H, W, 3]`` with meta's ``frames`` (a whole video: any ``T ≥ 1``) and, when
        fixed, ``image_size``."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InvalidSample(name, f"frames.npy must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if self.frames is not None and frames.shape[0] != self.frames:
            raise InvalidSample(name, f"clip has {frames.shape[0]} frames, meta.json says {self.frames}")
        if self.window is not None and frames.shape[0] < 1:
            raise InvalidSample(name, "whole video has no frame")
        if self.image_size is not None and frames.shape[1:3] != (self.image_size, self.image_size):
            raise InvalidSample(name, f"frames are {frames.shape[2]}×{frames.shape[1]}, meta.json's image_size is {self.image_size}")
        return frames

    def image(self, img: Image.Image, name: str) -> Image.Image:
        """A decoded image: when meta fixes ``image_size``, exactly that square size."""
        if self.image_size is not None and img.size != (self.image_size, self.image_size):
            raise InvalidSample(name, f"image is {img.size[0]}×{img.size[1]}, meta.json's image_size is {self.image_size}")
        return img


__all__ = ["InvalidSample", "SampleSpec", "WINDOWS_FIXED", "WINDOWS_PER_VISIT", "per_visit_window", "sample_name",
           "skip_reason"]
