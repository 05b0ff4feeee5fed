"""``nar export`` — one consolidated generator file from a run checkpoint, plain or sharded (``trainer.strategy: fsdp``).

    nar export --ckpt runs/imagenet-nar-xl/checkpoints/last.ckpt --out nar-xl.pt              # EMA weights, ours
    nar export --ckpt runs/imagenet-nar-xl/checkpoints/last.ckpt --out NAR-XL.pt --official   # official key names
    nar export --ckpt runs/imagenet-nar-xl/checkpoints/step_0100000.ckpt --out raw.pt --no-ema

Ours keeps the run config, so ``nar sample --ckpt nar-xl.pt`` and ``nar evaluate --ckpt nar-xl.pt`` work as with
the run's checkpoint; an official file holds only weights (``{"model": ...}``): load it with ``--official
--n-head`` or ``--config``. Runs on one process and reads only the chosen weights. The work is
:func:`nar.workflows.export.export_generator`; this module only parses arguments.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write one generator file (ours or official keys) from a run checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a run checkpoint: checkpoints/*.ckpt (plain or a sharded manifest)")
    p.add_argument("--out", required=True, help="the file to write (.pt); never the --ckpt file itself")
    p.add_argument("--force", action="store_true", help="replace --out when it exists (default: refuse)")
    p.add_argument("--official", action="store_true", help="official NAR key names ({'model': weights}, no config)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="the EMA weights (--no-ema: the trained ones; default: EMA when the run kept it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.workflows.export import export_generator

    done = export_generator(args.ckpt, args.out, official=args.official, ema=args.ema,
                            force=args.force)
    print(f"{done['out']}: {done['weights']} weights of step {done['global_step']} "
          f"({done['parameters'] / 1e6:.2f}M parameters, {done['format']} format)")
    return 0
