"""ImageNet folder layout → image shards with class index and a class-name map.

Layout::

    <src>/train/<wnid>/*.JPEG
    <src>/val/<wnid>/*.JPEG                      (class folders), or
    <src>/val/*.JPEG + a label file              (flat; see :func:`read_val_labels`)
    <src>/LOC_synset_mapping.txt                 (optional: "n01440764 tench, Tinca tinca" per line)

Class indices follow the sorted wnids of ``train/`` (torchvision's ImageFolder order, the one every
ImageNet checkpoint uses). ``meta.json`` gets ``classes`` (wnids) and ``class_names``. The ``train`` split is
written in a seeded random order (:func:`nar.data.order.write_order`: training reads whole shards, so class
folders in a row would give batches of a few classes); other splits keep the folder order.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.data.encode import EncodeImage, first_existing, list_images
from nar.data.order import DEFAULT_ORDER_SEED, order_mismatch_hint, write_order
from nar.data.shards import BadInputLog, dataset_lock, refuse_other_folder_settings, write_meta, write_split
from nar.errors import DataError

log = logging.getLogger(__name__)

VAL_LABEL_CANDIDATES = ("LOC_val_solution.csv", "val_labels.txt", "val.txt", "validation_labels.txt")
SYNSET_CANDIDATES = ("LOC_synset_mapping.txt", "synset_words.txt", "synsets.txt")


def read_synset_names(path: Path) -> dict[str, str]:
    """``{wnid: human-readable name}`` from lines ``"n01440764 tench, Tinca tinca"``."""
    names = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return names


def read_val_labels(path: Path, classes: Sequence[str]) -> dict[str, int]:
    """``{file stem: class index}`` from a validation label file.

    Accepted: Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first word is the
    wnid), or whitespace-separated lines ``<file name> <wnid | class index>``.
    """
    index = {w: i for i, w in enumerate(classes)}
    labels: dict[str, int] = {}

    def resolve(token: str) -> int | None:
        if token in index:
            return index[token]
        if token.isdigit() and int(token) < len(classes):
            return int(token)
        return None

    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                words = (row.get("PredictionString") or "").split()
                cls = resolve(words[0]) if words else None
                if cls is not None:
                    labels[Path(row["ImageId"]).stem] = cls
    else:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and (cls := resolve(parts[1])) is not None:
                labels[Path(parts[0]).stem] = cls
    if not labels:
        raise DataError(f"{path}: no labels understood (expected LOC_val_solution.csv or '<file> <wnid>' lines)")
    return labels


def scan_class_folders(folder: Path, classes: Sequence[str], bad: BadInputLog, limit_per_class: int | None) -> list[tuple]:
    """Items ``(path, class, None, None)`` from ``folder/<class>/*``; empty or unknown folders are reported."""
    index = {w: i for i, w in enumerate(classes)}
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            bad.record(sub, "unknown class folder (not in train/)")
            continue
        files = list_images(sub)
        if not files:
            bad.record(sub, "empty class folder")
        items += [(str(f), index[sub.name], None, None) for f in files[:limit_per_class]]
    return items


def write_imagenet(
    src: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] = ("train", "val"),
    resize: int | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    val_labels: str | Path | None = None,
    synset_map: str | Path | None = None,
    limit_per_class: int | None = None,
    order_seed: int = DEFAULT_ORDER_SEED,
) -> dict[str, Any]:
    """Write ImageNet-layout ``src`` as image shards under ``out``; returns the new ``meta.json`` dict.

    ``resize`` stores images with their short side reduced to it (e.g. 288 for 256-px training) instead
    of the original bytes. Corrupt files, files without a label and empty folders are skipped and
    reported. Re-running resumes: finished shards are kept. ``train`` is written in the random order
    ``order_seed`` draws; a half-written ``train`` of another order is refused, not finished. Splits written
    into a folder that holds others (``--splits val`` after ``--splits train``) must share their ``resize`` and
    classes, which ``meta.json`` records once for all: other ones are refused before anything is written.
    """
    src, out = Path(src), Path(out)
    train_dir = src / "train"
    if train_dir.is_dir():
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    elif (src / "val").is_dir() and any(p.is_dir() for p in (src / "val").iterdir()):
        classes = sorted(p.name for p in (src / "val").iterdir() if p.is_dir())
    else:
        raise DataError(f"{src}: expected ImageNet layout with train/<wnid>/ folders")
    if not classes:
        raise DataError(f"{train_dir}: no class folders")
    synset_path = Path(synset_map) if synset_map else first_existing(src / n for n in SYNSET_CANDIDATES)
    if synset_path is None:
        synset_path = first_existing(src.parent / n for n in SYNSET_CANDIDATES)
    names = read_synset_names(synset_path) if synset_path else {}
    class_names = [names.get(w, w) for w in classes]

    present = [split for split in splits if (src / split).is_dir()]
    for split in (s for s in splits if s not in present):
        log.warning("%s: no %s/ folder, skipping split %r", src, split, split)
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        # meta.json's resize and classes describe every split: other ones for these splits are refused up front
        # (the source is not compared: the same folder spelled otherwise, or val from another copy, is fine)
        refuse_other_folder_settings(out, "image", present, {"resize": resize, "classes": classes},
                                     flags={"resize": "--resize", "classes": "the class folders of SRC"})
        encoder = EncodeImage(classes=tuple(classes), resize=resize, source_root=str(src))
        records = []
        for split in present:
            folder = src / split
            bad = BadInputLog()
            if any(p.is_dir() for p in folder.iterdir()):
                items = scan_class_folders(folder, classes, bad, limit_per_class)
            else:
                items = _flat_split_items(src, folder, classes, val_labels, bad, limit_per_class)
            if not items:
                bad.record(folder, "empty folder: no images")
            items, order = write_order(split, items, order_seed)
            rec = write_split(
                out, split, items, make_sample=encoder, shard_size=shard_size, workers=workers,
                params={"resize": resize, "classes": classes, **order}, desc=f"imagenet {split}", unit="img",
                scan_bad=bad, mismatch_hint=order_mismatch_hint(order),
            )
            records.append(rec)
        return write_meta(
            out, "image", records, classes=classes, class_names=class_names, source=f"imagenet:{src}",
            resize=resize,
        )


def _flat_split_items(
    src: Path, folder: Path, classes: Sequence[str], val_labels: str | Path | None, bad: BadInputLog,
    limit_per_class: int | None,
) -> list[tuple]:
    label_path = Path(val_labels) if val_labels else None
    if label_path is None:
        label_path = first_existing([*(src / n for n in VAL_LABEL_CANDIDATES), *(folder / n for n in VAL_LABEL_CANDIDATES),
                                     *(src.parent / n for n in VAL_LABEL_CANDIDATES)])
    if label_path is None:
        raise DataError(f"{folder} is flat but no label file was found; pass --val-labels (e.g. LOC_val_solution.csv)")
    labels = read_val_labels(label_path, classes)
    items, per_class = [], [0] * len(classes)
    for f in list_images(folder):
        cls = labels.get(f.stem)
        if cls is None:
            bad.record(f, "missing label")
            continue
        if limit_per_class is not None and per_class[cls] >= limit_per_class:
            continue
        per_class[cls] += 1
        items.append((str(f), cls, None, None))
    return items
