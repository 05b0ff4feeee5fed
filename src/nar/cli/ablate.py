"""``nar ablate`` — a grid of generator configurations, trained and evaluated with everything else fixed.

    nar ablate --config experiments/ablations/heads_emoji.yaml                 # `make ablate-heads` (CPU)
    nar ablate --config experiments/ablations/heads_imagenet.yaml --gpus 8 data.root=... tokenizer.path=...
    nar ablate --config ... --only mixed,raster                                 # a subset of the rows
    nar ablate --config ... --set out=runs/ablations/try2 trainer.max_steps=50   # --set: one ablation key each

Writes ``<out>/results.csv`` (one row per variant, written when complete; a rerun of the same command skips
finished rows and resumes an interrupted variant from its last checkpoint), ``results.md``, ``fid_vs_speed.png``
and TensorBoard HParams under ``<out>/tb`` (``tensorboard --logdir <out>/tb``, tab HPARAMS). A variant that fails
does not stop the others: the command ends with the table, lists the failed variants and exits non-zero (their
tracebacks in ``<out>/runs/<name>/error.log``). A shared setting changed after runs finished is refused naming
them: delete their rows and run folders, or pick another ``--set out=``.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from nar.cli.train import add_device_args
    from nar.config import GivenOnce

    p = sub.add_parser("ablate", help="train and evaluate a grid of generator variants (head ablations)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, action=GivenOnce,
                   remedy="put the keys of both into one file, or pass the ablation's own keys as --set key=value "
                          "and training keys as key=value",
                   help="ablation YAML (experiments/ablations/*.yaml; one)")
    p.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="one override of the ablation YAML's own keys (out=..., bench.batch=...); repeat the flag "
                        "for more (--set out=... --set bench.batch=8); bare key=value are training overrides")
    p.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the shared tokenizer step")
    add_device_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="training-config overrides shared by every variant (data.root=..., trainer.max_steps=...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.cli.train import device_overrides
    from nar.workflows.ablation import load_ablation_config, markdown_table, run_ablation

    cfg = load_ablation_config(args.config, args.set)
    only = [s for s in args.only.split(",") if s] or None
    result = run_ablation(cfg, shared=[*device_overrides(args), *args.overrides], only=only, threads=args.threads)
    if result["rows"]:
        print(markdown_table(result["rows"], title=cfg.name, missing=result["missing"]))
    print(f"ran: {', '.join(result['ran']) or '-'}; already done: {', '.join(result['skipped']) or '-'}")
    print(f"results:     {result['csv']}\n             {result['markdown']}")
    if result["plot"]:
        print(f"plot:        {result['plot']}")
    print(f"tensorboard --logdir {result['tensorboard']}")
    failed = result.get("failed") or []
    if failed:
        log.error("%d of the %d runs attempted this time failed: %s; fix them and run the same command again (it "
                  "trains only the runs without a row)", len(failed), len(failed) + len(result["ran"]),
                  ", ".join(f"{name} ({reason})" for name, reason in failed))
        return result["exit_code"]
    return 0
