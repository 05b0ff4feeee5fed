"""``nar demo`` — from a fresh install to samples and an FID on the CPU, in minutes.

    nar demo --domain emoji              # 14.7 min measured on 2 CPU cores (experiments/demo/results/)
    nar demo --domain atari              # the video variant (FVD proxy)
    nar demo --domain emoji --smoke      # < 2 min: the same pipeline with tiny budgets (used by the tests)
    nar demo --domain emoji --compare-raster   # NAR and the raster baseline, same trunk/tokenizer/budget
    nar demo --domain shapes-t2i         # text-to-image: shapes captions, MiniLM features, GenEval-style score
    nar demo --domain emoji-t2i          # text-to-image on emoji names (FID)

Steps: embedded shards, a tiny tokenizer, token shards, a tiny NAR trained with validation by frontier
decoding, its FID and sample grid (:mod:`nar.workflows.demo`). Each step is skipped when its output
exists, so a second run resumes.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from nar.workflows.demo import BUDGETS, DOMAINS

    budgets = ", ".join(f"{domain} {b['tokenizer_steps']}" for domain, b in BUDGETS.items())
    smoke = sorted({b["smoke_tokenizer_steps"] for b in BUDGETS.values()})

    p = sub.add_parser("demo", help="CPU demo: embedded data -> tiny tokenizer -> tiny NAR -> samples + FID",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", choices=DOMAINS, default="emoji", help="dataset and task (default: emoji)")
    p.add_argument("--smoke", action="store_true", help="tiny budgets (< 2 min), for tests and CI")
    p.add_argument("--compare-raster", action="store_true",
                   help="also train the raster baseline with the same trunk, tokenizer and budget; report both")
    p.add_argument("--out", default=None, help="demo folder (default: runs/demo-<domain>[-smoke])")
    p.add_argument("--data", default=None, help="embedded data folder (default: data/embedded; with --smoke or a t2i domain, <out>/data)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2; 0 keeps torch's own default)")
    p.add_argument("--tokenizer-steps", type=int, default=None,
                   help=f"tokenizer training steps, >= 1 (default: the domain's budget: {budgets}; --smoke "
                   f"{'/'.join(map(str, smoke))}); with generator overrides such as trainer.max_steps=600 this sets "
                   "the demo's budget split")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the generator config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.workflows.demo import format_report, run_demo

    result = run_demo(args.domain, smoke=args.smoke, compare_raster=args.compare_raster, out=args.out,
                      data=args.data, threads=args.threads, overrides=args.overrides,
                      tokenizer_steps=args.tokenizer_steps)
    print(format_report(result))
    return 0
