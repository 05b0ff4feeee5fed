"""UCF-101 layout → clip shards (``frames.npy`` uint8 ``[T, S, S, 3]``), decoded with PyAV.

Layout (as distributed)::

    <videos>/<Class>/v_<Class>_gXX_cYY.avi
    <lists>/classInd.txt        "1 ApplyEyeMakeup" …   (1-based; stored 0-based)
    <lists>/trainlist0N.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    <lists>/testlist0N.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

``<lists>`` (``ucfTrainTestlist``) is found inside or beside ``<videos>`` unless given. Splits are
named ``train`` and ``test`` as in the lists. ``train`` is written in a seeded random order of videos (the lists go
class by class, and training reads whole shards: :func:`nar.data.order.write_order`), each video's clips together;
``test`` keeps the list order. A clip is ``frames`` frames taken every ``stride``-th
frame, short side resized to ``size`` and centre-cropped; a video shorter than one clip is padded
by repeating its last frame (``"padded": true`` in its json). A video whose decoding fails part-way keeps the frames that decoded
(``"damaged_tail": true`` in its clips' json); the split's entry in ``meta.json`` counts and names such videos
(``damaged_tail``) beside the skipped ones.

With ``whole_videos`` (``--whole-videos``) each video is one sample holding every ``stride``-th frame, resized and
cropped as clips are, and ``meta.json`` says ``windows: per_visit``: readers cut a window of ``frames`` consecutive
stored frames from it, a fresh one at every training visit (the official NAR-videos / LARP loader's
``np.random.randint(0, len(video) - 16 + 1)``) and the centre one for evaluation
(:func:`nar.data.transforms.video_window`). Clip folders say ``windows: fixed`` (absent in older ones: fixed too);
one folder holds one or the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nar.atomic import write_text
from nar.data import transforms as T
from nar.data.checks import WINDOWS_FIXED, WINDOWS_PER_VISIT
from nar.data.order import DEFAULT_ORDER_SEED, order_mismatch_hint, write_order
from nar.data.shards import (
    MAX_LISTED_BAD,
    META_NAME,
    OVERWRITE_REMEDY,
    BadInputLog,
    SkipSample,
    SplitRecord,
    dataset_lock,
    read_meta,
    refuse_other_folder_settings,
    write_meta,
    write_split,
)
from nar.errors import ConfigError, DataError

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
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class index ({err}); --splits-dir must be the ucfTrainTestlist "
                        "folder (classInd.txt, trainlist0N.txt, testlist0N.txt)") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        found = re.fullmatch(r"\s*(\d+)\s+(.*\S)\s*", line)  # a name may hold spaces: the rest of the line
        if found is None:
            raise DataError(f"{path}:{number}: {line.strip()!r} is not an '<index> <class>' line")
        pairs.append((int(found[1]), found[2]))
    if not pairs:
        raise DataError(f"{path}: no '<index> <class>' lines")
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise DataError(f"{path}: class indices are not 1…{len(pairs)}")
    return [name for _, name in pairs]


def read_split_list(path: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(relative video path, 0-based class)`` pairs from a ``trainlist`` / ``testlist`` file.

    The class comes from the list's label (a last field of digits) when present, else from the folder name; the
    path is the rest of the line, spaces included.
    """
    index = {c.lower(): i for i, c in enumerate(classes)}
    items = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line:
            continue
        labelled = re.fullmatch(r"(.*\S)\s+(\d+)", line)
        if labelled is not None:
            rel, cls = labelled[1], int(labelled[2]) - 1
        else:
            rel = line
            cls = index.get(rel.replace("\\", "/").split("/")[0].lower(), -1)
        items.append((rel.replace("\\", "/"), cls))
    return items


def _decode(path: str | Path) -> tuple[np.ndarray, str | None]:
    """``(frames uint8 [N, H, W, 3], why decoding stopped early or None)``: a damaged tail keeps the frames that
    decoded. Raises :class:`SkipSample` if no frame decodes."""
    import av

    frames = []
    damage = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, IndexError, OSError, ValueError) as err:
        if not frames:
            raise SkipSample(path, f"cannot decode video: {err}") from None
        # a damaged tail: keep what decoded, say so (and the split's meta.json counts it)
        log.warning("%s: decoding stopped after %d frames: %s", path, len(frames), err)
        damage = str(err)
    if not frames:
        raise SkipSample(path, "cannot decode video: no frames")
    return np.stack(frames), damage


