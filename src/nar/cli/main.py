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
from nar.logconfig import configure_logging

# Sub-command modules, in the order `nar --help` lists them.
SUBCOMMANDS: list[str] = [
    "nar.cli.info",
    "nar.cli.data",
    "nar.cli.bench",
    "nar.cli.bench_data",
    "nar.cli.train_tokenizer",
    "nar.cli.train",
    "nar.cli.evaluate",
    "nar.cli.export",
    "nar.cli.eval_samples",
    "nar.cli.sample",
    "nar.cli.demo",
    "nar.cli.ablate",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their examples keep their lines) and every option's default in its help,
    unless the help already says it or there is none to state (unset, off, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == [] or default == "" or default is argparse.SUPPRESS
        # a switch that turns something off (--no-decode) is off unless given; its True is the other setting's
        unset = unset or isinstance(action, argparse._StoreFalseAction)
        if "default" in help_text or unset or isinstance(action, argparse._HelpAction) or not action.option_strings:
            return action.help
        return f"{help_text} (default: %(default)s)"


class IntermixedParser(argparse.ArgumentParser):
    """A sub-command parser taking options and ``key=value`` positionals in any order (``parse_intermixed_args``):
    ``nar ablate --config g.yaml a=1 --only m b=2``, as ``make <target> ARGS="--flag key=value"`` writes it (the
    plain parse takes the positionals once, so ``b=2`` would be refused).

    Only parsers whose positionals are all optional (the ``key=value`` lists) intermix: one with a required
    positional (``nar data tokens SRC``) would name a missing positional only after its missing options, and one
    with a sub-command of its own (``nar data``) cannot intermix; those parse as usual."""

    _intermixing = False  # parse_known_intermixed_args calls parse_known_args itself, twice

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        positionals = self._get_positional_actions()
        grouped = {a for group in self._mutually_exclusive_groups for a in group._group_actions}
        plain = self._intermixing or not positionals or \
            any(a.nargs not in ("*", "?") or a in grouped for a in positionals)
        if plain:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _every_parser(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nar", description="Neighboring Autoregressive Modeling suite")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; an error shows its traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    for p in _every_parser(parser):  # one help style for every sub-command
        p.formatter_class = HelpFormatter
    return parser


# Sub-commands that run Lightning (its import adds a console handler of its own).
LIGHTNING_COMMANDS = ("train", "evaluate", "train-tokenizer", "demo", "ablate")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given, for result files
    configure_logging(args.verbose, lightning=args.command in LIGHTNING_COMMANDS)
    try:
        return int(args.func(args) or 0)
    except NarError as err:  # one line naming the file, key or value; 2 = fix the input, 1 = runtime failure
        logging.getLogger("nar").error("%s", err, exc_info=args.verbose)  # -v: where it was raised, too
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
