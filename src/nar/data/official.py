"""Codes extracted by LlamaGen's / the official NAR's ``extract_codes_c2i.py`` → token shards.

Their layout, one folder per extraction (``--code-path``)::

    <code_path>/<dataset><size>_codes/<i>.npy     int [1, A, L]   A views of image i, L = h·w codes each
    <code_path>/<dataset><size>_labels/<i>.npy    int [1]         its class (ImageFolder order: sorted wnids)

``<i>`` is the image's index in the ImageFolder order (ranks write ``rank, rank + world, …``; the sampler's
padding may repeat the first few images past the end, ``--limit`` drops them). The folder name says the views:
``…ten_crop…`` holds the ten crops of a 1.1× centre crop (``…ten_crop_105``: of 1.05×), in torchvision's
``TenCrop`` order: four corners and the centre, then the same five of the mirrored image; otherwise the views are
the centre crop and its mirror image (the extraction always adds it; ``flip`` in the name tells the official
dataset to pick one per sample). The official dataset mixes in a sibling ``<code_path>_105`` folder half of the
time when ``<code_path>`` ends in ``ten_crop``; here both folders' views go into one sample, which gives the same
distribution when training picks one view at random.

The ``train`` split is written in a seeded random order (the extraction is in ImageFolder order, class by class,
and training reads whole shards: :func:`nar.data.order.write_order`); sample ``i`` still holds image ``i``'s codes
from every folder with image ``i``'s label, and its json ``index`` says which image it is. Other splits keep the
image order.

Token samples keep the official view order, except that the centre view moves to index 0 (our contract: index 0
is the plain evaluation view). ``augmentations`` names each view by where it was cut from the original image: the
top-left crop of the mirrored image is the mirrored top-right crop, ``top_right_flip``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nar.data.imagenet import read_synset_names
from nar.data.order import DEFAULT_ORDER_SEED, order_mismatch_hint, write_order
from nar.data.shards import (
    SkipSample,
    classes_kept,
    dataset_lock,
    refuse_other_folder_settings,
    write_meta,
    write_split,
)
from nar.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_CODEBOOK_SIZE = 16384  # LlamaGen's VQ-16 (vq_ds16_c2i.pt), the official NAR tokenizer
# torchvision TenCrop on the image I and on its mirror F: tl(F) is the mirror of tr(I), and so on
OFFICIAL_TEN_CROP = ["top_left", "top_right", "bottom_left", "bottom_right", "center",
                     "top_right_flip", "top_left_flip", "bottom_right_flip", "bottom_left_flip", "center_flip"]
OFFICIAL_FLIP = ["center", "center_flip"]
SUFFIX_105 = "_105"


def official_views(count: int, ten_crop: bool) -> list[str]:
    """Names of an extraction's ``count`` views in the official order (``ten_crop``: 10, else 2 or 1)."""
    if ten_crop:
        if count != 10:
            raise DataError(f"a ten-crop extraction holds 10 views per image, found {count}")
        return list(OFFICIAL_TEN_CROP)
    if count not in (1, 2):
        raise DataError(f"an extraction without ten_crop holds 1 or 2 views per image, found {count}")
    return OFFICIAL_FLIP[:count]


def centre_first(count: int, ten_crop: bool) -> list[int]:
    """Official view indices in our stored order: the centre view first, the others in their official order."""
    names = official_views(count, ten_crop)
    centre = names.index("center")
    return [centre] + [i for i in range(count) if i != centre]


@dataclasses.dataclass(frozen=True)
class CodeFolder:
    """One extraction: its codes and labels folders, the dataset name and image size from their names."""

    path: Path
    codes: Path
    labels: Path
    dataset: str
    image_size: int

    @property
    def absolute(self) -> Path:
        """``path`` made absolute without following links: ``.`` (run from inside the folder) has a name too."""
        return Path(os.path.abspath(self.path))

    @property
    def ten_crop(self) -> bool:
        return "ten_crop" in self.absolute.name

    @property
    def crop_range(self) -> float | None:
        if not self.ten_crop:
            return None
        return 1.05 if self.absolute.name.endswith("ten_crop_105") else 1.1


