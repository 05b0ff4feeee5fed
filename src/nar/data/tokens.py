"""Token shards: run a tokenizer once over image or video shards so generator training reads tokens.

Augmentations follow the official extraction (LlamaGen ``extract_codes_c2i.py``): with ``ten_crop``
the image is centre-cropped to ``crop_range × size`` (1.1×) and cut into ten ``size`` crops (five
crops and their mirror images); otherwise it is centre-cropped to ``size`` and, with ``flip``, also
mirrored (``flip`` is opt-in: a mirrored digit or caption is another picture; the official ImageNet
recipe is ``ten_crop``, whose ten views include the mirrored five). ``tokens.npy`` holds int32 ``[A, *grid]`` with augmentation 0 the plain centre view
(names in ``meta["augmentations"]``). Token shard ``i`` is made from source shard ``i``, so a rerun
skips the shards already done; the tokenizer file's content (its sha256) and the text encoder's files are
settings a rerun must share, as their paths are: a tokenizer retrained into the same file is refused, not
resumed. A folder of whole videos (``nar data ucf101 --whole-videos``, ``windows: per_visit``) is refused:
its windows are drawn afresh at every training visit, so it trains on pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nar.data import transforms as T
from nar.data.checks import InvalidSample, SampleSpec, per_visit_window
from nar.data.shards import (
    BadInputLog,
    ShardUnavailable,
    SkipSample,
    SplitRecord,
    _progress_files,
    collect_split,
    dataset_lock,
    expand_specs,
    fingerprint,
    group_dataset_lock,
    iter_tar,
    lock_held_elsewhere,
    read_meta,
    refuse_other_folder_settings,
    shard_location,
    write_meta,
    write_split,
)
from nar.errors import DataError

log = logging.getLogger(__name__)

# captions -> (features float [B, L, D], mask bool [B, L]), right-aligned (padding first)
TextEncoder = Callable[[list[str]], "tuple[torch.Tensor, torch.Tensor]"]


def augment_views(x: torch.Tensor, size: int, *, flip: bool, ten_crop: bool) -> torch.Tensor:
    """Views of one pixel tensor ``[3, (T,) H, W]`` (already ``crop_size`` if ten-crop, else ``size``) → ``[A, 3, (T,) size, size]``."""
    if ten_crop:
        return T.ten_crop(x, size)
    if flip:
        return torch.stack([x, x.flip(-1)])
    return x[None]


@dataclasses.dataclass
class EncodeTokenShard:
    """Producer: one source shard path → token samples, encoded in batches on ``device``."""

    tokenizer: nn.Module
    kind: str  # "image" | "video" | "pairs"
    size: int
    flip: bool = False
    ten_crop: bool = False
    crop_range: float = 1.1
    batch_size: int = 64
    device: str = "cpu"
    text_encoder: TextEncoder | None = None
    caption_shape: tuple[int, int] | None = None  # (slots, width) every sample's features must have
    grid: tuple[int, ...] | None = None  # filled by the first batch

    @property
    def num_augmentations(self) -> int:
        return 10 if self.ten_crop else 2 if self.flip else 1

    def _pixels(self, raw: dict[str, Any]) -> torch.Tensor:
        load_size = int(self.size * self.crop_range) if self.ten_crop else self.size
        if self.kind == "video":
            _, data = T.field(raw, "frames.npy")
            frames = T.resize_video(np.load(io.BytesIO(data), allow_pickle=False), load_size)
            x = T.to_tensor_pm1(frames)  # [3, T, S, S]
        else:
            ext, data = T.field(raw, "png", "jpg", "jpeg", "webp")
            img = T.decode_image(data, name=f"{raw['__shard__']}:{raw['__key__']}.{ext}")
            x = T.to_tensor_pm1(T.center_crop_arr(img, load_size))  # [3, S, S]
        return augment_views(x, self.size, flip=self.flip, ten_crop=self.ten_crop)

    @torch.inference_mode()
    def _encode(self, views: torch.Tensor) -> np.ndarray:
        codes = self.tokenizer.encode(views.to(self.device, non_blocking=True))
        return codes.to("cpu", torch.int32).numpy()

    def __call__(self, shard_paths: Sequence[str], first_index: int = 0) -> Iterator[Any]:
        """Token samples of each source shard, keyed by their source keys (:func:`token_key`). A sample that cannot
        be used (an undecodable image, a caption that is not UTF-8, a bad class) is skipped and named in
        ``meta.json``. A source shard that cannot be read at all raises :class:`ShardUnavailable` (its token shard
        is left for a rerun); one damaged part-way keeps the samples before the damage and skips the rest, named in
        ``meta.json``."""
        for shard in shard_paths:
            batch: list[tuple[dict[str, Any], torch.Tensor]] = []
            damage, read = BadInputLog(), 0
            spec = SampleSpec()  # any class ≥ −1: the source's meta.json already vetted its classes
            keys: set[str] = set()
            for raw in iter_tar(shard, damage):
                read += 1
                name = f"{shard}:{raw['__key__']}"
                try:
                    raw["__label__"] = spec.label(raw, name)
                    raw["__caption__"] = _caption(raw, name)
                    batch.append((raw, self._pixels(raw)))
                except InvalidSample as err:
                    yield SkipSample(name, err.reason)
                    continue
                except Exception as err:  # noqa: BLE001 — skip the sample, keep going
                    yield SkipSample(name, f"cannot decode sample: {err}")
                    continue
                raw["__token_key__"] = token_key(raw["__key__"], keys)
                if len(batch) == self.batch_size:
                    yield from self._flush(batch)
                    batch = []
            if batch:
                yield from self._flush(batch)
            if damage.total:
                reason = damage.files[0][1] if damage.files else "unreadable shard"
                if not read:
                    raise ShardUnavailable(f"{shard}: {reason}")
                yield SkipSample(str(shard), f"{reason} (the samples after the first {read} are lost)")

    def _flush(self, batch: list[tuple[dict[str, Any], torch.Tensor]]) -> Iterator[Any]:
        views = torch.cat([v for _, v in batch])  # [B·A, 3, (T,) S, S]
        codes = self._encode(views)
        codes = codes.reshape(len(batch), self.num_augmentations, *codes.shape[1:])  # [B, A, *grid]
        if self.grid is None:
            self.grid = tuple(codes.shape[2:])
        feats = masks = None
        captions = [raw["__caption__"] for raw, _ in batch]
        if self.text_encoder is not None:
            feat, mask = self.text_encoder(captions)
            if self.caption_shape is not None and tuple(feat.shape[1:]) != self.caption_shape:
                # one folder, one shape: mixed shapes would only fail later, in a training batch's collate
                raise DataError(f"the text encoder gave {list(feat.shape[1:])} caption features (slots, width) for "
                                f"{batch[0][0]['__shard__']}, not the {list(self.caption_shape)} it gave at the start; "
                                "it must pad every caption to the same number of slots")
            feats = feat.to("cpu", torch.float16).numpy()
            masks = mask.to("cpu", torch.uint8).numpy()
        for b, (raw, _) in enumerate(batch):
            fields: dict[str, Any] = {"tokens.npy": np.ascontiguousarray(codes[b])}
            if "cls" in raw:
                fields["cls"] = raw["__label__"]
            meta = _source_json(raw)
            meta["source_shard"], meta["source_key"] = Path(raw["__shard__"]).name, raw["__key__"]
            fields["json"] = meta
            if "txt" in raw:
                fields["txt"] = captions[b]
            if feats is not None:
                fields["capfeat.npy"], fields["capmask.npy"] = feats[b], masks[b]
            yield raw["__token_key__"], fields


def token_key(source_key: str, used: set[str]) -> str:
    """A token sample's key from its source key: ``./`` prefixes dropped, ``/`` and ``.`` (which a webdataset key
    cannot hold) turned into ``_``, and a suffix where that makes two keys of one shard equal."""
    key = source_key
    while key.startswith("./"):
        key = key[2:]
    key = key.replace("/", "_").replace(".", "_") or "_"
    unique, n = key, 1
    while unique in used:
        unique, n = f"{key}_{n}", n + 1
    used.add(unique)
    return unique


def _caption(raw: dict[str, Any], name: str) -> str:
    """The sample's ``txt`` as text ("" without one); :class:`InvalidSample` when it is not UTF-8."""
    try:
        return raw["txt"].decode("utf-8") if "txt" in raw else ""
    except UnicodeDecodeError as err:
        raise InvalidSample(name, f"caption (txt) is not UTF-8: {err}") from None


