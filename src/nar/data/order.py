"""The order samples are written in, and a start-up check that a training split is not sorted by class.

Training (:class:`~nar.data.readers.ResampledShardStream`) draws whole shards, with replacement and with
probability ∝ their size, and reads each drawn shard front to back into a shuffle buffer of
``data.shuffle_buffer`` samples; a batch mixes only what that buffer holds, a few shards' worth. A split stored
class by class (ImageNet's sorted class folders, the official extraction's ImageFolder order, UCF-101's
``trainlist01.txt``) therefore gives batches of a few classes. So every writer stores its training split in a
seeded random order (:func:`write_order`); evaluation splits keep their source order (validation reads a subset
spread over the whole split). ``nar data tokens`` keeps its source's order, shard for shard.

:func:`class_sorted_warning` reads the classes of a split's first shards (their ``cls`` members, nothing
decoded) and says when neighbouring samples share a class far more often than in a shuffled split: shards
written by an earlier version, or a webdataset indexed as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nar.data.shards import SplitIndex

log = logging.getLogger(__name__)

T = TypeVar("T")

TRAINING_SPLIT = "train"  # the split the writers shuffle; every other split keeps its source order
DEFAULT_ORDER_SEED = 0
CHECKED_SHARDS = 2  # the check reads the classes of this many leading shards
MIN_PAIRS = 16  # fewer neighbouring pairs than this tell nothing
# Several samples cut from one input (clips of one video: key "000000012_001") are one draw of the order.
_SUB_SAMPLE_KEY = re.compile(r"(\d{9})_\d{3}")


def write_order(split: str, items: Sequence[T], seed: int = DEFAULT_ORDER_SEED) -> tuple[list[T], dict[str, Any]]:
    """``(items in the order they are written, what to add to the split's write params)``.

    The training split (``train``) gets a random permutation drawn with ``seed`` (the same for the same items and
    seed); its params record ``order`` and ``order_seed``, so resuming a half-written split of the other order
    is refused by the fingerprint check instead of mixing the two (:func:`order_mismatch_hint` of these params,
    given to the writer, says so). Other splits keep ``items`` as they are, with no params added (their
    fingerprints stay those of earlier versions).
    """
    if split != TRAINING_SPLIT:
        return list(items), {}
    perm = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in perm], {"order": "shuffled", "order_seed": int(seed)}


def order_mismatch_hint(order: Mapping[str, Any]) -> str | None:
    """What :func:`nar.data.shards.write_split` (``mismatch_hint``) says when a split's folder holds shards of
    other inputs or settings, for the ``order`` params :func:`write_order` gave: a shuffled train split's likely
    cause is a folder an earlier version wrote class by class. ``None`` for a split kept in its source order."""
    if order.get("order") != "shuffled":
        return None
    return ("this version writes the train split in a shuffled order: a folder an earlier version wrote class by "
            "class is one")


def same_class_neighbours(labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of neighbouring pairs in ``labels`` (int ``[N]``, ``N ≥ 2``) that share a class."""
    labels = np.asarray(labels)
    return float(np.mean(labels[1:] == labels[:-1]))


def shuffled_same_class(labels: Sequence[int] | np.ndarray | None, num_classes: int) -> float:
    """What :func:`same_class_neighbours` gives on average for a random order: ``Σ n_c (n_c − 1) / (N (N − 1))``
    over the class counts of the whole split ``labels`` (int ``[N]``, −1 unlabelled, left out), else ``1 /
    num_classes`` (classes of equal size)."""
    if labels is not None:
        labels = np.asarray(labels)
        counts = np.bincount(labels[labels >= 0]).astype(np.float64)
        n = counts.sum()
        if n >= 2:
            return float((counts * (counts - 1)).sum() / (n * (n - 1)))
    return 1.0 / max(1, num_classes)


@dataclasses.dataclass(frozen=True)
class OrderCheck:
    """Classes of a split's leading samples against a shuffled split: ``observed`` and ``shuffled`` are
    fractions of neighbouring pairs of one class, over ``samples`` samples (several of one input counted once)."""

    samples: int
    observed: float
    shuffled: float

    @property
    def looks_sorted(self) -> bool:
        """Nearer a class-sorted split (≈ 1) than a shuffled one, and by more than chance over this many pairs
        (three standard deviations of a shuffled split's fraction): random orders stay below, sorted ones above."""
        pairs = max(1, self.samples - 1)
        chance = 3.0 * (self.shuffled * (1.0 - self.shuffled) / pairs) ** 0.5
        return self.observed >= self.shuffled + max((1.0 - self.shuffled) / 2, chance)


def check_order(index: SplitIndex, num_classes: int, shards: int = CHECKED_SHARDS, *,
                one_sample_per_input: bool = True) -> OrderCheck | None:
    """:class:`OrderCheck` of the first ``shards`` shards of ``index``, or None when their classes cannot be read
    cheaply or are too few to tell. Local shards: their ``cls`` members (tar headers skipped over, nothing
    decoded); remote ones: the split's ``labels.npy``, only when ``one_sample_per_input`` (it cannot tell the
    clips of one video, which lie side by side in any order, from a class-sorted split)."""
    leading = _leading_labels(index, shards, one_sample_per_input)
    if leading is None:
        return None
    labels = np.asarray(leading, dtype=np.int64)
    labels = labels[labels >= 0]
    if len(labels) < MIN_PAIRS + 1:
        return None
    return OrderCheck(len(labels), same_class_neighbours(labels), shuffled_same_class(index.labels, num_classes))


def class_sorted_warning(root: str | Path, split: str, num_classes: int, *, shuffle_buffer: int,
                         one_sample_per_input: bool = True) -> str | None:
    """The warning to give when the split ``split`` of the dataset folder ``root`` looks sorted by class, else
    None (also when the check cannot tell; it never raises: the readers report unreadable data).
    ``one_sample_per_input``: false for video clips (see :func:`check_order`)."""
    try:
        index = SplitIndex.load(root, split)
        result = check_order(index, num_classes, one_sample_per_input=one_sample_per_input)
    except Exception as err:  # noqa: BLE001 — a start-up hint must not stop a run the readers can report on
        log.debug("%s: split %r: order not checked: %s", root, split, err)
        return None
    if result is None or not result.looks_sorted:
        return None
    size = max(index.counts[:CHECKED_SHARDS], default=0)
    return (f"data.root={root}: its {split!r} split looks sorted by class: {result.observed:.0%} of neighbouring "
            f"samples in its first {result.samples} share a class, where a shuffled split gives "
            f"{result.shuffled:.0%}. Training draws whole shards into a buffer of data.shuffle_buffer="
            f"{shuffle_buffer} samples (shards of ≈{size}), so its batches will hold few classes. Rewrite the "
            "shards with this version's `nar data` (imagenet, pairs, ucf101, import-codes and embedded write training "
            "splits shuffled; `nar data tokens` keeps its source's order, so tokenize the rewritten shards), or "
            "raise data.shuffle_buffer to many shards' worth")


def _leading_labels(index: SplitIndex, shards: int, labels_file: bool = True) -> list[int] | None:
    """Classes of the samples of the first ``shards`` shards in order (−1 without one), several consecutive
    samples of one input (``<item>_<j>`` keys) as one; None when not cheap to read (remote shards without
    ``labels_file``)."""
    leading = index.shards[:shards]
    if leading and all(isinstance(s, Path) for s in leading):
        labels: list[int] = []
        for shard in leading:
            labels += _shard_labels(Path(shard))
        return labels
    if labels_file and index.labels is not None:  # remote shards: no download at start-up
        return index.labels[: int(sum(max(0, c) for c in index.counts[:shards]))].tolist()
    return None


def _shard_labels(path: Path) -> list[int]:
    """Classes of one local shard's samples in order, read from its ``cls`` members alone (seekable tar)."""
    labels: dict[str, int] = {}
    last_item = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = Path(member.name).name.partition(".")
            sub = _SUB_SAMPLE_KEY.fullmatch(key)
            item = sub.group(1) if sub else key
            if key not in labels:
                labels[key] = -2 if item == last_item else -1  # -2: another clip of the input just counted
                last_item = item
            if ext.lower() == "cls" and labels[key] != -2:
                data = tar.extractfile(member)
                labels[key] = int(data.read().strip()) if data is not None else -1
    return [c for c in labels.values() if c != -2]


__all__ = ["DEFAULT_ORDER_SEED", "TRAINING_SPLIT", "OrderCheck", "check_order", "class_sorted_warning",
           "order_mismatch_hint", "same_class_neighbours", "shuffled_same_class", "write_order"]
