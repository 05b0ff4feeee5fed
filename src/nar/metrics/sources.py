"""Where images to score come from, and cached real statistics.

A *source* is any of: a ``.npz`` with ``arr_0`` ``uint8 [N, H, W, 3]`` (the official/ADM sampler's
output; ``[N, T, H, W, 3]`` for videos), a dataset folder with ``meta.json`` (its ``split``), a folder
of ``*.tar`` shards, one ``.tar`` shard, or a folder of image files (searched recursively).
Each record carries the sample's GenEval spec when one is known (shard ``json`` → ``scene``; the
``txt`` caption or a ``prompts`` array in the ``.npz``; a ``.txt`` next to a PNG), parsed from the
shapes grammar.

A limited read (``limit`` below the source's size) of shards or an image folder takes a seeded uniform random
subset of all the samples (without replacement, read in storage order): our writers store splits class by class
(ImageNet class folders, the UCF-101 trainlist), so the first ``limit`` would hold the first classes only.
NAR-videos draws its real clips the same way (``random.Random(42).sample(range(len(dataset)), n)``). An
``.npz`` batch gives its first ``limit`` samples: ADM's reference batches are random samples already.
:func:`real_class_ids` gives the classes of the very records :func:`iter_records` reads (one draw, ``_select``),
as NAR-videos conditions each generated clip on its paired real clip's class. A dataset folder of whole videos
(``windows: per_visit``) gives each video's centre window of ``frames`` frames, the view its evaluation reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nar.errors import ConfigError, DataError
from nar.metrics.frechet import GaussianStats

if TYPE_CHECKING:
    from nar.data.shards import SplitIndex

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass
class Record:
    """One sample: ``pixels`` ``uint8 [H, W, 3]`` (image) or ``[T, H, W, 3]`` (video); its spec when known."""

    pixels: np.ndarray
    spec: dict[str, Any] | None = None


@dataclasses.dataclass
class _LazyRecord:
    """A record whose pixels are decoded only when this process keeps it; ``cls``: its class id when the source
    stores one (a shard's ``cls`` member), read without decoding anything."""

    load: Any
    spec: dict[str, Any] | None
    cls: int | None = None

    def resolve(self, image_size: int | None) -> Record:
        pixels = self.load()
        if image_size is not None:
            pixels = _fit(pixels, image_size)
        return Record(pixels, self.spec)


def _fit(pixels: np.ndarray, size: int) -> np.ndarray:
    """Images: the ADM centre crop to ``size``; videos ``[T, H, W, 3]``: frames resized to ``size``."""
    from nar.data import transforms as T

    if pixels.ndim == 4:
        return T.resize_video(pixels, size)
    if pixels.shape[:2] == (size, size):
        return pixels
    from PIL import Image

    return T.center_crop_arr(Image.fromarray(pixels), size)


def _spec_from(meta: dict[str, Any] | None, text: str | None) -> dict[str, Any] | None:
    from nar.shapes import parse_prompt

    if meta:
        if "scene" in meta and isinstance(meta["scene"], dict):
            return meta["scene"].get("spec")
        if "spec" in meta:
            return meta["spec"]
    if text:
        try:
            return parse_prompt(text)
        except ConfigError:
            return None
    return None


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` decoded as the data pipeline does (alpha on white, 16-bit greyscale scaled, not
    clipped), so real images are scored as they were trained on; a corrupt image is a DataError naming ``name``."""
    from nar.data.transforms import decode_image

    return np.asarray(decode_image(data, name=name), dtype=np.uint8)


def _decode_image_file(path: Path) -> np.ndarray:
    return _decode_image(path.read_bytes(), str(path))


def _decode_frames(data: bytes, window: int | None = None) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` of a ``frames.npy``; ``window``: a whole video's (``windows: per_visit``) centre
    window of that many frames, as evaluation reads it (:func:`nar.data.transforms.video_window`)."""
    frames = np.load(io.BytesIO(data), allow_pickle=False)
    if window is None:
        return frames
    from nar.data.transforms import video_window

    return video_window(frames, window, None)


def _npz_prompts(source: Path, n: int) -> np.ndarray | None:
    """The ``prompts`` array of a sample ``.npz`` (one caption per sample), or None when it has none."""
    with np.load(source) as data:
        if "prompts" not in data:
            return None
        prompts = data["prompts"]
    if prompts.shape[:1] != (n,):
        raise DataError(f"{source}: 'prompts' holds {prompts.shape[0] if prompts.ndim else 0} captions for {n} samples")
    return prompts


def _arr0_shape(fh: Any, source: Path) -> tuple[int, ...]:
    """The shape of the ``arr_0.npy`` member open as ``fh``, from its ``.npy`` header (nothing else is read); a
    DataError naming ``source`` unless it is ``uint8 [N, H, W, 3]`` or ``[N, T, H, W, 3]`` in C order."""
    try:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fh)
    except ValueError as err:
        raise DataError(f"{source}: arr_0 is not a .npy array ({err})") from err
    if dtype != np.uint8 or len(shape) not in (4, 5) or shape[-1] != 3 or fortran:
        raise DataError(f"{source}: arr_0 must be uint8 [N, H, W, 3] or [N, T, H, W, 3] in C order, got "
                        f"{dtype} {shape}{' (Fortran order)' if fortran else ''}")
    return tuple(shape)


def real_crop_size(height: int, width: int, real: str = "the real images") -> int:
    """The side ``real`` are centre-cropped to (the ADM crop makes squares) for samples of ``height`` x ``width``:
    their size, or for non-square samples their short side, said in a warning. ``nar evaluate`` and ``nar
    eval-samples`` crop alike."""
    if height != width:
        log.warning("the samples are %dx%d (HxW): %s are centre-cropped to %d-px squares, their short side", height,
                    width, real, min(height, width))
    return min(height, width)

def npz_sample_shape(source: str | Path) -> tuple[int, ...] | None:
    """The shape of the ``arr_0`` of an ``.npz``, ``(N, H, W, 3)`` or ``(N, T, H, W, 3)``, read from the array's
    ``.npy`` header inside the archive without loading it; None when there is no ``arr_0``. A damaged archive or an
    ``arr_0`` that is not ``uint8 [N, H, W, 3]`` is a DataError naming ``source``."""
    source = Path(source)
    try:
        with zipfile.ZipFile(source) as zf:
            if "arr_0.npy" not in zf.namelist():
                return None
            with zf.open("arr_0.npy") as fh:
                return _arr0_shape(fh, source)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{source}: not a readable .npz ({err})") from err


def npz_sample_count(source: str | Path) -> int | None:
    """How many samples the ``arr_0`` of an ``.npz`` holds (an ADM reference batch: 10,000), as
    :func:`npz_sample_shape` reads it (nothing loaded); None when there is no ``arr_0``."""
    shape = npz_sample_shape(source)
    return None if shape is None else int(shape[0])


@contextlib.contextmanager
def _npz_samples(source: Path) -> Iterator[tuple[int, Iterator[np.ndarray]]]:
    """``(N, samples)``: the ``arr_0`` ``uint8 [N, H, W, 3]`` (or ``[N, T, H, W, 3]``) of an ``.npz``, read one
    sample at a time from the archive, so a 50k-sample batch (10 GB at 256², 39 GB at 512²) never sits in
    memory whole. Works for stored (``np.savez``) and compressed (``np.savez_compressed``) archives."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{source}: not a readable .npz ({err})") from err
    with zf:
        names = zf.namelist()
        if "arr_0.npy" not in names:
            keys = sorted(n.removesuffix(".npy") for n in names)
            raise DataError(f"{source}: no 'arr_0' array (keys {keys}); a statistics file (mu/sigma) can only be "
                            "a --ref")
        with zf.open("arr_0.npy") as fh:
            shape = _arr0_shape(fh, source)
            size = int(np.prod(shape[1:]))

            def samples() -> Iterator[np.ndarray]:
                for i in range(shape[0]):
                    raw = fh.read(size)
                    if len(raw) != size:
                        raise DataError(f"{source}: arr_0 ends in sample {i} of {shape[0]} (the file is truncated)")
                    yield np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(shape[1:])

            try:
                yield shape[0], samples()
            except zipfile.BadZipFile as err:
                raise DataError(f"{source}: arr_0 is damaged ({err})") from err


