"""ImageNet folder layout → image shards with class index and a class-name map.

Layout::

    <src>/train/<wnid>/*.JPEG
    <src>/val/<wnid>/*.JPEG                      (class folders), or
    <src>/val/*.JPEG + a label file              (flat; see :func:`read_val_labels`)
    <src>/LOC_synset_mapping.txt                 (optional: "n01440764 tench, Tinca tinca" per line)

Class indices follow the sorted wnids of ``train/`` (torchvision's ImageFolder order, the one every
ImageNet checkpoint uses). As ImageFolder reads them, a class's images are the image files anywhere below its
folder (``train/animals/cat/*.png`` belong to ``animals``), in sorted path order, hidden files and folders left
out; a class folder with no image at all is refused before anything is written (it would be a class nothing
trains). ``meta.json`` gets ``classes`` (wnids) and ``class_names``. The ``train`` split is written in a seeded
random order (:func:`nar.data.order.write_order`: training reads whole shards, so class folders in a row would give
batches of a few classes); other splits keep the folder order.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nar.data.encode import (
    IMAGE_EXTENSIONS,
    SIDECAR_EXTENSIONS,
    EncodeImage,
    first_existing,
    list_images,
    warn_not_images,
)
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


def class_folders(folder: Path) -> list[Path]:
    """The class folders of a split folder: its sub-folders (symbolic links to folders too), hidden ones left out
    (``.ipynb_checkpoints``, ``.git``), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_below(folder: Path, bad: BadInputLog | None = None, others: list[Path] | None = None) -> Iterator[Path]:
    """The image files anywhere below ``folder`` (by extension, any case), in sorted path order: each folder's
    entries sorted by name, sub-folders entered where they sort, which is the order of ``sorted()`` on the paths
    (so a folder holding only files lists exactly as :func:`~nar.data.encode.list_images` does). Hidden files and
    folders are left out; a linked folder is entered once (a link back up the tree is not a loop). A sub-folder
    that cannot be read is recorded in ``bad`` (raised with none given, and for ``folder`` itself).

    Each folder is listed and sorted whole before anything of it is yielded; with ``others`` given, the files of
    each listed folder that are no image by extension (hidden ones, and captions, label lists and manifests:
    ``SIDECAR_EXTENSIONS``, aside) are appended to it, for :func:`~nar.data.encode.warn_not_images`."""
    seen = {folder.resolve()}
    known = IMAGE_EXTENSIONS | SIDECAR_EXTENSIONS

    def walk(current: Path) -> Iterator[Path]:
        try:
            with os.scandir(current) as it:  # the entries' types come with the listing: no stat per plain file
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            if bad is None or current == folder:
                raise
            bad.record(current, f"cannot read folder: {err.strerror or err}")
            return
        if others is not None:
            others.extend(current / e.name for e in entries
                          if not e.name.startswith(".") and e.is_file() and Path(e.name).suffix.lower() not in known)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = current / entry.name
            if entry.is_dir():  # links followed, as by Path.is_dir
                real = path.resolve()
                if real not in seen:
                    seen.add(real)
                    yield from walk(path)
            elif entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                yield path

    return walk(folder)


def refuse_classes_without_images(class_root: Path, classes: Sequence[str]) -> None:
    """:class:`DataError` naming every folder of ``class_root/<class>`` with no image anywhere below it: each class
    folder becomes a class of ``meta.json`` (balanced evaluation samples all of them), so one of no images is a
    mistake to fix, not a class to train. A class folder's walk ends at its first image in sorted order, after
    listing whole each folder entered up to it (:func:`images_below`): one listing for a folder of images."""
    empty = [class_root / c for c in classes if next(images_below(class_root / c), None) is None]
    if empty:
        shown = ", ".join(str(p) for p in empty[:20]) + (f" and {len(empty) - 20} more" if len(empty) > 20 else "")
        many = len(empty) > 1
        raise DataError(f"{len(empty)} class folder{'s hold' if many else ' holds'} no image (none in "
                        f"{'them nor their' if many else 'it nor its'} sub-folders; extensions "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}, hidden files left out): {shown}; each would be a "
                        f"class with no samples: remove {'them' if many else 'it'} or add images")