def clip_starts(num_frames: int, span: int, clips_per_video: int) -> list[int]:
    """First-frame indices: one centred clip, ``k`` evenly spaced ones, or (``k = 0``) every non-overlapping one."""
    last = max(0, num_frames - span)
    if clips_per_video == 0:
        return list(range(0, last + 1, span)) or [0]
    if clips_per_video == 1:
        return [T.window_start(num_frames, span, None)]  # the centre (at stride 1, the window a whole video's
        # evaluation reads; at a larger stride that one is chosen among the stored frames, and may start a frame off)
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
        video, damage = _decode(path)
        span = (self.frames - 1) * self.stride + 1
        samples = []
        for start in clip_starts(len(video), span, self.clips_per_video):
            idx = np.minimum(start + self.stride * np.arange(self.frames), len(video) - 1)
            clip = T.resize_video(video[idx], self.size)
            meta = {"label": self.classes[cls], "source": rel, "start": int(start), "stride": self.stride,
                    "padded": bool(start + span > len(video)), "video_frames": int(len(video)),
                    "damaged_tail": damage is not None}
            samples.append({"frames.npy": clip, "cls": cls, "json": meta})
        return samples


# frames resized at a time: a whole video of a few thousand frames would otherwise take gigabytes as floats
_RESIZE_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class EncodeWholeVideos:
    """Item ``(path, class, relative name)`` → one sample ``{"frames.npy", "cls", "json"}`` holding every
    ``stride``-th frame of the video, resized and cropped as :class:`EncodeClips` does (frame by frame, so the same
    pixels); ``frames`` (the window readers take) only decides ``padded``: fewer stored frames than one window."""

    classes: tuple[str, ...]
    frames: int = 16
    stride: int = 1
    size: int = 128

    def __call__(self, item: tuple[str, int, str]) -> list[dict[str, Any]]:
        path, cls, rel = item
        video, damage = _decode(path)
        kept = video[:: self.stride]
        frames = np.concatenate([T.resize_video(kept[i : i + _RESIZE_CHUNK], self.size)
                                 for i in range(0, len(kept), _RESIZE_CHUNK)])
        meta = {"label": self.classes[cls], "source": rel, "start": 0, "stride": self.stride,
                "padded": bool(len(kept) < self.frames), "video_frames": int(len(video)),
                "damaged_tail": damage is not None}
        return [{"frames.npy": frames, "cls": cls, "json": meta}]


def refuse_clip_count_for_whole_videos(clips_per_video: int) -> None:
    """:class:`ConfigError` for ``--clips-per-video`` other than the default with ``--whole-videos``, which stores
    each video once, whole."""
    if clips_per_video != 1:
        raise ConfigError(f"--whole-videos stores every frame of each video once, and training takes a fresh window "
                          f"of --frames from it at every visit; --clips-per-video {clips_per_video} does not apply: "
                          "leave it out, or drop --whole-videos to store fixed clips")


def _refuse_other_windows(out: Path, windows: str, splits: Sequence[str]) -> None:
    """:class:`DataError` when every split ``out`` holds is one this run (re)writes, but of the other kind (fixed
    clips vs whole videos): their shards would otherwise be refused later for a reason that does not name
    ``--whole-videos`` (other splits are compared by :func:`refuse_other_folder_settings`)."""
    path = out / META_NAME
    if not path.is_file():
        return
    meta = read_meta(out)
    recorded = meta.get("windows") or WINDOWS_FIXED
    if recorded != windows and meta.get("splits") and set(meta["splits"]) <= set(splits):
        kinds = {WINDOWS_FIXED: "fixed clips", WINDOWS_PER_VISIT: "whole videos (--whole-videos)"}
        raise DataError(f"{path}: its splits ({', '.join(sorted(meta['splits']))}) hold {kinds.get(recorded, recorded)}"
                        f" and this run writes {kinds[windows]}; write to another --out, or {OVERWRITE_REMEDY}")


def _damaged_tails(out: Path, record: SplitRecord) -> list[str]:
    """The videos (names relative to the videos folder) whose samples (clips or whole videos) in ``record``'s shards
    say their decoding stopped early. Read from the shards' json members alone, so shards written by an earlier,
    resumed run count too (a clip written before the flag existed has none: not counted)."""
    names: dict[str, None] = {}
    for shard in record.shards:
        with tarfile.open(out / shard, mode="r:") as tar:  # seekable: frames.npy members are skipped, not read
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    clip = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    if clip.get("damaged_tail"):
                        names[clip["source"]] = None  # one entry per video, however many clips it gave
    return sorted(names)  # by name: the train shards' order is a shuffled one


