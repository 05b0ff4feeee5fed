"""Turning source files into shard samples: images (checked by a full decode) and file discovery.

What a shard stores of an image file: RGB and 8-bit grey (``L``) JPEG / PNG files byte for byte (every reader
expands them to the same RGB: nearly all of ImageNet, whose few CMYK JPEGs become PNGs of the same pixels), every other mode (alpha, palette, 16-bit
grey, CMYK, …) as an RGB PNG of exactly the pixels nar's reader makes of the file (:func:`nar.data.transforms.to_rgb`),
so a plain PIL ``.convert("RGB")`` (webdataset's ``rgb8``) reads the same. EXIF Orientation is left unapplied, as
the official ImageNet extraction (plain PIL) reads files, unless :class:`EncodeImage` is given ``exif_transpose``;
images it leaves rotated are counted (:func:`track_unapplied_orientations`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from nar.data import transforms as T
from nar.data.shards import SkipSample
from nar.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".avif"})
# files the writers read beside images (captions, label lists, synset maps, manifests): not worth a word
SIDECAR_EXTENSIONS = frozenset({".txt", ".json", ".jsonl", ".csv", ".tsv"})
# modes every reader expands to the same RGB, so JPEG / PNG files in them keep their bytes
KEPT_MODES = frozenset({"RGB", "L"})
EXIF_ORIENTATION = 0x0112  # the EXIF tag (274) ImageOps.exif_transpose applies


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, any case), sorted by path; hidden files, and with ``recursive``
    everything below a hidden folder (``.git``, ``.thumbnails``), are left out.

    Other files (captions, label lists and manifests aside: ``SIDECAR_EXTENSIONS``) are counted and named in one
    warning per call, so that a folder of e.g. ``.heic`` photos, which PIL does not read, is not dropped unsaid.
    """
    images, others = [], []
    for path in folder.rglob("*") if recursive else folder.iterdir():
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images.append(path)
        elif suffix not in SIDECAR_EXTENSIONS:
            others.append(path)
    warn_not_images(folder, others)
    return sorted(images)


def warn_not_images(folder: Path, others: Sequence[Path]) -> None:
    """One warning for the files below ``folder`` left out as no image by their extension (``others``: not
    ``SIDECAR_EXTENSIONS``, not hidden), with their count per extension and the first path as an example;
    nothing when there is none."""
    if not others:
        return
    kinds = Counter(p.suffix.lower() or "without extension" for p in others)
    log.warning("%s: %d file%s ignored, not images by extension (%s), e.g. %s", folder, len(others),
                "s" if len(others) > 1 else "", ", ".join(f"{n} {k}" for k, n in kinds.most_common()),
                min(others).relative_to(folder))


def load_checked_image(path: str | Path) -> tuple[bytes, Image.Image]:
    """The file's bytes and its fully decoded image; :class:`SkipSample` for unreadable or corrupt files."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SkipSample(path, f"cannot read file: {err}") from None
    if not data:
        raise SkipSample(path, "cannot decode image: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # a truncated JPEG fails here, not at open()
    except Exception as err:  # noqa: BLE001 — PIL raises many types
        raise SkipSample(path, f"cannot decode image: {err}") from None
    return data, img


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation of a loaded image, 2–8 when it asks viewers to turn or mirror it, else 1 (absent,
    1, out of range, or EXIF data PIL cannot parse: nothing a viewer would apply either)."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 — a damaged EXIF block must not cost a readable image
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


@dataclasses.dataclass
class UnappliedOrientations:
    """Images stored with an EXIF Orientation other than 1 left unapplied: how many, and the first of them."""

    count: int = 0
    example: str | None = None
    orientation: int = 1
    pid: int = dataclasses.field(default_factory=os.getpid)  # the process that reports the count


_tracker: UnappliedOrientations | None = None  # the count this process reports at its end, if any
_warned_in: int | None = None  # the process that has already warned on its own


@contextlib.contextmanager
def track_unapplied_orientations() -> Iterator[UnappliedOrientations]:
    """Count the images :class:`EncodeImage` stores with their EXIF Orientation unapplied in this process during
    the block, for one warning at the end (the caller's). A process without a tracker of its own (a ``--workers``
    process, whose counts never reach the parent, or a library caller) warns at its first such image instead."""
    global _tracker
    previous, _tracker = _tracker, UnappliedOrientations()
    try:
        yield _tracker
    finally:
        _tracker = previous


def _note_unapplied_orientation(path: str, orientation: int) -> None:
    global _warned_in
    tracker = _tracker
    if tracker is not None and tracker.pid == os.getpid():
        tracker.count += 1
        if tracker.example is None:
            tracker.example, tracker.orientation = path, orientation
    elif _warned_in != os.getpid():
        _warned_in = os.getpid()
        log.warning("%s has EXIF Orientation %d: stored as its pixels lie, not as viewers show it (a phone photo "
                    "trains sideways); --exif-transpose (EncodeImage.exif_transpose) stores such images upright. "
                    "Said once per process", path, orientation)


def _rgb(img: Image.Image, path: str) -> Image.Image:
    """``img`` as nar's reader converts it (:func:`nar.data.transforms.to_rgb`); SkipSample where it cannot."""
    try:
        return T.to_rgb(img, name=path)
    except DataError as err:
        raise SkipSample(path, f"cannot convert to RGB: {str(err).removeprefix(f'{path}: ')}") from None


