"""``nar data index``: a ``meta.json`` for a webdataset image set that nar did not write, without rewriting it.

The set is read once, shard by shard, wherever it lives: local paths, brace patterns
(``imagenet1k-train-{0000..1023}.tar``), ``pipe:`` commands, ``http(s)://`` or ``s3://`` URLs
(:func:`~nar.data.shards.shard_location`). Samples are what timm's ``imagenet-1k-wds`` and most image sets hold:
an image (``jpg``/``jpeg``/``png``/``webp``), a class index ``cls``, optionally ``json`` and a caption ``txt``.
The index records each shard's spec and sample count, every sample's class (``<split>/labels.npy``, −1 where
there is none) and the classes; the readers then split evaluation exactly and draw training shards by size as for
our own shards. A sample without an image or with an unreadable class is counted where it stands (readers skip
it by name) and listed in the split's ``skipped``; with ``decode`` every image is also decoded once.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nar.atomic import atomic_open
from nar.data import transforms as T
from nar.data.checks import InvalidSample, SampleSpec, sample_name, skip_reason
from nar.data.shards import (
    LABELS_NAME,
    META_NAME,
    BadInputLog,
    ShardLocation,
    SplitRecord,
    classes_kept,
    dataset_lock,
    expand_specs,
    is_url,
    iter_tar,
    refuse_other_folder_settings,
    shard_location,
    worker_pool,
    write_meta,
)
from nar.errors import DataError
from nar.progress import Progress

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
# json keys that name a sample's class (timm's sets, and common ImageNet exports)
CLASS_NAME_KEYS = ("class_name", "wnid", "synset", "label_name")


@dataclasses.dataclass
class ShardSummary:
    """One shard as read: its sample count, each sample's class, class names seen in ``json``, problems."""

    samples: int = 0
    labels: list[int] = dataclasses.field(default_factory=list)
    names: dict[int, str] = dataclasses.field(default_factory=dict)
    bad: BadInputLog = dataclasses.field(default_factory=BadInputLog)
    captions: bool = False


def summarize_shard(location: ShardLocation, decode: bool = False) -> ShardSummary:
    """Stream one shard: count its samples, read each class (``cls``) and class name (``json``), check that each
    sample has an image (decoding it when ``decode``)."""
    bad = BadInputLog()
    out = ShardSummary()
    spec = SampleSpec()  # classes unknown yet: any class index ≥ −1
    for raw in iter_tar(location, bad):
        name = sample_name(raw)
        out.samples += 1
        try:
            label = spec.label(raw, name)
        except InvalidSample as err:
            bad.record(name, skip_reason(err), quiet=True)
            label = -1
        out.labels.append(label)
        out.captions = out.captions or "txt" in raw
        if label >= 0 and label not in out.names and "json" in raw:
            class_name = _class_name(raw["json"])
            if class_name:
                out.names[label] = class_name
        try:
            ext, data = T.field(raw, *IMAGE_FIELDS)
            if decode:
                T.decode_image(data, name=f"{name}.{ext}")
        except DataError as err:
            bad.record(name, skip_reason(err), quiet=True)
    out.bad = bad
    return out


def _class_name(data: bytes) -> str | None:
    try:
        info = json.loads(data)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    for key in CLASS_NAME_KEYS:
        if isinstance(info.get(key), str) and info[key]:
            return info[key]
    return None


def stored_spec(spec: str, out: Path) -> str:
    """How ``meta.json`` in ``out`` names shard ``spec``: URLs and ``pipe:`` commands as given, files relative to
    ``out`` when inside it, else absolute."""
    if is_url(spec):
        return spec
    path = Path(spec).resolve()
    try:
        return str(path.relative_to(out.resolve()))
    except ValueError:
        return str(path)


def index_shards(
    spec: str | Sequence[str],
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    kind: str = "image",
    workers: int = 1,
    decode: bool = False,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``<out>/meta.json`` (split ``split``) and ``<out>/<split>/labels.npy`` for the existing webdataset
    image shards ``spec`` (brace patterns expanded), reading each shard once (``workers`` processes). Classes:
    ``classes`` if given, else the names the samples' ``json`` gives every class index, else ``"0"…"N-1"``; a
    split indexed after another keeps the folder's classes when they cover it; ``classes`` other than those it
    records are refused before anything is read or written. Returns the ``meta.json`` dict.
    """
    if kind != "image":
        raise DataError(f"nar data index reads image shard sets (jpg/png, cls, optional json/txt), not {kind!r}")
    out = Path(out)
    specs = expand_specs(spec)
    if not specs:
        raise DataError(f"{spec}: no shards")
    stored = [stored_spec(s, out) for s in specs]
    locations = [shard_location(out, s) for s in stored]
    with dataset_lock(out):
        # before reading every shard, and before labels.npy replaces another dataset's; meta.json's one class list
        # names every split's labels: other classes given for this split are refused (derived ones are kept or grown)
        refuse_other_folder_settings(out, kind, [split], {} if classes is None else {"classes": list(classes)},
                                     flags={"classes": "--classes"},
                                     again=f"delete {out / META_NAME} and index every split again")
        summaries = _summarize_all(locations, decode, workers)
        bad = BadInputLog()
        for summary in summaries:
            bad.merge(summary.bad)
        if bad.total:
            log.warning("%s: %s; readers skip these samples by name", spec, bad.summary())
        labels = np.asarray([lab for s in summaries for lab in s.labels], dtype=np.int64)
        if not len(labels):
            raise DataError(f"{spec}: no samples in {len(specs)} shards ({bad.summary()})")
        names: dict[int, str] = {}
        for summary in summaries:
            for label, name in summary.names.items():
                names.setdefault(label, name)
        fields = {"classes": _classes(out, labels, names, classes), "source": spec if isinstance(spec, str) else specs,
                  "indexed": True, "has_captions": any(s.captions for s in summaries)}
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(split_dir / LABELS_NAME, "wb") as fh:
            np.save(fh, labels)
        record = SplitRecord(split=split, shards=stored, shard_samples=[s.samples for s in summaries], labels=labels,
                             bad=bad)
        meta = write_meta(out, kind, [record], **fields)
    log.info("%s: %d samples in %d shards indexed as split %r of %s", spec, record.samples, len(stored), split, out)
    return meta


def _summarize_all(locations: list[ShardLocation], decode: bool, workers: int) -> list[ShardSummary]:
    results: list[ShardSummary | None] = [None] * len(locations)
    with Progress(len(locations), "indexing", unit="shard") as progress:
        if workers <= 1 or len(locations) <= 1:
            for i, location in enumerate(locations):
                results[i] = summarize_shard(location, decode)
                progress.update()
        else:
            with worker_pool(workers) as pool:
                jobs = {pool.submit(summarize_shard, location, decode): i for i, location in enumerate(locations)}
                for job in futures.as_completed(jobs):
                    results[jobs[job]] = job.result()
                    progress.update()
    return [r for r in results if r is not None]


def _classes(out: Path, labels: np.ndarray, names: dict[int, str], given: Sequence[str] | None) -> list[str]:
    top = int(labels.max()) + 1 if len(labels) else 0
    if given is not None:
        if len(given) < top:
            raise DataError(f"{len(given)} classes given, but the samples use class {top - 1}")
        return list(given)
    derived = [names[i] for i in range(top)] if names and all(i in names for i in range(top)) else \
        [str(i) for i in range(top)]
    return classes_kept(out, top) or derived


__all__ = ["ShardSummary", "index_shards", "stored_spec", "summarize_shard"]