def _source_json(raw: dict[str, Any]) -> dict[str, Any]:
    """The source sample's ``json`` fields, carried into its token sample; {} when it has none or they are not a
    JSON object (invalid JSON, a list, a number): they are extra, never worth losing the sample for."""
    if "json" not in raw:
        return {}
    try:
        fields = json.loads(raw["json"])
    except ValueError:
        return {}
    return dict(fields) if isinstance(fields, dict) else {}


def refuse_per_visit_source(src: str | Path, src_meta: dict[str, Any] | None = None) -> None:
    """:class:`DataError` when ``src`` (its ``meta.json``: ``src_meta``, read when not given) holds whole videos
    read as a fresh window per visit: token shards store one tokenization per sample, so they need fixed clips."""
    meta_path = Path(src) / "meta.json"
    src_meta = read_meta(src) if src_meta is None else src_meta
    if src_meta.get("kind") != "video" or per_visit_window(src_meta, str(meta_path)) is None:
        return
    raise DataError(f"{src} holds whole videos (meta.json windows: per_visit), which training cuts a fresh window "
                    "from at every visit; token shards need fixed clips: write them with `nar data ucf101 "
                    "--clips-per-video N` (without --whole-videos) and tokenize those, or train on these pixels "
                    f"directly: data.root={src} tokenizer.path=<video VQ>")


