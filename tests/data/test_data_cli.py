"""`nar data …` command line: every sub-command's --help shows its defaults (an option defaulting to
None says in its help what unset means)."""

from __future__ import annotations

import argparse

import pytest

from nar.cli import data as data_cli


def _data_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="nar")
    data_cli.register(parser.add_subparsers(dest="command"))
    data = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    return next(a for a in data._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("name", ["imagenet", "ucf101", "pairs", "tokens", "embedded", "verify", "bench-read", "index",
                                  "import-codes"])
def test_every_option_shows_its_default(name):
    parser = _data_parsers()[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.default is False or action.default == argparse.SUPPRESS or action.required:
            continue  # switches are off unless given
        shown = (formatter._get_help_string(action) or "") % {"default": action.default}
        assert "default" in shown, f"nar data {name} {action.option_strings[0]}: no default in --help ({shown!r})"


def test_tokens_help_names_the_official_recipe_and_flip_is_opt_in():
    parser = _data_parsers()["tokens"]
    text = " ".join(parser.format_help().split())
    assert "--ten-crop --flip" in text and "(default: the tokenizer's image_size" in text
    args = parser.parse_args(["src", "--out", "o", "--tokenizer", "t"])
    assert args.flip is False and args.image_size is None
    pairs = _data_parsers()["pairs"].parse_args(["src", "--out", "o"])
    assert pairs.val_fraction == 0.05


def test_import_codes_help_states_the_codebook_default():
    text = " ".join(_data_parsers()["import-codes"].format_help().split())
    assert "16384 is LlamaGen's VQ-16" in text and "(default: 16384)" in text
