"""``nar bench-data`` — images/s of reading + decoding + cropping ImageNet-style JPEG shards per worker: our reader
and a plain ``webdataset`` pipeline side by side, in alternating rounds; JSON, markdown and a README into ``--out``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from nar.config import positive_int

log = logging.getLogger("nar.bench_data")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-data", help="data throughput: our shard reader vs a plain webdataset pipeline "
                       "(read + decode + crop ImageNet-style JPEGs, images/s per worker)",
                       description=__doc__.replace("``", ""))
    p.add_argument("--data", default=None,
                   help="image dataset folder (meta.json; `nar data imagenet` or `nar data index`) (default: synthetic "
                   "ImageNet-style JPEGs, 500×375 ≈ 100 kB, written to --synthetic-dir)")
    p.add_argument("--split", default="train", help="split of --data to read")
    p.add_argument("--synthetic", type=positive_int, default=512, help="synthetic images to write when --data is not given")
    p.add_argument("--synthetic-dir", default=None,
                   help="where the synthetic shards go (kept and reused) (default: a temporary folder)")
    p.add_argument("--images", type=positive_int, default=512, help="images each reader reads per round")
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds, the order of the two readers flipping each round")
    p.add_argument("--crop", type=int, default=256, help="ADM centre crop size")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers (0: read in this process; rates are always per worker)")
    p.add_argument("--out", default="runs/bench", help="folder for results.json, results.md and README.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.data.bench import compare_readers, machine, write_synthetic

    with tempfile.TemporaryDirectory(prefix="nar-bench-data-") as tmp:
        if args.data:
            root, source = Path(args.data), f"{args.data} (split {args.split})"
        else:
            root = write_synthetic(args.synthetic_dir or Path(tmp) / "synthetic", images=args.synthetic)
            source = f"{args.synthetic} synthetic ImageNet-style JPEGs (500×375, quality 90, ≈ 100 kB), {root}"
        start = time.perf_counter()
        result = compare_readers(root, split=args.split, images=args.images, crop=args.crop, rounds=args.rounds,
                                 workers=args.workers, progress=lambda line: log.info("%s", line))
        seconds = time.perf_counter() - start
    command = "nar " + " ".join(shlex.quote(a) for a in getattr(args, "argv", None) or ["bench-data"])  # as nar bench
    report: dict[str, Any] = {"command": command, "machine": machine(), "data": source,
                              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(seconds, 1),
                              **result.to_dict()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    table = _markdown(report, result)
    (out / "results.md").write_text(table)
    (out / "README.md").write_text(_readme(report, table))
    print(table)
    print(f"written to {out}/results.json, results.md, README.md")
    return 0


def _markdown(report: dict[str, Any], result: Any) -> str:
    rows = ["| round | first | ours (img/s/worker) | plain webdataset (img/s/worker) | ours / plain |",
            "|---:|---|---:|---:|---:|"]
    for i, r in enumerate(result.rounds, 1):
        rows.append(f"| {i} | {r.first} | {r.ours:.1f} | {r.plain:.1f} | {r.ours / r.plain:.3f} |")
    rows.append(f"| **median** | | **{result.ours:.1f}** | **{result.plain:.1f}** | **{result.ratio:.3f}** |")
    return (f"Reading + decoding + {result.crop}-px centre crop, {result.images} images per reader per round, "
            f"{result.workers or 'no'} DataLoader workers (rates per worker)\n\n" + "\n".join(rows) + "\n")


def _readme(report: dict[str, Any], table: str) -> str:
    m = report["machine"]
    verdict = "meets" if report["ratio_ours_over_plain"] >= 0.9 else "misses"
    return f"""# Data throughput: our shard reader vs a plain webdataset pipeline

Command (from the repository root, `.venv` active):

    {report["command"]}

Machine: {m["cpu"]}, {m["logical_cores"]} logical cores ({m["affinity"]} usable, shared with other jobs), Python
{m["python"]}, torch {m["torch"]}, webdataset {m["webdataset"]}, Pillow {m["pillow"]}; {m["platform"]}.
Measured {report["date"]}, {report["seconds"]} s.

Data: {report["data"]}.

What is timed, per worker: read each sample from the tar shards, decode the JPEG (PIL), ADM centre crop to
{report["crop"]} px (box halving + bicubic, `nar.data.transforms.center_crop_arr`) and convert to a float tensor in
[-1, 1]. *Ours*: `ShardStream` + `ImageSample` (shards opened by `webdataset.gopen`, every sample checked against
meta.json). *Plain*: `webdataset.WebDataset(urls).decode("pil").to_tuple("jpg;jpeg;png", "cls")` with the same crop
and tensor. The two alternate in rounds (the order flips every round) after one warm-up pass each; medians and
the ratio of medians below.

{table}
Target: ours ≥ 0.9 × plain. Ratio of medians {report["ratio_ours_over_plain"]:.3f}: {verdict} the target.
"""
