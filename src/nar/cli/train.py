"""``nar train`` — train the NAR generator (or the raster baseline) with Lightning.

    nar train --config experiments/imagenet/nar_l.yaml data.root=/data/imagenet-tokens --gpus 8 --nodes 4
    nar train --config experiments/demo/emoji.yaml model.mode=raster name=emoji-raster
    nar train --config ... name=my-run --resume        # continue a killed run from its last.ckpt

One run = one folder ``<runs_root>/<name>/`` with TensorBoard logs (``tb/``), checkpoints, sample grids
and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs (processes) per node; 0 = every visible GPU, or one CPU process when there is none")
    p.add_argument("--nodes", type=int, default=None, help="number of nodes (DDP through Lightning)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when GPUs are visible")


def device_overrides(args: argparse.Namespace) -> list[str]:
    """``trainer.*`` overrides from ``--gpus/--nodes/--cpu`` (explicit key=value overrides still win)."""
    import torch

    out = []
    if args.cpu:
        out += ["trainer.accelerator=cpu"]
    elif args.gpus is not None:
        n = args.gpus or torch.cuda.device_count()
        out += [f"trainer.accelerator={'gpu' if n else 'cpu'}", f"trainer.devices={max(n, 1)}"]
    if args.nodes is not None:
        out.append(f"trainer.num_nodes={args.nodes}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the generator (NAR or raster baseline)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="YAML file(s) over the defaults (in order)")
    add_device_args(p)
    p.add_argument("--resume", action="store_true", help="continue <run>/checkpoints/last.ckpt if it exists")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=2e-4")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.workflows.train import fit, generator_config

    cfg = generator_config(args.config, [*device_overrides(args), *args.overrides])
    out = fit(cfg, resume=args.resume)
    if out["trainer"].is_global_zero:
        scores = {k: v for k, v in out["metrics"].items() if k.startswith("val/")}
        print(f"run folder: {out['run_dir']}")
        print(f"checkpoint: {out['checkpoint']}")
        if out["samples"]:
            print(f"samples:    {out['samples']}")
        print(f"tensorboard --logdir {out['run_dir'] / 'tb'}")
        print("scores:     " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(scores.items())))
        if out["degraded"]:  # allowed with allow_degraded=true, and said again here so it is not missed
            print("degraded:   " + "; ".join(out["degraded"]))
    return 0