@dataclasses.dataclass(frozen=True)
class EncodeImage:
    """Item ``(path, class index or −1, caption or None, extra json)`` → image sample fields.

    RGB and 8-bit grey JPEG and PNG files are stored byte for byte unless ``resize`` is set (short side, only ever
    down), in which case they are re-encoded (PNG stays PNG, the rest becomes JPEG at ``quality``). Every other
    file, and every other mode (alpha, palette, 16-bit grey, CMYK JPEG), is stored as an RGB PNG of the pixels
    nar's reader makes of it. ``exif_transpose`` turns images whose EXIF Orientation is not 1 as viewers show them
    (those alone are re-encoded: JPEG as JPEG at ``quality``, the rest as PNG); without it such images are stored
    as their pixels lie and counted (:func:`track_unapplied_orientations`). Every file is fully decoded first, so
    corrupt and truncated files are skipped here, at writing.
    """

    classes: tuple[str, ...] = ()
    resize: int | None = None
    quality: int = 95
    source_root: str | None = None  # json "source" is relative to this folder
    exif_transpose: bool = False

    def __call__(self, item: tuple[str, int, str | None, dict[str, Any] | None]) -> dict[str, Any]:
        path, cls, caption, extra = item
        data, img = load_checked_image(path)
        fmt = (img.format or "").upper()
        turned = False
        if (orientation := exif_orientation(img)) != 1:
            if self.exif_transpose:
                img, turned = ImageOps.exif_transpose(img), True
            else:
                _note_unapplied_orientation(str(path), orientation)
        if self.resize is not None and min(img.size) > self.resize:
            rgb = T.resize_short_side(_rgb(img, str(path)), self.resize)
            ext, data = ("png", encode_png(rgb)) if fmt == "PNG" else ("jpg", encode_jpeg(rgb, self.quality))
            size = rgb.size
        elif turned:
            rgb = _rgb(img, str(path))
            ext, data = ("jpg", encode_jpeg(rgb, self.quality)) if fmt == "JPEG" else ("png", encode_png(rgb))
            size = rgb.size
        elif fmt in ("JPEG", "PNG") and img.mode in KEPT_MODES:
            ext, size = ("jpg" if fmt == "JPEG" else "png"), img.size
        else:  # GIF, BMP, WebP, …, and modes readers convert differently: an RGB PNG every reader reads alike
            rgb = _rgb(img, str(path))
            ext, data, size = "png", encode_png(rgb), rgb.size
        source = str(path)
        if self.source_root is not None:
            try:
                source = str(Path(path).relative_to(self.source_root))
            except ValueError:
                pass
        meta: dict[str, Any] = {"source": source, "width": size[0], "height": size[1]}
        fields: dict[str, Any] = {ext: data}
        if cls >= 0:
            fields["cls"] = cls
            if self.classes:
                meta["label"] = self.classes[cls]
        if caption is not None:
            fields["txt"] = caption
        if extra:
            meta.update(extra)
        fields["json"] = meta
        return fields


def first_existing(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None
