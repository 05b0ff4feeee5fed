"""Turning source files into shard samples: images (checked by a full decode) and file discovery."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from nar.data import transforms as T
from nar.data.shards import SkipSample

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, any case), sorted by path."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


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


@dataclasses.dataclass(frozen=True)
class EncodeImage:
    """Item ``(path, class index or −1, caption or None, extra json)`` → image sample fields.

    JPEG and PNG files are stored byte for byte unless ``resize`` is set (short side, only ever
    down), in which case they are re-encoded (PNG stays PNG, the rest becomes JPEG at ``quality``).
    Every file is fully decoded first, so corrupt and truncated files are skipped here, at writing.
    """

    classes: tuple[str, ...] = ()
    resize: int | None = None
    quality: int = 95
    source_root: str | None = None  # json "source" is relative to this folder

    def __call__(self, item: tuple[str, int, str | None, dict[str, Any] | None]) -> dict[str, Any]:
        path, cls, caption, extra = item
        data, img = load_checked_image(path)
        fmt = (img.format or "").upper()
        if self.resize is not None and min(img.size) > self.resize:
            rgb = T.resize_short_side(T.to_rgb(img), self.resize)
            ext, data = ("png", encode_png(rgb)) if fmt == "PNG" else ("jpg", encode_jpeg(rgb, self.quality))
            size = rgb.size
        elif fmt in ("JPEG", "PNG"):
            ext, size = ("jpg" if fmt == "JPEG" else "png"), img.size
        else:  # GIF, BMP, WebP, …: store as PNG so every reader handles it
            rgb = T.to_rgb(img)
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