def scan_class_folders(folder: Path, classes: Sequence[str], bad: BadInputLog, limit_per_class: int | None) -> list[tuple]:
    """Items ``(path, class, None, None)`` from the images below ``folder/<class>/`` (:func:`images_below`); class
    folders with no image, or not among ``classes``, are reported in ``bad``. Other files of the folders listed
    (a .heic, a stray .xyz) are counted and named in one warning for the split, as ``list_images`` does."""
    index = {w: i for i, w in enumerate(classes)}
    items, others = [], []
    for sub in class_folders(folder):
        if sub.name not in index:
            bad.record(sub, "unknown class folder (not in train/)")
            continue
        files = list(itertools.islice(images_below(sub, bad, others), limit_per_class))
        if not files and limit_per_class != 0:
            bad.record(sub, "class folder with no image in it or its sub-folders")
        items += [(str(f), index[sub.name], None, None) for f in files]
    warn_not_images(folder, others)
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
    exif_transpose: bool = False,
) -> dict[str, Any]:
    """Write ImageNet-layout ``src`` as image shards under ``out``; returns the new ``meta.json`` dict.

    ``resize`` stores images with their short side reduced to it (e.g. 288 for 256-px training) instead
    of the original bytes. A class folder of ``train/`` (of ``val/`` without one) with no image anywhere below it
    is refused (:class:`DataError` naming it) before anything is written. Corrupt files, files without a label and
    other splits' class folders with no image are skipped and reported. Re-running resumes: finished shards are
    kept. ``train`` is written in the random order ``order_seed`` draws; a half-written ``train`` of another order
    is refused, not finished. Splits written into a folder that holds others (``--splits val`` after ``--splits
    train``) must share their ``resize`` and classes, which ``meta.json`` records once for all: other ones are
    refused before anything is written. ``exif_transpose``: images whose EXIF Orientation is not 1 are stored as
    viewers show them (:class:`~nar.data.encode.EncodeImage`), a folder-wide setting as ``resize`` is.
    """
    src, out = Path(src), Path(out)
    train_dir = src / "train"
    if train_dir.is_dir():
        class_root = train_dir
    elif (src / "val").is_dir() and class_folders(src / "val"):
        class_root = src / "val"
    else:
        raise DataError(f"{src}: expected ImageNet layout with train/<wnid>/ folders")
    classes = [p.name for p in class_folders(class_root)]
    if not classes:
        raise DataError(f"{train_dir}: no class folders")
    refuse_classes_without_images(class_root, classes)
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
        refuse_other_folder_settings(out, "image", present,
                                     {"resize": resize, "classes": classes, "exif_transpose": exif_transpose},
                                     defaults={"exif_transpose": False},
                                     flags={"resize": "--resize", "classes": "the class folders of SRC",
                                            "exif_transpose": "--exif-transpose"})
        encoder = EncodeImage(classes=tuple(classes), resize=resize, source_root=str(src), exif_transpose=exif_transpose)
        # only when on: a folder half-written before the option existed resumes under the same fingerprint
        turned = {"exif_transpose": True} if exif_transpose else {}
        records = []
        for split in present:
            folder = src / split
            bad = BadInputLog()
            if class_folders(folder):
                items = scan_class_folders(folder, classes, bad, limit_per_class)
            else:
                items = _flat_split_items(src, folder, classes, val_labels, bad, limit_per_class)
            if not items:
                bad.record(folder, "empty folder: no images")
            items, order = write_order(split, items, order_seed)
            rec = write_split(
                out, split, items, make_sample=encoder, shard_size=shard_size, workers=workers,
                params={"resize": resize, "classes": classes, **order, **turned}, desc=f"imagenet {split}", unit="img",
                scan_bad=bad, mismatch_hint=order_mismatch_hint(order),
            )
            records.append(rec)
        return write_meta(
            out, "image", records, classes=classes, class_names=class_names, source=f"imagenet:{src}",
            resize=resize, exif_transpose=exif_transpose,
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