@dataclasses.dataclass(frozen=True)
class _DatasetSplit:
    """A dataset folder's ``meta.json`` and the :class:`~nar.data.shards.SplitIndex` of the split read: one load
    that the shard list, the counts and the labels of a read all come from."""

    meta: dict[str, Any]
    index: SplitIndex


def _dataset_split(source: Path, split: str | None, *, with_labels: bool = True) -> _DatasetSplit | None:
    """``split`` (default val, resolved for evaluation) of a dataset folder, from one read of its ``meta.json``
    (its ``labels.npy`` too where ``with_labels``: not for listing the shards); None for any other source."""
    if not (source / "meta.json").is_file():
        return None
    from nar.data.shards import SplitIndex, read_meta, resolve_split

    meta = read_meta(source)
    split = resolve_split(meta, split or "val", root=source)
    return _DatasetSplit(meta, SplitIndex.load(source, split, meta, with_labels=with_labels))


def shard_paths(source: str | Path, split: str | None = None) -> list[Path | str]:
    """The ``.tar`` shards of a dataset folder (``split`` from ``meta.json``, listed as its
    :class:`~nar.data.shards.SplitIndex` does: paths, or URLs as ``str``), a shard folder or one shard."""
    source = Path(source)
    if source.is_file() and source.suffix == ".tar":
        return [source]
    dataset = _dataset_split(source, split, with_labels=False)
    if dataset is not None:
        return list(dataset.index.shards)
    if source.is_dir():
        return sorted(source.glob("*.tar"))
    return []