def extract_tokens(
    src: str | Path,
    out: str | Path,
    tokenizer: nn.Module,
    *,
    splits: Sequence[str] | None = None,
    image_size: int | None = None,
    flip: bool = False,
    ten_crop: bool = False,
    crop_range: float = 1.1,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    text_encoder: TextEncoder | None = None,
    tokenizer_name: str = "",
    text_encoder_name: str = "",
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Encode every split of the image/video shard folder ``src`` with ``tokenizer`` into ``out``.

    ``tokenizer.encode(x)`` takes pixels in ``[-1, 1]`` (``[N, 3, H, W]`` or ``[N, 3, T, H, W]``) and
    returns codes ``[N, *grid]``. The pixel size is the tokenizer's (``tokenizer.config.image_size``),
    checked against the source's ``meta.json``; ``image_size`` (``--image-size``) overrides both. With
    ``text_encoder`` each caption's features are stored as ``capfeat.npy`` / ``capmask.npy``; its
    ``text_encoder_name`` (the CLI's ``kind:path:caption_len``), its features' ``[slots, width]`` and how it
    cleans captions (its ``clean_captions``, "none" when it does not say) join the settings a resumed run must
    share (like ``tokenizer_name``, flip and size) and ``meta.json`` (``text_encoder``, ``caption_len``,
    ``caption_dim``, ``clean_captions``). A ``tokenizer_name`` that is a file, and a text encoder path on disk, are
    identified by their content too (:func:`content_ids`: ``tokenizer_sha256``, ``text_encoder_files`` in the
    settings and ``meta.json``), so a tokenizer retrained into the same file neither resumes a split written with
    the old one nor adds a split beside it; a preset name stays a name. Returns the token folder's ``meta.json``.

    Several processes (``torch.distributed`` initialised, e.g. under torchrun, or :func:`extract_tokens_parallel`)
    share the work: rank ``r`` of ``world_size`` encodes source shards ``i ≡ r (mod world_size)`` into token shard
    ``i`` (one image never goes to two ranks), rank 0 holds the folder's lock and, once every rank is done,
    merges the one ``meta.json``. A failure on any rank ends every rank with an error naming it.
    """
    src_meta = read_meta(src)
    kind = src_meta.get("kind")
    if kind not in ("image", "video", "pairs"):
        raise DataError(f"{src}: token extraction reads image, video or pairs shards, not {kind!r}")
    refuse_per_visit_source(src, src_meta)
    size = tokenizer_image_size(src, src_meta, tokenizer, image_size)
    rank, world = _rank_world(rank, world_size)
    with group_dataset_lock(out, rank, world):
        return _extract(src, out, tokenizer, src_meta, kind, size, splits=splits, flip=flip, ten_crop=ten_crop,
                        crop_range=crop_range, batch_size=batch_size, device=device, text_encoder=text_encoder,
                        tokenizer_name=tokenizer_name, text_encoder_name=text_encoder_name, rank=rank, world=world)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def tokenizer_image_size(src: str | Path, src_meta: dict[str, Any], tokenizer: nn.Module, override: int | None) -> int:
    """Pixels fed to ``tokenizer``: ``override`` (``--image-size``), else the tokenizer's own
    ``config.image_size``, which must agree with the size ``src`` stores (``meta.json``'s ``image_size``,
    when fixed); else the stored size. Errors name the ``--image-size`` flag."""
    config = getattr(tokenizer, "config", None)
    trained = getattr(config, "image_size", None)
    stored = src_meta.get("image_size")
    if override:
        if trained and int(override) != int(trained):
            log.info("--image-size %d overrides the tokenizer's image_size %d", override, trained)
        return int(override)
    if trained and stored and int(trained) != int(stored):
        raise DataError(f"the tokenizer encodes {trained}-px inputs but {Path(src) / 'meta.json'} stores {stored}-px "
                        f"images; pass --image-size {trained} to resize them to the tokenizer's size "
                        f"(or --image-size {stored} to keep them)")
    if trained or stored:
        return int(trained or stored)
    raise DataError(f"cannot tell the image size: the tokenizer has no config.image_size and {Path(src) / 'meta.json'} "
                    "no image_size; pass --image-size N, the size the tokenizer was trained at")


def _extract(
    src: str | Path, out: str | Path, tokenizer: nn.Module, src_meta: dict[str, Any], kind: str, size: int, *,
    splits: Sequence[str] | None, flip: bool, ten_crop: bool, crop_range: float, batch_size: int,
    device: str | torch.device, text_encoder: TextEncoder | None, tokenizer_name: str, text_encoder_name: str = "",
    rank: int = 0, world: int = 1,
) -> dict[str, Any]:
    device = str(device)
    tokenizer = tokenizer.to(device).eval()
    caption_shape = text_feature_shape(text_encoder) if text_encoder is not None else None
    cleaning = caption_cleaning(text_encoder) if text_encoder is not None else None
    producer = EncodeTokenShard(tokenizer, kind, int(size), flip=flip, ten_crop=ten_crop, crop_range=crop_range,
                                batch_size=batch_size, device=device, text_encoder=text_encoder,
                                caption_shape=caption_shape)
    # the settings as written before the text encoder was recorded; still all of them when there is none
    old_params = {"size": int(size), "flip": flip, "ten_crop": ten_crop, "crop_range": crop_range,
                  "tokenizer": tokenizer_name, "text": text_encoder is not None}
    params = dict(old_params)
    # what the names point at, hashed: a tokenizer retrained into the same file is another tokenizer
    ids, id_sources = content_ids(tokenizer_name, text_encoder_name if caption_shape is not None else "")
    if "tokenizer_sha256" in ids:  # absent for a preset name: its folders resume as before
        params["tokenizer_sha256"] = ids["tokenizer_sha256"]
    if caption_shape is not None:
        params.update(text_encoder=text_encoder_name, caption_shape=list(caption_shape))
        if cleaning != "none":  # absent at "none": a folder begun before the setting existed resumes as it did
            params["clean_captions"] = cleaning
        if "text_encoder_files" in ids:
            params["text_encoder_files"] = ids["text_encoder_files"]
    names = list(splits or src_meta["splits"])
    for split in names:
        if split not in src_meta["splits"]:
            raise DataError(f"{src}: no split {split!r}")

    augs = "ten_crop" if ten_crop else "flip" if flip else "none"
    # what meta.json says of every split: set before encoding, so a split written with other settings is refused
    # before anything is written
    settings: dict[str, Any] = dict(
        codebook_size=getattr(tokenizer, "codebook_size", None), augmentations=T.AUGMENTATION_NAMES[augs],
        tokenizer=recorded_path(tokenizer_name), source=recorded_path(src), source_kind=kind, image_size=int(size),
        has_captions=bool(src_meta.get("has_captions") or kind == "pairs"), caption_features=text_encoder is not None,
        **{k: src_meta[k] for k in ("frames", "stride", "frame_skip") if k in src_meta},
        **{k: v for k, v in ids.items() if k == "tokenizer_sha256"},
    )
    if caption_shape is not None:
        settings.update(text_encoder=text_encoder_name, caption_len=caption_shape[0], caption_dim=caption_shape[1],
                        clean_captions=cleaning, **{k: v for k, v in ids.items() if k == "text_encoder_files"})
    planned_grid = _planned_grid(tokenizer, kind, size, src_meta)

    def encode() -> list[SplitRecord | None]:
        refuse_other_folder_settings(out, "tokens", names,
                                     {**settings, **({"grid": list(planned_grid)} if planned_grid else {})},
                                     defaults=_SETTING_DEFAULTS, flags=_SETTING_FLAGS, again=_AGAIN)
        records = []
        for split in names:
            # str, as before URLs were allowed: a folder half-written by an older version still resumes
            shards = [str(shard_location(src, s)) for s in expand_specs(src_meta["splits"][split]["shards"])]
            try:
                records.append(write_split(out, split, shards, produce=producer, shard_size=1, params=params,
                                           desc=f"tokens {split}", unit="shard", part=(rank, world)))
            except DataError as err:  # a resume refused by write_split: say why, for the cases we can tell
                if caption_shape is not None:
                    _explain_refused_text_resume(Path(out) / split, shards, old_params, params, err)
                _explain_refused_content_resume(out, split, shards, params, id_sources, err)
                raise
        return records

    records = _together(encode, rank, world, "token extraction")
    grid = producer.grid
    if world > 1:  # a rank with no shard left to encode has not seen the grid
        grid = next((g for g in _gather(grid, world) if g is not None), None)
    if grid is None:
        grid = planned_grid
    if grid is None:  # resumed run with nothing left to encode: keep what the folder says
        grid = tuple(read_meta(out).get("grid", ())) if (Path(out) / "meta.json").is_file() else ()

    def merge() -> dict[str, Any] | None:
        if rank != 0:
            return None
        done = [r if r is not None else collect_split(out, split) for split, r in zip(names, records)]
        return write_meta(out, "tokens", done, classes=src_meta.get("classes", []), grid=list(grid), **settings)

    meta = _together(merge, rank, world, "writing meta.json")
    return meta if meta is not None else read_meta(out)


# a field an older meta.json lacks: compared as this value (captions were not cleaned before clean_captions was
# recorded); one without an entry here is not compared
_SETTING_DEFAULTS: dict[str, Any] = {"clean_captions": "none"}
# the option (or input) that sets each field, named beside it when it differs
_SETTING_FLAGS = {"tokenizer": "--tokenizer", "codebook_size": "--tokenizer", "grid": "--tokenizer, --image-size",
                  "tokenizer_sha256": "--tokenizer (its file's content changed)",
                  "text_encoder_files": "--text-encoder-path (its files changed)",
                  "augmentations": "--flip, --ten-crop", "image_size": "--image-size", "source": "SRC",
                  "source_kind": "SRC", "has_captions": "SRC", "caption_features": "--text-encoder",
                  "text_encoder": "--text-encoder", "caption_dim": "--text-encoder", "caption_len": "--caption-len",
                  "clean_captions": "--clean-captions"}
_AGAIN = "pass --overwrite to delete the folder and extract every split again"


def _planned_grid(tokenizer: nn.Module, kind: str, size: int, src_meta: dict[str, Any]) -> tuple[int, ...] | None:
    """The token grid of ``size``-px inputs (``frames`` of them for video), from the tokenizer's ``grid_shape``
    (arithmetic, nothing encoded); None when it has none or refuses the size (encoding then says why)."""
    if not hasattr(tokenizer, "grid_shape"):
        return None
    shape = (1, 3, src_meta.get("frames", 1), size, size) if kind == "video" else (1, 3, size, size)
    try:
        return tuple(int(g) for g in tokenizer.grid_shape(shape))
    except ValueError:
        return None


def recorded_path(name: str | Path) -> str:
    """``name`` as ``meta.json`` records it: a file or folder that exists as an absolute path, so a run reading the
    tokens from any directory finds it (:func:`nar.workflows.train.facts_from_data`); anything else (a tokenizer
    preset name, "") as it is."""
    text = str(name)
    return os.path.abspath(text) if text and Path(text).exists() else text


# the fields of content_ids, and how a message names what each identifies
_CONTENT_WHAT = {"tokenizer_sha256": "the tokenizer file {}", "text_encoder_files": "the text encoder's files in {}"}
_CONTENT_MADE = {"tokenizer_sha256": "codes of two tokenizers",
                 "text_encoder_files": "caption features of two text encoders"}
_HIDDEN = "."  # a download tool's own files (.cache/, .git/) change without the model changing


def content_ids(tokenizer_name: str, text_encoder_name: str = "") -> tuple[dict[str, str], dict[str, Path]]:
    """What the tokenizer and text encoder names point at, hashed: ``(ids, paths)``, each keyed by
    ``tokenizer_sha256`` and ``text_encoder_files`` where the name is on disk, neither for a preset name or "".

    - ``tokenizer_sha256``: when ``tokenizer_name`` is a file, the sha256 of its bytes (read in chunks: a VQ-16
      file, ~280 MB, takes ~0.3 s from a warm page cache).
    - ``text_encoder_files``: when the path of ``text_encoder_name`` (``kind:path:caption_len``, or a path alone)
      exists: a folder (a transformers model) by :func:`folder_files_id`, its files' names, sizes and modification
      times rather than their bytes (a FLAN-T5-XL folder holds 11–45 GB: a minute or more to hash, in each process
      of ``--gpus N``, at every start; a model's files are only ever replaced whole, which sets their times); a
      file by the sha256 of its bytes.
    """
    ids: dict[str, str] = {}
    paths: dict[str, Path] = {}
    if tokenizer_name and Path(tokenizer_name).is_file():
        paths["tokenizer_sha256"] = Path(os.path.abspath(tokenizer_name))
        ids["tokenizer_sha256"] = file_sha256(tokenizer_name)
    text_path = _text_encoder_path(text_encoder_name)
    if text_path is not None:
        paths["text_encoder_files"] = text_path
        ids["text_encoder_files"] = file_sha256(text_path) if text_path.is_file() else folder_files_id(text_path)
    return ids, paths


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """The sha256 of the file ``path``'s bytes (hex), read ``chunk_bytes`` at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def folder_files_id(folder: str | Path) -> str:
    """A sha256 (hex) of the name (relative to ``folder``), size and modification time of each file under
    ``folder``, in name order; hidden files and folders (a download tool's ``.cache``) left out. A copy that keeps
    the times (``cp -p``, ``rsync -a``) has the same id; one that does not is taken as changed."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(_visible_files(folder)):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _visible_files(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` that identify a model: hidden files and folders (a download tool's) left out."""
    for path in folder.rglob("*"):
        if path.is_file() and not any(part.startswith(_HIDDEN) for part in path.relative_to(folder).parts):
            yield path


def _text_encoder_path(name: str) -> Path | None:
    """The file or folder on disk that a text encoder name (``kind:path:caption_len``, as the CLI gives it, or a
    path alone) names; None when it names none (the packaged MiniLM: ``minilm::64``)."""
    if not name:
        return None
    _, _, rest = name.partition(":")
    for candidate in (name, rest.rpartition(":")[0]):
        if candidate and Path(candidate).exists():
            return Path(os.path.abspath(candidate))
    return None


def _newest_mtime(path: Path) -> float:
    """The modification time of the file ``path``, or of the newest file :func:`folder_files_id` reads under it."""
    if path.is_file():
        return path.stat().st_mtime
    return max((p.stat().st_mtime for p in _visible_files(path)), default=0.0)


def _explain_refused_content_resume(out: str | Path, split: str, shards: list[str], params: dict[str, Any],
                                    sources: dict[str, Path], refused: DataError) -> None:
    """After :func:`write_split` ``refused`` to resume ``<out>/<split>`` with ``params``, raise the reason when the
    tokenizer file or the text encoder's files (``sources``, by their :func:`content_ids` field) are it; return
    when they are not, or it cannot be told:

    - the split was begun with everything else the same and the content ``meta.json`` records (the folder's last
      finished run) for one of them, which differs from this run's: the file changed since;
    - it was begun by a version that did not record the content: it cannot be checked;
    - else, when one of them was modified after the split's last progress was written (a run stopped before
      ``meta.json``): most likely it changed.

    Called only once the resume has failed, so a run that resumes reads its progress files once (in write_split)."""
    if not sources:
        return
    split_dir = Path(out) / split
    recorded_fps, newest_progress = set(), 0.0
    for path in _progress_files(split_dir):
        try:
            recorded_fps.add(json.loads(path.read_text()).get("fingerprint"))
            newest_progress = max(newest_progress, path.stat().st_mtime)
        except (OSError, ValueError, AttributeError):
            continue  # write_split's own error names an unreadable progress file
    named = {key: _CONTENT_WHAT[key].format(path) for key, path in sources.items()}
    again = "delete the folder (or pass --overwrite) and extract again"
    older = {k: v for k, v in params.items() if k not in _CONTENT_WHAT}
    if fingerprint(shards, shard_size=1, **older) in recorded_fps:
        raise DataError(f"{split_dir} was begun by an older nar, which did not record the content of "
                        f"{' or '.join(named.values())}, so its shards cannot be checked against this run's; "
                        f"{again}") from refused
    try:
        meta = read_meta(out)
    except DataError:  # none yet (a first run stopped before it was written), or unreadable
        meta = {}
    before = {key: meta[key] for key in sources if isinstance(meta.get(key), str) and meta[key] != params[key]}
    if before and fingerprint(shards, shard_size=1, **{**params, **before}) in recorded_fps:
        changed = "; ".join(f"{named[key]} changed since it was begun ({_short(before[key])} then, "
                            f"{_short(params[key])} now)" for key in before)
        raise DataError(f"{split_dir} was begun with other files under the same names: {changed}; "
                        f"{' and '.join(_CONTENT_MADE[key] for key in before)} cannot share a folder: rerun with the "
                        f"files that began it, or {again}") from refused
    modified = [key for key, path in sources.items() if newest_progress and path.exists()
                and _newest_mtime(path) > newest_progress]
    if modified:
        raise DataError(f"{split_dir} holds shards written from different inputs or settings, and "
                        f"{' and '.join(named[key] for key in modified)} changed after the last of them was written "
                        f"(its modification time is later): most likely retrained or replaced, and "
                        f"{' and '.join(_CONTENT_MADE[key] for key in modified)} cannot share a folder; rerun with "
                        f"the files that began it, or {again}") from refused


def _short(digest: str) -> str:
    return f"{digest[:12]}…"


def text_feature_shape(text_encoder: TextEncoder) -> tuple[int, int]:
    """``(slots, width)`` of ``text_encoder``'s features ``[B, slots, width]``: its ``max_len`` and ``feature_dim``
    where it has them (:class:`nar.text.TextEncoder`), else read off the features of one empty caption."""
    slots, width = getattr(text_encoder, "max_len", None), getattr(text_encoder, "feature_dim", None)
    if slots and width:
        return int(slots), int(width)
    feat, _ = text_encoder([""])
    return int(feat.shape[1]), int(feat.shape[2])


def caption_cleaning(text_encoder: TextEncoder) -> str:
    """How ``text_encoder`` cleans captions before encoding them (:attr:`nar.text.TextEncoder.clean_captions`);
    "none" for an encoder that does not say."""
    return str(getattr(text_encoder, "clean_captions", "none"))


def stored_caption_cleaning(meta: dict[str, Any]) -> str:
    """How the captions of a token folder's stored features were cleaned (its ``meta.json``); "none" where it
    does not say (folders written before the setting existed)."""
    return str(meta.get("clean_captions") or _SETTING_DEFAULTS["clean_captions"])


def _explain_refused_text_resume(split_dir: Path, shards: list[str], old_params: dict[str, Any],
                                 params: dict[str, Any], refused: DataError) -> None:
    """After :func:`write_split` ``refused`` to resume ``split_dir`` with ``params``, raise the reason when it is one
    we can tell from the progress files' fingerprints, rather than the general mismatch; return when it is none:

    - the split was begun before the text encoder joined the settings (they held only ``text: true``): which
      encoder made its caption features is unknown, so this run cannot be checked against it;
    - it was begun with the same settings but another caption cleaning (``clean_captions``).

    Called only once the resume has failed, so a run that resumes reads its progress files once (in write_split)."""
    from nar.text.cleaning import CLEANINGS

    cleaned = {}  # fingerprint of these settings with another cleaning -> that cleaning
    for how in CLEANINGS:
        other = {k: v for k, v in params.items() if k != "clean_captions"}
        if how != "none":
            other["clean_captions"] = how
        cleaned[fingerprint(shards, shard_size=1, **other)] = how
    old = fingerprint(shards, shard_size=1, **old_params)
    this = params.get("clean_captions", "none")
    for path in _progress_files(split_dir):
        try:
            recorded = json.loads(path.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            continue  # write_split's own error names an unreadable progress file
        if recorded == old:
            raise DataError(f"{split_dir} was begun by an older nar, which did not record the text encoder that made "
                            "its caption features, so they cannot be checked against this one; delete the folder "
                            "(or pass --overwrite) and extract again") from refused
        if cleaned.get(recorded, this) != this:
            how = cleaned[recorded]
            raise DataError(f"{split_dir} holds caption features of captions cleaned with clean_captions '{how}', "
                            f"and this run's is '{this}'; the two cannot share a folder: rerun with "
                            f"--clean-captions {how} (text.clean_captions), or delete the folder (or pass "
                            "--overwrite) and extract again") from refused


def _gather(obj: Any, world: int) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _together(action: Callable[[], Any], rank: int, world: int, what: str) -> Any:
    """``action()`` on every rank; then every rank learns whether any failed (one all-gather), so that no rank
    waits forever for one that stopped. The failing rank raises its own error, the others one naming it."""
    if world <= 1:
        return action()
    try:
        result, error = action(), None
    except Exception as err:  # noqa: BLE001 — reported to every rank, then re-raised
        result, error = None, err
    reports = _gather(None if error is None else f"{type(error).__name__}: {error}", world)
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(reports) if msg]
    if failed:
        raise DataError(f"{what} failed on rank {failed[0][0]} of {world}: {failed[0][1]}")
    return result


# --------------------------------------------------------------------------------------------------
# Several processes on one machine (`nar data tokens --gpus N`)
# --------------------------------------------------------------------------------------------------


def extract_tokens_parallel(
    src: str | Path,
    out: str | Path,
    make_tokenizer: Callable[[str], nn.Module],
    processes: int,
    *,
    device: str = "cpu",
    make_text_encoder: Callable[[str], TextEncoder] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`extract_tokens` in ``processes`` processes (a gloo group), one per GPU when ``device`` is ``cuda``
    (process ``r`` on ``cuda:r``), else on the CPU. ``make_tokenizer(device)`` (and ``make_text_encoder``) build
    each process's own copy; they must be picklable where CUDA forces the spawn start method. Returns ``meta.json``;
    an error in any process is raised here (its own type when it is one of nar's)."""
    if processes < 1:
        raise ValueError(f"processes must be ≥ 1, got {processes}")
    if device == "cuda" and processes > torch.cuda.device_count():
        raise DataError(f"--gpus {processes}, but {torch.cuda.device_count()} CUDA devices are visible")
    with dataset_lock(out):  # this process holds the folder for its workers (spawned ones cannot inherit it)
        results = run_processes(_extract_rank, processes, src, out, make_tokenizer, make_text_encoder, device, kwargs)
    return results[0]


def _extract_rank(rank: int, world: int, src: Any, out: Any, make_tokenizer: Callable, make_text_encoder: Callable | None,
                  device: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    where = f"cuda:{rank}" if device == "cuda" else device
    if device == "cuda":
        torch.cuda.set_device(rank)
    text = make_text_encoder(where) if make_text_encoder is not None else None
    with lock_held_elsewhere(out):
        return extract_tokens(src, out, make_tokenizer(where), device=where, text_encoder=text, rank=rank,
                              world_size=world, **kwargs)


def run_processes(fn: Callable[..., Any], processes: int, *args: Any, timeout_s: float = 1800.0) -> list[Any]:
    """``fn(rank, world, *args)`` in ``processes`` local processes joined in a gloo process group; their return
    values by rank. A process that raises (or dies) ends the others and its error is raised here."""
    import multiprocessing
    import queue as queues
    import tempfile

    from nar.data.shards import _start_method

    ctx = multiprocessing.get_context(_start_method())
    messages = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="nar-group-") as tmp:
        init = f"file://{tmp}/store"
        forked = ctx.get_start_method() == "fork"
        procs = [ctx.Process(target=_process_entry,
                             args=(fn, rank, processes, init, timeout_s, forked, args, messages, os.getpid()))
                 for rank in range(processes)]
        for p in procs:
            p.start()
        results: dict[int, tuple[bool, Any]] = {}
        try:
            while len(results) < processes:
                try:
                    rank, ok, value = messages.get(timeout=1.0)
                    results[rank] = (ok, value)
                except queues.Empty:
                    dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results]
                    if dead:
                        results.setdefault(dead[0], (False, DataError(f"process {dead[0]} of {processes} died "
                                                                       f"(exit code {procs[dead[0]].exitcode})")))
                        break
        finally:
            for p in procs:
                p.join(timeout=5 if len(results) == processes else 0.1)
                if p.is_alive():
                    p.terminate()
                    p.join()
    errors = [value for ok, value in results.values() if not ok]
    if errors:  # the rank whose own error it was, before those that only heard of it
        own = [e for e in errors if "failed on rank" not in str(e)]
        raise (own or errors)[0]
    return [results[r][1] for r in range(processes)]


def _process_entry(fn: Callable[..., Any], rank: int, world: int, init: str, timeout_s: float, forked: bool,
                   args: tuple, messages: Any, parent: int) -> None:
    import datetime
    import pickle

    import torch.distributed as dist

    from nar.data.shards import exit_with_parent

    exit_with_parent(parent)  # a parent killed with SIGKILL must not leave the ranks running on
    if forked:  # an OpenMP pool the parent had started hangs a forked child's first parallel op (as DataLoader workers do)
        torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        messages.put((rank, True, fn(rank, world, *args)))
    except BaseException as err:  # noqa: BLE001 — handed to the parent, which raises it
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:  # noqa: BLE001 — an error that does not travel: its text does
            err = DataError(f"rank {rank}: {type(err).__name__}: {err}")
        messages.put((rank, False, err))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
