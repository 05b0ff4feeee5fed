"""``nar train-tokenizer`` — train a VQ tokenizer (image or video) on shards, with Lightning (DDP on GPUs).

    nar train-tokenizer --root data/my-digits                 # the recipe and size follow the data
    nar train-tokenizer --data emoji trainer.max_steps=3000
    nar train-tokenizer --data imagenet --root /data/imagenet-shards --gpus 8 --nodes 2
    nar train-tokenizer --config my_tokenizer.yaml data.root=/data/my-shards

The config is a packaged recipe: ``--data NAME`` names one (``tokenizers/NAME.yaml``), else ``--root`` picks one
by the shards' kind and stored size (images up to 64 px: the tiny ``vq-tiny-emoji`` recipe, larger: LlamaGen
VQ-16; clips: the tiny Atari or the UCF-101 video tokenizer), at the data's size and clip length; ``--preset``
changes the tokenizer preset; then ``key=value`` overrides (:class:`nar.runs.TokenizerRunConfig`). The run folder ``<runs_root>/<name>/`` holds TensorBoard
logs (``tb/``), checkpoints and ``tokenizer.pt``, which token extraction and sampling load.
"""

from __future__ import annotations

import argparse

from nar.cli.train import add_device_args, device_overrides


def register(sub: argparse._SubParsersAction) -> None:
    from nar.config import GivenOnce
    from nar.workflows.tokenizer import DATASETS

    p = sub.add_parser("train-tokenizer", help="train a VQ tokenizer (image or video) on shards",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=DATASETS, default=None,
                   help="a packaged recipe, tokenizers/<data>.yaml (default: chosen from --root's kind and size)")
    p.add_argument("--root", help="image or video shard folder (default: the recipe's data.root)")
    p.add_argument("--preset", default=None,
                   help="tokenizer preset (vq-16, vq-8, vq-tiny-emoji, vq-video-ucf101, vq-video-tiny-atari); "
                   "default: the recipe's")
    # tokenizer_config reads one recipe YAML: a second --config is refused, not merged as by `nar train`
    p.add_argument("--config", action=GivenOnce, help="tokenizer YAML instead of a packaged recipe (one)")
    add_device_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run folder's newest intact checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.workflows.tokenizer import tokenizer_config, train_tokenizer

    cfg = tokenizer_config(args.data, args.config, [*device_overrides(args), *args.overrides], args.root,
                           preset=args.preset)
    train_tokenizer(cfg, resume=args.resume)
    return 0