def find_code_folder(code_path: str | os.PathLike[str], image_size: int | None = None) -> CodeFolder:
    """The ``<dataset><size>_codes`` / ``_labels`` pair in ``code_path`` (``image_size`` picks one of several)."""
    path = Path(code_path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (give the --code-path of extract_codes_c2i.py)")
    found = []
    for codes in sorted(path.glob("*_codes")):
        match = re.fullmatch(r"(.*?)(\d+)_codes", codes.name)
        labels = path / (codes.name[: -len("_codes")] + "_labels")
        if match and codes.is_dir() and labels.is_dir():
            found.append(CodeFolder(path, codes, labels, match.group(1), int(match.group(2))))
    if image_size is not None:
        found = [f for f in found if f.image_size == image_size]
    if not found:
        raise DataError(f"{path}: no <dataset><size>_codes and _labels folders"
                        + (f" for image size {image_size}" if image_size else ""))
    if len(found) > 1:
        raise DataError(f"{path}: several extractions ({', '.join(f.codes.name for f in found)}); pick one with "
                        "--image-size")
    return found[0]


def companion_105(folder: CodeFolder) -> CodeFolder | None:
    """The ``<code_path>_105`` extraction the official dataset mixes in, when ``code_path`` ends in ``ten_crop``."""
    base = folder.absolute
    if not base.name.endswith("ten_crop"):
        return None
    sibling = base.with_name(base.name + SUFFIX_105)
    if not sibling.is_dir():
        return None
    try:
        other = find_code_folder(sibling, folder.image_size)
    except DataError:
        return None
    return other if other.dataset == folder.dataset else None


def _indices(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.npy") if p.stem.isdigit())


@dataclasses.dataclass(frozen=True)
class CodeSample:
    """Item ``i`` → token sample fields: the views of every folder (centre first, official order), its class."""

    folders: tuple[CodeFolder, ...]
    grid: tuple[int, int]
    codebook_size: int
    views: int

    def __call__(self, i: int) -> dict[str, Any]:
        parts, label = [], None
        for folder in self.folders:
            codes = self._load(folder.codes / f"{i}.npy")
            codes = codes.reshape(-1, codes.shape[-1]) if codes.ndim >= 2 else codes[None]  # [A, L]
            if codes.shape[0] != self.views:
                raise SkipSample(folder.codes / f"{i}.npy", f"{codes.shape[0]} views, the others have {self.views}")
            if codes.shape[1] != self.grid[0] * self.grid[1]:
                raise SkipSample(folder.codes / f"{i}.npy", f"{codes.shape[1]} codes per view, the grid "
                                 f"{self.grid[0]}×{self.grid[1]} needs {self.grid[0] * self.grid[1]}")
            parts.append(codes[centre_first(self.views, folder.ten_crop)])
            cls = int(self._load(folder.labels / f"{i}.npy").reshape(-1)[0])
            if label is not None and cls != label:
                raise SkipSample(folder.labels / f"{i}.npy", f"class {cls}, but {self.folders[0].labels} says {label}")
            label = cls
        tokens = np.concatenate(parts)
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            bad = int(tokens.min() if tokens.min() < 0 else tokens.max())
            raise SkipSample(self.folders[0].codes / f"{i}.npy", f"code {bad} outside [0, {self.codebook_size}) "
                             "(pass the tokenizer's --codebook-size)")
        return {"tokens.npy": tokens.reshape(len(tokens), *self.grid).astype(np.int32), "cls": label,
                "json": {"index": i, "source": str(self.folders[0].codes / f"{i}.npy")}}

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise SkipSample(path, "missing file") from None
        except (OSError, ValueError) as err:
            raise SkipSample(path, f"cannot read: {err}") from None


def _first_readable(codes: Path, indices: Sequence[int]) -> np.ndarray:
    """The first ``<i>.npy`` in ``codes`` that loads, for the views and codes per view. Unreadable ones before it
    are skipped here and reported as bad samples by the import, like every other unreadable file."""
    for i in indices:
        path = codes / f"{i}.npy"
        try:
            first = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            log.debug("%s: cannot read (%s); taking the code shape from the next file", path, err)
            continue
        if first.ndim >= 1 and first.shape[-1] > 0:
            return first
        log.debug("%s: shape %s holds no codes; taking the code shape from the next file", path, first.shape)
    raise DataError(f"{codes}: none of its {len(indices)} <i>.npy files can be read as codes")


def grid_of(length: int, grid: Sequence[int] | None = None) -> tuple[int, int]:
    """The token grid of ``length`` codes: ``grid`` if given (checked), else the square one (256 → 16×16)."""
    if grid is not None:
        h, w = (int(g) for g in grid)
        if h * w != length:
            raise DataError(f"--grid {h} {w} holds {h * w} codes, the extraction has {length} per view")
        return h, w
    side = math.isqrt(length)
    if side * side != length:
        raise DataError(f"{length} codes per view is not a square grid; pass --grid H W")
    return side, side


def import_codes(
    code_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    image_size: int | None = None,
    codebook_size: int = DEFAULT_CODEBOOK_SIZE,
    grid: Sequence[int] | None = None,
    mix_105: bool = True,
    limit: int | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    synset_map: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    tokenizer: str = "",
    order_seed: int = DEFAULT_ORDER_SEED,
) -> dict[str, Any]:
    """Write the extraction in ``code_path`` (and its ``_105`` companion, unless ``mix_105`` is off) as token
    shards under ``out`` (split ``split``); every code and label is checked, bad files are skipped and reported.
    Classes: the wnids of ``synset_map`` (``LOC_synset_mapping.txt``, sorted: ImageFolder's order) with their
    names, else ``num_classes`` or the largest label + 1. Resumable like every writer; returns ``meta.json``.
    ``train`` is written in the random order ``order_seed`` draws (``limit`` first keeps images ``0…limit-1``).
    A split imported into a folder that holds others must share their views, grid, codebook, tokenizer, image size
    and (when given) classes, which ``meta.json`` records once for all: other ones are refused up front."""
    main = find_code_folder(code_path, image_size)
    folders = [main]
    extra = companion_105(main) if mix_105 else None
    if extra is not None:
        folders.append(extra)
        log.info("mixing in %s, as the official dataset does", extra.path)
    indices = _indices(main.codes)
    if not indices:
        raise DataError(f"{main.codes}: no <i>.npy files")
    first = _first_readable(main.codes, indices)
    views, length = (first.shape[-2] if first.ndim >= 2 else 1), first.shape[-1]
    hw = grid_of(length, grid)
    names: list[str] = []
    for folder in folders:
        suffix = SUFFIX_105 if folder is not main else ""
        order = official_views(views, folder.ten_crop)
        names += [order[i] + suffix for i in centre_first(views, folder.ten_crop)]
    count = indices[-1] + 1 if limit is None else min(limit, indices[-1] + 1)
    if len(indices) < count and limit is None:
        log.warning("%s: %d of indices 0…%d present; the missing ones are reported", main.codes, len(indices), count - 1)
    sample = CodeSample(tuple(folders), hw, codebook_size, views)
    images, order = write_order(split, range(count), order_seed)  # each item is an image index: codes and label
    # what meta.json records once for every split (a sample with another view count is refused when read); the
    # classes only where given: else they are kept or grown to cover the labels. The code folder and so the
    # source differ per split by design, and are not compared
    settings: dict[str, Any] = {"grid": list(hw), "codebook_size": codebook_size, "augmentations": names,
                                "tokenizer": tokenizer, "source_kind": "image", "image_size": main.image_size,
                                "has_captions": False, "caption_features": False}
    if main.crop_range is not None:
        settings["crop_range"] = main.crop_range
    synsets = read_synset_names(Path(synset_map)) if synset_map is not None else None
    if synsets is not None:
        settings["classes"] = sorted(synsets)
    elif num_classes is not None:
        settings["classes"] = [str(i) for i in range(num_classes)]
    with dataset_lock(out):
        refuse_other_folder_settings(out, "tokens", [split], settings, flags=_FLAGS,
                                     again="pass --overwrite to delete the folder and import every split again")
        record = write_split(out, split, images, make_sample=sample, shard_size=shard_size,
                             workers=workers, params={"codes": [str(f.codes) for f in folders],
                                                      "codebook_size": codebook_size, "grid": list(hw), **order},
                             mismatch_hint=order_mismatch_hint(order), desc=f"codes {split}", unit="img")
        assert record is not None
        classes, class_names = _classes(Path(out), record.labels, synset_map, synsets, num_classes)
        fields: dict[str, Any] = {**settings, "classes": classes, "source": str(main.path),
                                  "official_codes": [str(f.path) for f in folders]}
        if class_names:
            fields["class_names"] = class_names
        return write_meta(out, "tokens", [record], **fields)


# the option (or input) that sets each field of meta.json, named beside it when it differs from the recorded one
_FLAGS = {"grid": "--grid", "codebook_size": "--codebook-size", "tokenizer": "--tokenizer",
          "augmentations": "the views of CODE_PATH, --no-105", "image_size": "CODE_PATH, --image-size",
          "crop_range": "CODE_PATH", "classes": "--synset-map, --num-classes"}


def _classes(out: Path, labels: np.ndarray, synset_map: str | os.PathLike[str] | None,
             synsets: dict[str, str] | None, num_classes: int | None) -> tuple[list[str], list[str] | None]:
    """The wnids of ``synset_map`` (read as ``synsets``: wnid -> name) with their names, else ``num_classes`` or
    the largest label + 1 — but never fewer than ``out``'s ``meta.json`` already lists when those cover the
    labels: a small split imported after ``train`` (val holding the first classes only) must not shrink the
    classes ``train`` was checked against."""
    top = int(labels.max()) + 1 if len(labels) else 0
    if synsets is not None:
        wnids = sorted(synsets)
        if len(wnids) < top:
            raise DataError(f"{synset_map}: {len(wnids)} classes, but the labels go up to {top - 1}")
        return wnids, [synsets[w] for w in wnids]
    kept = classes_kept(out, top) if num_classes is None else None
    if kept is not None:
        return kept, None  # their class_names, if any, stay in meta.json
    n = num_classes if num_classes is not None else top
    if n < top:
        raise DataError(f"--num-classes {n}, but the labels go up to {top - 1}")
    return [str(i) for i in range(n)], None


__all__ = ["DEFAULT_CODEBOOK_SIZE", "CodeFolder", "centre_first", "find_code_folder", "import_codes",
           "official_views"]
