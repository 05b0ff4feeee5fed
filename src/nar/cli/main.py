"""``nar`` — one entry point; each sub-command lives in its own module under ``nar.cli``.

A module listed in ``SUBCOMMANDS`` defines ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code. The package's
own errors end in one log line and their exit code (:mod:`nar.errors`: 2 for input to fix, 1 for a
failure at run time, 75 for a run stopped by a signal after saving its checkpoint).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from nar.errors import NarError

# Sub-command modules, in the order `nar --help` lists them.
SUBCOMMANDS: list[str] = [
    "nar.cli.info",
    "nar.cli.data",
    "nar.cli.bench",
    "nar.cli.train_tokenizer",
    "nar.cli.train",
    "nar.cli.evaluate",
    "nar.cli.eval_samples",
    "nar.cli.sample",
    "nar.cli.demo",
    "nar.cli.ablate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nar", description="Neighboring Autoregressive Modeling suite")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except NarError as err:  # one line naming the file, key or value; 2 = fix the input, 1 = runtime failure
        logging.getLogger("nar").error("%s", err)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
