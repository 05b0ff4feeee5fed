"""UCF-101 layout → clip shards (``frames.npy`` uint8 ``[T, S, S, 3]``), decoded with PyAV.

Layout (as distributed)::

    <videos>/<Class>/v_<Class>_gXX_cYY.avi
    <lists>/classInd.txt        "1 ApplyEyeMakeup" …   (1-based; stored 0-based)
    <lists>/trainlist0N.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    <lists>/testlist0N.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

``<lists>`` (``ucfTrainTestlist``) is found inside or beside ``<videos>`` unless given. Splits are
named ``train`` and ``test`` as in the lists. A clip is ``frames`` frames taken every ``stride``-th
frame, short side resized to ``size`` and centre-cropped; a video shorter than one clip is padded
by repeating its last frame (``"padded": true`` in its json).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nar.data import transforms as T
from nar.data.shards import (
    META_NAME,
    BadInputLog,
    SkipSample,
    dataset_lock,
    read_meta,
    write_meta,
    write_split,
)
from nar.errors import DataError

log = logging.getLogger(__name__)


def find_split_dir(videos: Path) -> Path:
    """The folder holding ``classInd.txt``: ``<videos>/ucfTrainTestlist``, a sibling, or any below."""
    for cand in (videos / "ucfTrainTestlist", videos.parent / "ucfTrainTestlist", videos, videos.parent):
        if (cand / "classInd.txt").is_file():
            return cand
    found = sorted(videos.rglob("classInd.txt"))
    if found:
        return found[0].parent
    raise DataError(f"no classInd.txt in or beside {videos}; pass --splits-dir (the ucfTrainTestlist folder)")


def read_class_index(path: Path) -> list[str]:
    """Class names in index order from ``classInd.txt`` (``"<1-based index> <name>"`` lines)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class index ({err}); --splits-dir must be the ucfTrainTestlist "
                        "folder (classInd.txt, trainlist0N.txt, testlist0N.txt)") from None
    pairs = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            pairs.append((int(parts[0]), parts[1]))
    if not pairs:
        raise DataError(f"{path}: no '<index> <class>' lines")
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise DataError(f"{path}: class indices are not 1…{len(pairs)}")
    return [name for _, name in pairs]


