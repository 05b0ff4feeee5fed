"""``nar evaluate`` — score a generator checkpoint: ours (EMA weights) or an official NAR ``.pt``.

    nar evaluate --config experiments/imagenet/nar_l.yaml --ckpt runs/nar-l/checkpoints/last.ckpt --gpus 8
    nar evaluate --config experiments/imagenet/nar_l.yaml --ckpt NAR-L.pt tokenizer.path=vq_ds16_c2i.pt \\
        eval.reference_stats=VIRTUAL_imagenet256_labeled.npz
    nar evaluate --config experiments/ucf101/nar_l.yaml --ckpt runs/ucf/checkpoints/last.ckpt eval.i3d_path=i3d.pt

Images: ``eval.per_class`` samples of every class (50 → 50k for ImageNet) with ``sampling.*``. Guidance:
the config's ``sampling.cfg_scale`` (default 1.0 = none; 2.0 in the ImageNet configs, 1.25 for UCF-101),
changed with ``sampling.cfg_scale=...``, FID / IS / precision / recall per ``eval.metrics`` against ``eval.real_root``
samples or ``eval.reference_stats``. Videos: FVD with ``eval.i3d_path``, else the Inception proxy
(reported as ``fvd_proxy_inception``). Scores are printed and written to ``<run>/eval_<ckpt>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nar.cli.train import add_device_args, device_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="FID/IS/PR or FVD of a checkpoint (ours or official)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="YAML file(s) over the defaults (in order)")
    p.add_argument("--ckpt", required=True, help="our Lightning .ckpt or an official generator .pt")
    p.add_argument("--per-class", type=int, default=None, help="samples per class (default eval.per_class)")
    p.add_argument("--num-samples", type=int, default=None, help="total samples instead of per class")
    add_device_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.config import load_config
    from nar.runs.config import TrainConfig
    from nar.workflows.train import evaluate

    overrides = [*device_overrides(args), *args.overrides]
    if not any(o.startswith("trainer.val_every=") for o in overrides):
        overrides.append("trainer.val_every=0")
    cfg = load_config(TrainConfig, args.config, overrides)
    scores = evaluate(cfg, args.ckpt, per_class=args.per_class, num_samples=args.num_samples)
    import lightning.fabric.utilities.rank_zero as rz

    if getattr(rz.rank_zero_only, "rank", 0) == 0:
        out = cfg.run_dir / f"eval_{Path(args.ckpt).stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores, indent=1, sort_keys=True))
        for k, v in sorted(scores.items()):
            print(f"{k:28s} {v:.5g}")
        print(f"written to {out}")
    return 0
