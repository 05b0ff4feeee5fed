"""The command line's surface: help that states defaults, one log line per event, exit codes."""

from __future__ import annotations

import argparse
import logging

import pytest

from nar.cli.main import _every_parser, build_parser
from nar.logconfig import configure_logging


def _options(parser: argparse.ArgumentParser):
    for p in _every_parser(parser):
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield p, action


def test_every_help_states_its_defaults() -> None:
    missing = []
    for p, action in _options(build_parser()):
        if action.default is None or action.default is False or action.default in ([], "", argparse.SUPPRESS):
            continue
        text = p.formatter_class(prog=p.prog)._get_help_string(action) or ""
        if "default" not in text:
            missing.append(f"{p.prog} {action.option_strings[0]}")
    assert not missing, f"options whose --help does not state the default: {missing}"


def test_lightning_logs_once_through_our_format(capsys) -> None:
    configure_logging(lightning=True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        assert not logger.handlers and logger.propagate, name


@pytest.mark.parametrize("argv, code", [
    (["train", "optim.lr=-1"], 2),                                   # a bad value: the user's to fix
    (["sample", "--ckpt", "/nonexistent.ckpt", "--out", "x"], 2),   # a missing input file
])
def test_usage_errors_exit_2(argv, code, capsys) -> None:
    from nar.cli.main import main

    assert main(argv) == code
