"""Image–caption pairs → image shards with a ``txt`` caption (meta kind ``pairs``).

Two inputs are understood:

* a folder of images, each with a same-name ``.txt`` caption beside it (``cat.jpg`` + ``cat.txt``);
* a manifest: JSONL (one ``{"image": path, "caption": text}`` per line; ``file_name``/``path`` and
  ``text`` are accepted too), a ``.json`` array of such objects, or TSV (``path<TAB>caption``, split on
  the first tab with no quoting, so captions keep their quotes; optional header). Relative paths are
  resolved against the manifest's folder.

An image without a caption, a caption without an image, or an unreadable image is skipped and reported.
``train`` is written in a random order drawn from ``seed`` (:func:`nar.data.order.write_order`: training reads
whole shards, so a folder listed group by group would give batches of one group); ``val`` keeps the listing order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from nar.data.encode import IMAGE_EXTENSIONS, EncodeImage, list_images
from nar.data.order import order_mismatch_hint, write_order
from nar.data.shards import BadInputLog, dataset_lock, write_meta, write_split
from nar.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.05
_PATH_KEYS = ("image", "file_name", "path", "url", "filename")
_TEXT_KEYS = ("caption", "text", "prompt", "txt")


def scan_caption_folder(folder: Path, bad: BadInputLog) -> list[tuple]:
    """Items ``(image path, −1, caption, None)`` for images with a same-name ``.txt`` (recursive)."""
    items = []
    for img in list_images(folder, recursive=True):
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            bad.record(img, "missing caption: no same-name .txt")
            continue
        caption = txt.read_text(encoding="utf-8", errors="replace").strip()
        if not caption:
            bad.record(txt, "missing caption: empty .txt")
            continue
        items.append((str(img), -1, caption, None))
    return items


def _manifest_row(row: Any) -> tuple[str, str]:
    """``(image path, caption)`` of one manifest object; ``ValueError`` when either is missing."""
    if not isinstance(row, dict):
        raise ValueError("not an object")
    img = next((row[k] for k in _PATH_KEYS if k in row), None)
    text = next((row[k] for k in _TEXT_KEYS if k in row), None)
    if img is None or text is None:
        raise ValueError("no image path or caption")
    return str(img), str(text)


def read_manifest(path: Path, bad: BadInputLog) -> list[tuple]:
    """Items ``(image path, −1, caption, None)`` from a JSONL, JSON-array or TSV manifest."""
    base = path.parent
    rows: list[tuple[str, str]] = []
    content = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".json"):
        whole = None
        if path.suffix.lower() == ".json":  # an ordinary JSON array (one line or pretty-printed)
            try:
                whole = json.loads(content)
            except ValueError:
                pass  # not one JSON document: read it as JSONL below
        lines = not isinstance(whole, list)  # JSONL: each non-blank line one object; else the array's items
        entries = ([(f"{path}:{n}", line) for n, line in enumerate(content.splitlines(), 1) if line.strip()] if lines
                   else [(f"{path}[{i}]", row) for i, row in enumerate(whole)])
        for name, entry in entries:
            try:
                rows.append(_manifest_row(json.loads(entry) if lines else entry))
            except ValueError:
                bad.record(name, "bad manifest line: needs an image path and a caption")
    else:
        # split on the first tab only, no csv quoting: a caption may start with or hold unbalanced quotes
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            img, tab, caption = line.partition("\t")
            if not tab:
                bad.record(f"{path}:{n}", "bad manifest line: needs <path>\\t<caption>")
                continue
            if n == 1 and img.strip().lower() in _PATH_KEYS and caption.strip().lower() in _TEXT_KEYS:
                continue  # header
            rows.append((img, caption))
    items = []
    for img, text in rows:
        p = Path(img) if Path(img).is_absolute() else base / img
        if not p.is_file():
            bad.record(p, "missing file: listed in the manifest but not found")
        elif not text.strip():
            bad.record(p, "missing caption: empty caption in the manifest")
        else:
            items.append((str(p), -1, text.strip(), None))
    return items


def held_out_count(num_pairs: int, val_fraction: float) -> int:
    """Pairs held out for ``val``: ``round(val_fraction · n)``, at least one when there are two or more
    pairs (and ``val_fraction > 0``), never all of them.

    Raises:
        ConfigError: ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:  # a usage error (exit 2, one line), before any shard is written
        raise ConfigError(f"--val-fraction (val_fraction) must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or num_pairs < 2:
        return 0
    return min(num_pairs - 1, max(1, round(val_fraction * num_pairs)))


def write_pairs(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    resize: int | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    exif_transpose: bool = False,
) -> dict[str, Any]:
    """Write image–caption pairs from a folder or a manifest file ``src`` as shards under ``out``.

    A seeded random ``val_fraction`` of the pairs (default 5 %, at least one pair when there are two or
    more; 0: none) is held out as ``val``, the rest is ``train``, written in a random order drawn from ``seed``
    too (``val`` in the listing order). ``meta.json`` records ``val_fraction`` and ``seed``. ``exif_transpose``:
    images whose EXIF Orientation is not 1 are stored as viewers show them (:class:`~nar.data.encode.EncodeImage`).
    """
    src = Path(src)
    bad = BadInputLog()
    if src.is_dir():
        items = scan_caption_folder(src, bad)
        root = src
    elif src.is_file() and src.suffix.lower() not in IMAGE_EXTENSIONS:
        items = read_manifest(src, bad)
        root = src.parent
    else:
        raise DataError(f"{src}: expected a folder of images with .txt captions, or a .jsonl / .tsv manifest")
    if not items:
        bad.record(src, "empty folder: no image-caption pairs")
    in_val = np.zeros(len(items), dtype=bool)
    n_val = held_out_count(len(items), val_fraction)
    if n_val:
        in_val[np.random.default_rng(seed).permutation(len(items))[:n_val]] = True
    elif val_fraction > 0:
        log.warning("%s: %d pair(s): too few to hold out a val split; writing train only", src, len(items))
    encoder = EncodeImage(resize=resize, source_root=str(root), exif_transpose=exif_transpose)
    turned = {"exif_transpose": True} if exif_transpose else {}  # only when on: older folders resume as they were
    splits = {"train": [it for it, v in zip(items, in_val) if not v]}
    if n_val:
        splits["val"] = [it for it, v in zip(items, in_val) if v]
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        records = []
        for split, split_items in splits.items():
            split_items, order = write_order(split, split_items, seed)
            records.append(write_split(out, split, split_items, make_sample=encoder, shard_size=shard_size,
                                       workers=workers, params={"resize": resize, **order, **turned}, desc=f"pairs {split}",
                                       unit="img", scan_bad=bad if split == "train" else None,
                                       mismatch_hint=order_mismatch_hint(order)))
        return write_meta(out, "pairs", records, classes=[], source=f"pairs:{src}", resize=resize,
                          val_fraction=val_fraction if n_val else 0.0, seed=seed, exif_transpose=exif_transpose)
