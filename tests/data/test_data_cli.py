"""`nar data …` command line: every sub-command's --help shows its defaults (an option defaulting to
None says in its help what unset means); options reach the writers and readers as meant."""

from __future__ import annotations

import argparse

import pytest
from PIL import Image

from nar.cli import data as data_cli
from nar.data.encode import encode_png
from nar.errors import ConfigError, DataError


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
        if (not action.option_strings or action.default is False or action.default == argparse.SUPPRESS
                or action.required or isinstance(action, argparse._StoreFalseAction)):
            continue  # switches are off unless given (--no-decode too: its True is the setting it turns off)
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


def test_classes_file_keeps_whole_names(tmp_path):
    """``index --classes``: one class name per line with its spaces kept; only a ``LOC_synset_mapping.txt`` line
    (a wnid, then its names) is cut to the wnid."""
    import io
    import json
    import tarfile

    from nar_data_testutil import run_data_cli

    names = ["golden retriever", "great white shark", "n01440764", "  padded  "]
    with tarfile.open(tmp_path / "train-0000.tar", "w") as tar:
        for i in range(len(names)):
            for ext, data in (("png", encode_png(Image.new("RGB", (4, 4)))), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n\n")
    assert run_data_cli(["data", "index", str(tmp_path / "train-0000.tar"), "--out", str(tmp_path / "idx"),
                         "--classes", str(tmp_path / "classes.txt")]) == 0
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["classes"] == [n.strip() for n in names]
    (tmp_path / "map.txt").write_text("n01440764 tench, Tinca tinca\nn01443537\tgoldfish, Carassius auratus\n")
    assert data_cli.read_class_file(tmp_path / "map.txt") == ["n01440764", "n01443537"]
    with pytest.raises(DataError, match=f"--classes {tmp_path / 'none.txt'}: cannot read"):
        data_cli.read_class_file(tmp_path / "none.txt")


def test_bench_read_image_size_on_tokens(tmp_path):
    """``bench-read --image-size`` on a token dataset (no image size to crop to) is a ConfigError naming the
    option and the folder, not a TypeError from the token config."""
    import numpy as np

    from nar.data.official import import_codes

    codes = tmp_path / "codes"
    for sub in ("imagenet8_codes", "imagenet8_labels"):
        (codes / sub).mkdir(parents=True)
    for i in range(4):
        np.save(codes / "imagenet8_codes" / f"{i}.npy", np.zeros((1, 1, 4), dtype=np.int64))
        np.save(codes / "imagenet8_labels" / f"{i}.npy", np.array([i % 2]))
    import_codes(codes, tmp_path / "tok", codebook_size=8)
    argv = ["data", "bench-read", str(tmp_path / "tok"), "--workers", "0", "--batch-size", "2", "--batches", "1"]
    parser = argparse.ArgumentParser(prog="nar")
    data_cli.register(parser.add_subparsers(dest="command"))
    with pytest.raises(ConfigError, match=f"--image-size 8: {tmp_path / 'tok'} is a token dataset"):
        data_cli.run_bench_read(parser.parse_args([*argv, "--image-size", "8"]))


@pytest.mark.parametrize("where", ["same", "parent"])
def test_out_that_is_or_holds_the_source_is_refused_before_anything_is_deleted(tmp_path, where):
    """``nar data tokens SRC --out SRC --overwrite`` (or ``--out`` a folder holding SRC) emptied the source dataset
    and only then failed; now it is refused, naming --out, and the source stays as it was."""
    from nar_data_testutil import run_data_cli

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(raw / f"{i}.png")
        (raw / f"{i}.txt").write_text(f"caption {i}")
    src = tmp_path / "imgs"
    assert run_data_cli(["data", "pairs", str(raw), "--out", str(src), "--val-fraction", "0"]) == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = src if where == "same" else tmp_path
    for extra in ([], ["--overwrite"]):
        with pytest.raises(ConfigError, match="--out.*(is|holds) the source"):
            data_cli.run_tokens(_data_parsers()["tokens"].parse_args(
                [str(src), "--out", str(out), "--tokenizer", "vq-tiny-emoji", "--device", "cpu", *extra]))
    with pytest.raises(ConfigError, match="--out.*the source"):  # pairs: --out over its own image folder
        data_cli.run_pairs(_data_parsers()["pairs"].parse_args([str(raw), "--out", str(raw), "--overwrite"]))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("argv", [
    ["pairs", "src", "--out", "o", "--shard-size", "0"],
    ["import-codes", "codes", "--out", "o", "--limit", "0"],
    ["import-codes", "codes", "--out", "o", "--limit", "-1"],
    ["ucf101", "videos", "--out", "o", "--limit", "0"],
    ["verify", "path", "--limit", "0"],
    ["imagenet", "src", "--out", "o", "--workers", "0"],
])
def test_counts_below_one_are_usage_errors(argv, capsys):
    """--shard-size 0 ended in a traceback; import-codes --limit 0 or -1 wrote an empty dataset and exited 0."""
    with pytest.raises(SystemExit) as stop:
        _data_parsers()[argv[0]].parse_args(argv[1:])
    assert stop.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_a_bad_val_fraction_fails_before_out_is_made(tmp_path):
    with pytest.raises(ConfigError, match="--val-fraction"):
        data_cli.run_pairs(_data_parsers()["pairs"].parse_args([str(tmp_path), "--out", str(tmp_path / "o"),
                                                                 "--val-fraction", "1.5"]))
    assert not (tmp_path / "o").exists()


def test_tokens_clean_captions_reaches_the_text_encoder(monkeypatch):
    """`nar data tokens --clean-captions official` builds the text encoder with that cleaning (extraction records
    it from the encoder); by default captions are encoded as written."""
    import nar.text

    built = []
    monkeypatch.setattr(nar.text, "TextEncoder", lambda cfg: built.append(cfg) or cfg)
    parser = _data_parsers()["tokens"]
    base = ["src", "--out", "o", "--tokenizer", "t", "--text-encoder", "t5", "--text-encoder-path", "/m"]
    assert parser.parse_args(base).clean_captions == "none"
    args = parser.parse_args([*base, "--clean-captions", "official"])
    data_cli._text_encoder_on(args.text_encoder, args.text_encoder_path, args.caption_len, "cpu", args.clean_captions)
    assert built[0].clean_captions == "official" and built[0].kind == "t5"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--clean-captions", "lower"])
