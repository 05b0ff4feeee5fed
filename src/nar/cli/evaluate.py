"""``nar evaluate`` — score a generator checkpoint: ours (EMA weights) or an official NAR ``.pt``.

    nar evaluate --ckpt runs/nar-l/checkpoints/last.ckpt                      # the run's own config and budget
    nar evaluate --ckpt runs/nar-l/checkpoints/last.ckpt --per-class 50 --gpus 8
    nar evaluate --config experiments/imagenet/nar_l.yaml --ckpt NAR-L.pt tokenizer.path=vq_ds16_c2i.pt \\
        eval.reference_stats=VIRTUAL_imagenet256_labeled.npz
    nar evaluate --config experiments/ucf101/nar_l.yaml --ckpt runs/ucf/checkpoints/last.ckpt eval.i3d_path=i3d.pt

Budget: ``--num-samples``, else ``--per-class`` (or the config's ``eval.per_class``) × classes (ImageNet
protocol: 50 → 50k), else the config's ``eval.num_samples``. Class ids per ``eval.labels``: ``balanced`` (the
default: round-robin, every class gets its share), ``random`` (uniform draws seeded from ``eval.seed``, as the
official c2i sampler draws them) or ``real`` (sample ``i`` takes the class of real sample ``i`` scored against, as
NAR-videos' sample.py: ``eval.real_root``'s ``labels.npy`` or ``cls`` members, or the reference batch's ``arr_1``;
as many real samples as generated, else refused at start). Guidance: the config's ``sampling.cfg_scale`` (default 1.0 = none; 2.0 in the
ImageNet configs, 1.25 for UCF-101), changed with ``sampling.cfg_scale=...``. Images: FID / IS / precision / recall
per ``eval.metrics`` against ``eval.real_root`` samples (``eval.num_real`` of them: a uniform random subset drawn
with ``eval.real_seed`` when the split holds more) or ``eval.reference_stats`` (an ADM batch's images, ``arr_0``, for
precision/recall/KID). Videos: FVD with ``eval.i3d_path``, else the Inception proxy (reported as
``fvd_proxy_inception``).

Samples stream to ``<out>/chunks`` (a killed evaluation continues from them) and into
``<out>/samples_<N>.npz`` (``arr_0``, the ADM evaluator's input); scores, sample counts and the reference go
to ``<out>/results.json``, with how the samples were made (``eval.seed``, ``eval.batch_size``, ``eval.sampler``, the
tokenizer, the decoded image size, the size the real images were cropped to) and the command. ``<out>`` =
``<run>/eval/<checkpoint>-<N>``: training outputs are never touched. Chunk ``c`` is seeded from ``eval.seed`` and
``c`` hashed together (neighbouring seeds share no sample); a rerun into the same ``<out>`` reads its chunks back
only when the checkpoint, model config, tokenizer, sampling, sampler and seed are the ones that made them, else it
stops naming what differs (a folder made by an older version, seeded ``eval.seed + c``, is refused).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from nar.cli.train import add_device_args, device_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="FID/IS/PR or FVD of a checkpoint (ours or official)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="our Lightning .ckpt (its run config is used) or an official .pt")
    p.add_argument("--config", action="append", default=[],
                   help="YAML(s) over the checkpoint's run config (official .pt files: required, describing the model)")
    p.add_argument("--per-class", type=int, default=None, help="samples per class (ImageNet protocol: 50): this x "
                   "classes in total, each class's share with eval.labels=balanced, random ids with eval.labels=random, "
                   "the real samples' classes with eval.labels=real (default: the config's eval.per_class, else "
                   "eval.num_samples in total)")
    p.add_argument("--num-samples", type=int, default=None, help="total samples (default: eval.num_samples)")
    p.add_argument("--out", default=None, help="results folder (default: <run>/eval/<checkpoint>-<N>)")
    add_device_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.workflows.train import evaluate, evaluation_config

    cfg = evaluation_config(args.ckpt, args.config, [*device_overrides(args), *args.overrides])
    command = "nar " + shlex.join(getattr(args, "argv", None) or ["evaluate"])  # as given, for results.json
    results = evaluate(cfg, args.ckpt, per_class=args.per_class, num_samples=args.num_samples, out=args.out,
                       command=command)
    import lightning.fabric.utilities.rank_zero as rz

    if getattr(rz.rank_zero_only, "rank", 0) == 0:
        for k, v in sorted(results["scores"].items()):
            print(f"{k:28s} {v:.5g}")
        print(f"{results['num_samples']} samples scored against {results['reference']}")
        if results.get("samples_npz"):
            print(f"samples (ADM format): {results['samples_npz']}")
        print(f"written to {Path(results['out']) / 'results.json'}")
    return 0