def read_split_list(path: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(relative video path, 0-based class)`` pairs from a ``trainlist`` / ``testlist`` file.

    The class comes from the list's label when present, else from the folder name.
    """
    index = {c.lower(): i for i, c in enumerate(classes)}
    items = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        rel = parts[0].replace("\\", "/")
        if len(parts) > 1 and parts[1].isdigit():
            cls = int(parts[1]) - 1
        else:
            cls = index.get(rel.split("/")[0].lower(), -1)
        items.append((rel, cls))
    return items


def decode_video(path: str | Path) -> np.ndarray:
    """All frames of a video as ``uint8 [N, H, W, 3]`` (PyAV). Raises :class:`SkipSample` if unreadable."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, IndexError, OSError, ValueError) as err:
        if not frames:
            raise SkipSample(path, f"cannot decode video: {err}") from None
        # a damaged tail: keep what decoded, say so
        log.warning("%s: decoding stopped after %d frames: %s", path, len(frames), err)
    if not frames:
        raise SkipSample(path, "cannot decode video: no frames")
    return np.stack(frames)


def clip_starts(num_frames: int, span: int, clips_per_video: int) -> list[int]:
    """First-frame indices: one centred clip, ``k`` evenly spaced ones, or (``k = 0``) every non-overlapping one."""
    last = max(0, num_frames - span)
    if clips_per_video == 0:
        return list(range(0, last + 1, span)) or [0]
    if clips_per_video == 1:
        return [last // 2]
    return sorted({round(i * last / (clips_per_video - 1)) for i in range(clips_per_video)})


@dataclasses.dataclass(frozen=True)
class EncodeClips:
    """Item ``(path, class, relative name)`` → list of clip samples ``{"frames.npy", "cls", "json"}``."""

    classes: tuple[str, ...]
    frames: int = 16
    stride: int = 1
    size: int = 128
    clips_per_video: int = 1

    def __call__(self, item: tuple[str, int, str]) -> list[dict[str, Any]]:
        path, cls, rel = item
        video = decode_video(path)
        span = (self.frames - 1) * self.stride + 1
        samples = []
        for start in clip_starts(len(video), span, self.clips_per_video):
            idx = np.minimum(start + self.stride * np.arange(self.frames), len(video) - 1)
            clip = T.resize_video(video[idx], self.size)
            meta = {"label": self.classes[cls], "source": rel, "start": int(start), "stride": self.stride,
                    "padded": bool(start + span > len(video)), "video_frames": int(len(video))}
            samples.append({"frames.npy": clip, "cls": cls, "json": meta})
        return samples


def _check_same_clips(out: Path, fields: dict[str, Any]) -> None:
    """Refuse, before writing anything, a split whose clips differ from those ``out/meta.json`` describes:
    ``frames``, ``stride``, ``image_size`` and ``classes`` are dataset-wide, and overwriting them would make
    every clip of the splits already there invalid."""
    if not (out / META_NAME).is_file():
        return
    meta = read_meta(out)
    flags = {"frames": "--frames", "stride": "--stride", "image_size": "--size", "classes": "classInd.txt"}
    for key, value in fields.items():
        if key not in meta or meta[key] == value:
            continue
        have, want = f"{key} {meta[key]}", str(value)
        if key == "classes":  # name the first difference, not two lists of 101 names
            diff = next((i for i, (a, b) in enumerate(zip(meta[key], value)) if a != b), None)
            have, want = ((f"class {diff} {meta[key][diff]!r}", repr(value[diff])) if diff is not None else
                          (f"{len(meta[key])} classes", f"{len(value)}"))
        raise DataError(f"{out / META_NAME}: its splits {sorted(meta.get('splits', {}))} have {have}, this run asks "
                        f"for {want} ({flags[key]}); write these splits to another --out (or pass --overwrite to "
                        "replace the dataset)")


def write_ucf101(
    videos: str | Path,
    out: str | Path,
    *,
    splits_dir: str | Path | None = None,
    split_index: int = 1,
    splits: Sequence[str] = ("train", "test"),
    frames: int = 16,
    stride: int = 1,
    size: int = 128,
    clips_per_video: int = 1,
    shard_size: int = 256,
    workers: int = 1,
    limit: int | None = None,
) -> dict[str, Any]:
    """Write UCF-101 as clip shards under ``out``; returns the new ``meta.json`` dict.

    ``split_index`` picks ``trainlist0N`` / ``testlist0N`` (1–3). Unreadable videos, listed files that
    are missing and labels outside ``classInd.txt`` are skipped and reported. ``limit`` keeps the first
    ``limit`` videos of each split (for quick runs).
    """
    videos = Path(videos)
    if not videos.is_dir():
        raise DataError(f"{videos}: not a folder")
    if frames < 1 or stride < 1 or size < 1 or clips_per_video < 0:
        raise ValueError("frames, stride and size must be ≥ 1 and clips_per_video ≥ 0")
    lists = Path(splits_dir) if splits_dir else find_split_dir(videos)
    classes = read_class_index(lists / "classInd.txt")
    encoder = EncodeClips(tuple(classes), frames=frames, stride=stride, size=size, clips_per_video=clips_per_video)
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        _check_same_clips(Path(out), {"frames": frames, "stride": stride, "image_size": size, "classes": classes})
        records = []
        for split in splits:
            list_path = lists / f"{split}list{split_index:02d}.txt"
            if not list_path.is_file():
                raise DataError(f"{list_path} not found (split {split!r}, index {split_index})")
            bad = BadInputLog()
            items = []
            for rel, cls in read_split_list(list_path, classes)[:limit]:
                path = videos / rel
                if not 0 <= cls < len(classes):
                    bad.record(path, "missing label: class not in classInd.txt")
                elif not path.is_file():
                    bad.record(path, "missing file: listed but not found")
                else:
                    items.append((str(path), cls, rel))
            if not items:
                bad.record(list_path, "empty split: no videos found")
            records.append(write_split(
                out, split, items, make_sample=encoder, shard_size=shard_size, workers=workers,
                params=dataclasses.asdict(encoder), desc=f"ucf101 {split}", unit="video", scan_bad=bad,
            ))
        return write_meta(
            out, "video", records, classes=classes, source=f"ucf101:{videos}", frames=frames, stride=stride,
            image_size=size, clips_per_video=clips_per_video, split_index=split_index,
        )