def _shard_counts(source: Path, dataset: _DatasetSplit | None, shards: list[Path]) -> list[int]:
    """Samples per shard of ``shards``: from the dataset's index where its ``meta.json`` records them, else counted
    by reading each shard once (a bare folder of shards; members only, nothing decoded)."""
    from nar.data.shards import iter_tar

    recorded = list(dataset.index.counts) if dataset is not None else []  # -1 each when not recorded
    if len(recorded) == len(shards) and min(recorded, default=0) >= 0:
        return recorded
    log.info("%s: counting the samples of %d shards to draw a subset from all of them", source, len(shards))
    return [sum(1 for _ in iter_tar(shard)) for shard in shards]


def _subset(total: int, limit: int | None, seed: int) -> list[int] | None:
    """Sorted indices of ``limit`` of ``total`` samples drawn uniformly without replacement with ``seed`` (the
    draw NAR-videos makes, ``random.Random(seed).sample``); None = all of them."""
    if limit is None or limit >= total:
        return None
    return sorted(random.Random(seed).sample(range(total), limit))


@dataclasses.dataclass(frozen=True)
class _Selection:
    """Which samples of a source a read takes, in storage order: the one draw both :func:`iter_records` and
    :func:`real_class_ids` read, so the classes are those of the records scored.

    ``kind``: ``npz`` (its first ``limit`` samples), ``shards`` or ``images``. ``paths``: the ``.npz``, the shards
    or the image files (already cut to the subset). ``counts``: samples per shard when a subset of shards is drawn.
    ``chosen``: the subset's sorted global sample indices (shards); None = every sample, at most ``limit``.
    ``dataset``: a dataset folder's split, which the shards, counts and labels come from."""

    source: Path
    split: str | None
    kind: str
    paths: list[Path]
    counts: list[int] | None = None
    chosen: list[int] | None = None
    dataset: _DatasetSplit | None = None

    @functools.cached_property
    def _cuts(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.cumsum([0, *self.counts])
        return starts, np.searchsorted(np.asarray(self.chosen), starts)  # chosen[cuts[s]:cuts[s + 1]] in shard s

    def shard_share(self, s: int) -> set[int] | None:
        """Positions in shard ``s`` of the subset (empty: none of it there); None = all of the shard."""
        if self.chosen is None:
            return None
        starts, cuts = self._cuts
        return {i - int(starts[s]) for i in self.chosen[cuts[s]:cuts[s + 1]]}


def _select(source: Path, split: str | None, limit: int | None, seed: int,
            dataset: _DatasetSplit | None = None) -> _Selection:
    """The samples of ``source`` a read of at most ``limit`` takes (see the module docstring); ``dataset``: its
    :func:`_dataset_split` when the caller has loaded it (else loaded here)."""
    if source.is_file() and source.suffix == ".npz":
        return _Selection(source, split, "npz", [source])
    dataset = dataset or _dataset_split(source, split, with_labels=False)  # real_class_ids passes one with labels
    shards = list(dataset.index.shards) if dataset is not None else shard_paths(source, split)
    if shards:
        if limit is None:
            return _Selection(source, split, "shards", shards, dataset=dataset)
        counts = _shard_counts(source, dataset, shards)
        return _Selection(source, split, "shards", shards, counts, _subset(sum(counts), limit, seed), dataset)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no .npz, shards or images ({', '.join(IMAGE_SUFFIXES)}) found")
        chosen = _subset(len(files), limit, seed)
        return _Selection(source, split, "images", files if chosen is None else [files[i] for i in chosen])
    raise DataError(f"{source}: not an .npz, a .tar shard, a dataset/shard folder or an image folder")


def iter_records(source: str | Path, split: str | None = None, limit: int | None = None, *,
                 image_size: int | None = None, rank: int = 0, world_size: int = 1, seed: int = 0) -> Iterator[Record]:
    """Samples of ``source`` in a fixed order (see the module docstring); at most ``limit``.

    A ``limit`` below the size of shards or an image folder reads a uniform random subset of all their samples
    drawn with ``seed`` (the same on every rank and every run), in storage order; an ``.npz`` its first ``limit``.
    ``image_size``: images get the ADM centre crop to that size (the generator's resolution), video frames
    a resize; ``None`` keeps the stored pixels. ``rank``/``world_size``: this process's share, sample ``i`` of
    that order going to rank ``i % world_size`` (every rank reads the order, only its own samples are decoded),
    so the ranks together see each chosen sample exactly once.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"samples not found: {source}")
    for i, record in enumerate(_iter_raw_records(_select(source, split, limit, seed), limit)):
        if i % world_size == rank:
            yield record.resolve(image_size)


def _cls_of(raw: dict[str, Any]) -> int | None:
    """A shard sample's class id (its ``cls`` member, as the data readers parse it); None without a valid one."""
    if "cls" not in raw:
        return None
    try:
        cls = int(bytes(raw["cls"]).decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        return None
    return cls if cls >= 0 else None


def _iter_raw_records(sel: _Selection, limit: int | None) -> Iterator[_LazyRecord]:
    count = 0

    def done() -> bool:
        return limit is not None and count >= limit

    source = sel.source
    if sel.kind == "npz":
        with _npz_samples(source) as (n, samples):
            prompts = _npz_prompts(source, n)
            for i in range(n):
                if done():
                    return
                pixels = next(samples)
                yield _LazyRecord(functools.partial(np.asarray, pixels),
                                  _spec_from(None, str(prompts[i]) if prompts is not None else None))
                count += 1
        return

    if sel.kind == "shards":
        from nar.data.checks import per_visit_window
        from nar.data.index import IMAGE_FIELDS  # the fields the data readers take an image from
        from nar.data.shards import iter_tar
        from nar.data.transforms import field

        # whole videos (nar data ucf101 --whole-videos): each scored as its centre window, as evaluation reads it
        window = (per_visit_window(sel.dataset.meta, str(source / "meta.json"))
                  if sel.dataset is not None and sel.dataset.meta.get("kind") == "video" else None)

        for s, shard in enumerate(sel.paths):
            wanted = sel.shard_share(s)  # this shard's share of the subset, by position in the shard
            if wanted is not None and not wanted:
                continue  # nothing chosen here: not even read
            for j, raw in enumerate(iter_tar(shard)):
                if done():
                    return
                if wanted is not None:
                    if not wanted:
                        break  # the rest of this shard holds none of the subset
                    if j not in wanted:
                        continue
                    wanted.discard(j)
                meta = json.loads(raw["json"]) if "json" in raw else None
                text = raw["txt"].decode("utf-8") if "txt" in raw else None
                if "frames.npy" in raw:
                    load = functools.partial(_decode_frames, raw["frames.npy"], window)
                elif any(ext in raw for ext in IMAGE_FIELDS):
                    ext, data = field(raw, *IMAGE_FIELDS)
                    load = functools.partial(_decode_image, data, f"{shard}:{raw['__key__']}.{ext}")
                else:
                    continue  # token shards etc. carry no pixels
                yield _LazyRecord(load, _spec_from(meta, text), _cls_of(raw))
                count += 1
        return

    for path in sel.paths:  # image files
        if done():
            return
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else None
        yield _LazyRecord(functools.partial(_decode_image_file, path), _spec_from(None, text))
        count += 1


_CLASS_CACHE: dict[str, np.ndarray | None] = {}


def real_class_ids(source: str | Path, split: str | None = None, limit: int | None = None, *,
                   seed: int = 0) -> np.ndarray | None:
    """Class ids ``int64 [n]`` of the records :func:`iter_records` ``(source, split, limit, seed=seed)`` yields, in
    that order (the same :func:`_select` draw); None when the source holds no class for each of them.

    Read without decoding pixels: a dataset folder's ``<split>/labels.npy`` indexed by the subset (when it describes
    the very samples read: a pixel dataset nar wrote, or one ``nar data index`` made without skipped samples,
    whose shards keep them); else the ``cls`` members of the chosen shard samples; an ``.npz`` its ``arr_1`` (the
    labels of ADM's sample format), first ``limit``; an image folder none. Memoised per process by the files'
    sizes and times, so a start-time check and the evaluation read them once."""
    from nar.data.shards import LABELS_NAME

    source = Path(source)
    if not source.exists():
        raise DataError(f"samples not found: {source}")
    dataset = _dataset_split(source, split)  # one load for the memo key and the read
    key = _source_fingerprint(source, split, limit, "classes", seed,
                              list(dataset.index.shards) if dataset is not None else None)
    if dataset is not None and (labels := source / dataset.index.split / LABELS_NAME).is_file():
        key += f":{labels.stat().st_size}:{labels.stat().st_mtime_ns}"
    if key not in _CLASS_CACHE:
        if len(_CLASS_CACHE) >= 8:
            _CLASS_CACHE.clear()
        _CLASS_CACHE[key] = _read_class_ids(_select(source, split, limit, seed, dataset), limit)
    ids = _CLASS_CACHE[key]
    return None if ids is None else ids.copy()


def _read_class_ids(sel: _Selection, limit: int | None) -> np.ndarray | None:
    if sel.kind == "images":
        return None
    if sel.kind == "npz":
        try:
            with np.load(sel.source) as data:
                labels = data["arr_1"] if "arr_1" in data.files else None
        except ValueError:  # an object array (allow_pickle=False): no class ids
            return None
        n = npz_sample_count(sel.source)
        if labels is None or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != n:
            return None
        labels = labels[:limit].astype(np.int64)
        return labels if labels.min(initial=0) >= 0 else None
    labels = _split_labels(sel)
    if labels is not None:
        picked = labels[sel.chosen] if sel.chosen is not None else labels[:limit]
        return picked.astype(np.int64) if picked.min(initial=0) >= 0 else None  # -1: a sample without a class
    ids = [record.cls for record in _iter_raw_records(sel, limit)]  # members only: nothing is decoded
    return None if any(c is None for c in ids) else np.asarray(ids, dtype=np.int64)


def _split_labels(sel: _Selection) -> np.ndarray | None:
    """The split's ``labels.npy`` when its sample ``i`` is exactly global sample ``i`` of the read, else None."""
    from nar.data.shards import holds_pixels

    if sel.dataset is None:
        return None
    meta, index = sel.dataset.meta, sel.dataset.index
    skipped = int((meta["splits"][index.split].get("skipped") or {}).get("count", 0))
    # `nar data index` keeps a sample without an image in its shard (the readers skip it): positions would shift
    if not holds_pixels(meta) or (meta.get("indexed") and skipped):
        return None
    # index.labels: None when missing, unreadable or not one label per sample
    if index.labels is None or index.labels.ndim != 1:
        return None
    if sel.counts is not None and len(index.labels) != sum(sel.counts):
        return None
    return index.labels


def iter_batches(records: Iterator[Record], batch_size: int) -> Iterator[tuple[torch.Tensor, list[dict | None]]]:
    """Batches ``uint8 [B, 3, H, W]`` (or ``[B, 3, T, H, W]``) with their specs; a size change starts a new batch."""
    pixels: list[np.ndarray] = []
    specs: list[dict | None] = []

    def flush():
        arr = torch.from_numpy(np.stack(pixels))
        arr = arr.permute(0, 3, 1, 2) if arr.ndim == 4 else arr.permute(0, 4, 1, 2, 3)
        return arr.contiguous(), list(specs)

    for rec in records:
        if pixels and (rec.pixels.shape != pixels[0].shape or len(pixels) == batch_size):
            yield flush()
            pixels.clear()
            specs.clear()
        pixels.append(rec.pixels)
        specs.append(rec.spec)
    if pixels:
        yield flush()


def _source_fingerprint(source: Path, split: str | None, limit: int | None, extractor_name: str,
                        seed: int = 0, files: list[Path | str] | None = None) -> str:
    """Cache key of a read; ``files``: the source's shards when the caller has listed them already."""
    if files is None:
        files = shard_paths(source, split) if not source.suffix == ".npz" else [source]
    files = [Path(p) for p in files]
    if not files and source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    listing = [(str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    key = {"source": str(source.resolve()), "split": split, "limit": limit, "extractor": extractor_name,
           "files": listing}
    if limit is not None and source.suffix != ".npz":
        key["subset_seed"] = seed  # which random subset (an unlimited read or an .npz's first samples: none)
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def is_statistics_file(source: str | Path) -> bool:
    """Whether ``source`` is an ``.npz`` of ``mu``/``sigma`` (ADM evaluator format): it holds feature statistics,
    not images, so it serves FID only. Read from the archive's listing, nothing loaded."""
    source = Path(source)
    if source.suffix != ".npz" or not source.is_file():
        return False
    try:
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # reading it as samples names the problem
    return {"mu.npy", "sigma.npy"} <= names


def reference_stats(source: str | Path, extractor: torch.nn.Module, split: str | None = "train",
                    batch_size: int = 50, device: str | torch.device = "cpu", limit: int | None = None,
                    cache: str | Path | None = None, seed: int = 0, image_size: int | None = None) -> GaussianStats:
    """Real feature statistics of ``source`` (a ``limit``: the random subset drawn with ``seed``, see
    :func:`iter_records`) at ``image_size`` (the ADM centre crop; None: as stored), computed once and cached (key:
    files + sizes + mtimes + split + limit + seed + size + extractor name) under ``<cache>/stats/``. An ``.npz``
    with ``mu``/``sigma`` is read as is."""
    from nar.metrics.fidelity import ImageFidelity
    from nar.metrics.inception import cache_dir

    source = Path(source)
    if is_statistics_file(source):
        return GaussianStats.load_npz(source)
    name = getattr(extractor, "name", type(extractor).__name__)
    # as real_features keys them; a read as stored keeps the key it always had
    key = _source_fingerprint(source, split, limit, name if image_size is None else f"{name}@{image_size}", seed)
    path = cache_dir(cache) / "stats" / f"{source.name}-{split}-{key}.npz"
    if path.is_file():
        log.info("real statistics from cache %s", path)
        return GaussianStats.load_npz(path)
    metric = ImageFidelity(extractor=extractor).to(device)
    records = iter_records(source, split, limit, image_size=image_size, seed=seed)
    for i, (images, _) in enumerate(iter_batches(records, batch_size)):
        metric.update(images.to(device), real=True)
        if (i + 1) % 20 == 0:
            log.info("real statistics: %d images", int(metric.real_count))
    if int(metric.real_count) < 2:  # a covariance needs two; token shards etc. carry no pixels at all
        within = f" within limit {limit}" if limit is not None else ""
        raise DataError(f"{source}: {int(metric.real_count)} images/videos{within}, fewer than the 2 real "
                        "statistics need (token shards hold none)")
    stats = metric.real_stats()
    stats.save_npz(path)
    log.info("real statistics of %d images cached at %s", stats.count, path)
    return stats


def real_features(source: str | Path, extractor: torch.nn.Module, split: str | None, limit: int | None,
                  image_size: int | None = None, batch_size: int = 50, device: str | torch.device = "cpu",
                  cache: str | Path | None = None, seed: int = 0) -> torch.Tensor:
    """Extractor features ``[n, D]`` (float32, CPU) of ``limit`` samples of ``source`` (the random subset drawn
    with ``seed``, see :func:`iter_records`) at ``image_size``, computed once and cached under
    ``<cache>/features/`` (key: files + sizes + mtimes + split + limit + seed + size + extractor), so runs scored
    against the same real set (a seeded ablation grid) extract them once."""
    from nar.atomic import atomic_path
    from nar.metrics.fidelity import to_uint8
    from nar.metrics.inception import cache_dir

    source = Path(source)
    name = getattr(extractor, "name", type(extractor).__name__)
    key = _source_fingerprint(source, split, limit, f"{name}@{image_size}", seed)
    path = cache_dir(cache) / "features" / f"{source.name}-{split}-{key}.npy"
    if path.is_file():
        log.info("real features from cache %s", path)
        return torch.from_numpy(np.load(path))
    param = next(extractor.parameters(), None)
    if param is not None and param.device != torch.device(device):
        extractor.to(device)
    extractor.eval()
    chunks = []
    with torch.no_grad():
        for images, _ in iter_batches(iter_records(source, split, limit, image_size=image_size, seed=seed), batch_size):
            chunks.append(extractor(to_uint8(images.to(device)))["features"].float().cpu())
    features = torch.cat(chunks) if chunks else torch.zeros(0, int(getattr(extractor, "num_features", 0)))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, features.numpy())
    log.info("real features of %d samples cached at %s", features.shape[0], path)
    return features
