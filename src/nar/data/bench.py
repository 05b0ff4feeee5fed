"""Data throughput: images/s of reading + decoding + cropping ImageNet-style JPEG shards, per worker, for our reader
(:class:`~nar.data.readers.ShardStream` with :class:`~nar.data.readers.ImageSample`: checks against ``meta.json``,
ADM centre crop, tensor in ``[-1, 1]``) and a plain ``webdataset`` pipeline doing the same work
(``WebDataset(urls).decode("pil")``, the same crop and tensor), side by side in one process.

The two are timed in alternating rounds (the machine's speed drifts; the order flips every round) after one warm-up
pass each (file cache); :func:`compare_readers` reports each round, the medians and the ratio ours / plain.
"""

from __future__ import annotations

import dataclasses
import io
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nar.data import transforms as T
from nar.data.readers import ImageSample, ShardStream
from nar.data.shards import SplitIndex, read_meta, write_meta, write_split
from nar.errors import ConfigError, DataError


def natural_jpeg(seed: int, size: tuple[int, int] = (500, 375), quality: int = 90) -> bytes:
    """A JPEG of about ImageNet's typical size and bytes (≈ 110 kB at 500×375): smooth colour fields plus
    fine noise, so the decoder does the work a photograph costs (pure noise or flat colour would not)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _synthetic_sample(i: int) -> dict[str, Any]:
    return {"jpg": natural_jpeg(i), "cls": i % 1000, "json": {"source": f"synthetic/{i}.JPEG", "width": 500,
                                                              "height": 375}}


def write_synthetic(out: str | Path, images: int = 512, shard_size: int = 128, workers: int = 1) -> Path:
    """ImageNet-style JPEG shards (500×375, ≈ 110 kB, ``jpg``/``cls``/``json``) under ``out`` (split ``train``)."""
    out = Path(out)
    if (out / "meta.json").is_file() and read_meta(out)["splits"]["train"]["samples"] == images:
        return out
    record = write_split(out, "train", list(range(images)), make_sample=_synthetic_sample, shard_size=shard_size,
                         workers=workers, desc="synthetic JPEGs", unit="img")
    write_meta(out, "image", [record], classes=[str(i) for i in range(1000)], source="nar.data.bench synthetic")
    return out


@dataclasses.dataclass
class Round:
    """One round: images/s per worker of each reader, and which ran first."""

    ours: float
    plain: float
    first: str


@dataclasses.dataclass
class ReaderComparison:
    """:func:`compare_readers`'s result; ``ratio`` = median ours / median plain (≥ 1: ours is as fast or faster)."""

    images: int
    crop: int
    workers: int
    rounds: list[Round]

    @property
    def ours(self) -> float:
        return statistics.median(r.ours for r in self.rounds)

    @property
    def plain(self) -> float:
        return statistics.median(r.plain for r in self.rounds)

    @property
    def ratio(self) -> float:
        return self.ours / self.plain

    @property
    def round_ratios(self) -> list[float]:
        return [r.ours / r.plain for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {"images_per_round": self.images, "crop": self.crop, "workers": self.workers,
                "rounds": [dataclasses.asdict(r) for r in self.rounds],
                "ours_images_per_s_per_worker_median": self.ours, "plain_webdataset_images_per_s_per_worker_median":
                self.plain, "ratio_ours_over_plain": self.ratio, "round_ratios": self.round_ratios}


def _ours(index: SplitIndex, crop: int) -> Iterable[Any]:
    return ShardStream(index, ImageSample(crop, spec=_spec(index)))


def _spec(index: SplitIndex) -> Any:
    from nar.data.checks import SampleSpec

    return SampleSpec.from_meta(read_meta(index.root))


class _PlainCrop:
    """The plain pipeline's per-sample work: the same ADM centre crop and tensor as ours."""

    def __init__(self, crop: int) -> None:
        self.crop = crop

    def __call__(self, img: Image.Image) -> Any:
        return T.to_tensor_pm1(T.center_crop_arr(img, self.crop))


def _plain(index: SplitIndex, crop: int) -> Iterable[Any]:
    import webdataset as wds

    urls = [str(s) for s in index.shards]
    return (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg;jpeg;png", "cls")
            .map_tuple(_PlainCrop(crop), int))


def _rate(make: Callable[[], Iterable[Any]], images: int, workers: int) -> float:
    """Images/s per worker reading ``images`` samples (repeating passes as needed)."""
    from torch.utils.data import DataLoader

    seen, start = 0, time.perf_counter()
    while seen < images:
        source = make()
        if workers > 0:
            source = DataLoader(source, batch_size=None, num_workers=workers)  # type: ignore[arg-type]
        for _ in source:
            seen += 1
            if seen >= images:
                break
    return seen / (time.perf_counter() - start) / max(1, workers)


def compare_readers(root: str | Path, *, split: str = "train", images: int = 512, crop: int = 256, rounds: int = 5,
                    workers: int = 0, progress: Callable[[str], None] | None = None) -> ReaderComparison:
    """Time our reader against a plain webdataset pipeline on the image shards of ``root`` (split ``split``):
    ``rounds`` rounds of ``images`` images each, alternating which goes first, after one warm-up pass each.
    ``workers`` > 0 reads through a DataLoader with that many workers (rates are per worker)."""
    for key, value in (("rounds", rounds), ("images", images)):
        if value < 1:  # no median to take / no rate to divide by
            raise ConfigError(f"must be >= 1, got {value}", key=key)
    index = SplitIndex.load(root, split)
    if index.total < 1:  # the readers would loop forever looking for a first sample
        raise DataError(f"{root}: split '{split}' holds no samples to time")
    readers = {"ours": lambda: _ours(index, crop), "plain": lambda: _plain(index, crop)}
    for make in readers.values():  # warm-up: file cache, imports, first-call costs
        _rate(make, min(images, index.total), workers)
    results = []
    for r in range(rounds):
        order = ["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]
        rates = {name: _rate(readers[name], images, workers) for name in order}
        results.append(Round(ours=rates["ours"], plain=rates["plain"], first=order[0]))
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: ours {rates['ours']:.1f} img/s, plain webdataset {rates['plain']:.1f} "
                     f"img/s per worker (ratio {rates['ours'] / rates['plain']:.3f})")
    return ReaderComparison(images=images, crop=crop, workers=workers, rounds=results)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    import PIL
    import torch
    import webdataset

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else None, "python": platform.python_version(),
            "torch": torch.__version__, "webdataset": webdataset.__version__, "pillow": PIL.__version__,
            "platform": platform.platform()}


__all__ = ["ReaderComparison", "Round", "compare_readers", "machine", "natural_jpeg", "write_synthetic"]