def _record_damaged_tails(out: Path, meta: dict[str, Any], damaged: dict[str, list[str]]) -> dict[str, Any]:
    """``meta`` with ``splits.<split>.damaged_tail = {"count", "files"}`` beside the split's ``skipped``, written
    back to ``out/meta.json`` (the caller holds the dataset lock)."""
    for split, names in damaged.items():
        meta["splits"][split]["damaged_tail"] = {"count": len(names), "files": names[:MAX_LISTED_BAD]}
        if names:
            log.warning("split %r: %d videos with a damaged tail, their clips made of the frames that decoded (listed "
                        "in %s)", split, len(names), out / META_NAME)
    write_text(out / META_NAME, json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


# the option (or file) that sets each dataset-wide field of meta.json
_CLIP_FLAGS = {"frames": "--frames", "stride": "--stride", "image_size": "--size", "classes": "classInd.txt",
               "clips_per_video": "--clips-per-video", "split_index": "--split-index", "windows": "--whole-videos"}


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
    order_seed: int = DEFAULT_ORDER_SEED,
    whole_videos: bool = False,
) -> dict[str, Any]:
    """Write UCF-101 as clip (or whole-video) shards under ``out``; returns the new ``meta.json`` dict.

    ``whole_videos``: one sample per video with every ``stride``-th frame (``windows: per_visit``; ``frames`` is
    the window readers take, ``clips_per_video`` must stay 1 and is not recorded), see the module docstring.

    ``split_index`` picks ``trainlist0N`` / ``testlist0N`` (1–3). Unreadable videos, listed files that
    are missing and labels outside ``classInd.txt`` are skipped and reported. ``limit`` keeps the first
    ``limit`` videos of each split (for quick runs). ``train`` is written in the random order of videos
    ``order_seed`` draws; a half-written ``train`` of another order is refused, not finished. Splits written
    into a folder that holds others must share their ``frames``, ``stride``, ``size``, ``clips_per_video``,
    ``split_index``, classes and ``windows`` (fixed clips or whole videos), which ``meta.json`` records once for
    all: other ones are refused up front.
    """
    videos = Path(videos)
    if not videos.is_dir():
        raise DataError(f"{videos}: not a folder")
    if frames < 1 or stride < 1 or size < 1 or clips_per_video < 0:
        raise ValueError("frames, stride and size must be ≥ 1 and clips_per_video ≥ 0")
    if whole_videos:
        refuse_clip_count_for_whole_videos(clips_per_video)
    lists = Path(splits_dir) if splits_dir else find_split_dir(videos)
    classes = read_class_index(lists / "classInd.txt")
    encoder: EncodeClips | EncodeWholeVideos
    folder: dict[str, Any] = {"frames": frames, "stride": stride, "image_size": size, "classes": classes,
                              "split_index": split_index}
    if whole_videos:
        encoder = EncodeWholeVideos(tuple(classes), frames=frames, stride=stride, size=size)
        folder["windows"] = WINDOWS_PER_VISIT
    else:
        encoder = EncodeClips(tuple(classes), frames=frames, stride=stride, size=size, clips_per_video=clips_per_video)
        folder.update(clips_per_video=clips_per_video, windows=WINDOWS_FIXED)
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        # meta.json records these once for every split: a split written with others (or from another of the three
        # official splits, whose test videos are another's training videos; or whole videos beside fixed clips) is
        # refused before anything is written. A folder written before `windows` existed holds fixed clips.
        _refuse_other_windows(Path(out), folder["windows"], splits)
        refuse_other_folder_settings(out, "video", splits, folder, defaults={"windows": WINDOWS_FIXED},
                                     flags=_CLIP_FLAGS)
        records, damaged = [], {}
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
            items, order = write_order(split, items, order_seed)  # whole videos: a video's clips stay together
            # the resume fingerprint: a clip split's as before; whole videos' names the windows (another encoder)
            params = {**dataclasses.asdict(encoder), **order}
            if whole_videos:
                params["windows"] = WINDOWS_PER_VISIT
            record = write_split(
                out, split, items, make_sample=encoder, shard_size=shard_size, workers=workers,
                params=params, desc=f"ucf101 {split}", unit="video", scan_bad=bad,
                mismatch_hint="; or ".join(filter(None, (order_mismatch_hint(order), (
                    "its shards may be fixed clips (written without --whole-videos)" if whole_videos else
                    "its shards may be whole videos (written with --whole-videos)")))),
            )
            records.append(record)
            damaged[split] = _damaged_tails(Path(out), record)
        meta = write_meta(out, "video", records, source=f"ucf101:{videos}", **folder)
        return _record_damaged_tails(Path(out), meta, damaged)
