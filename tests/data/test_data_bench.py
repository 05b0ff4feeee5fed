"""`nar bench-data`: our reader and a plain webdataset pipeline read the same JPEG shards, side by side."""

from __future__ import annotations

import json

from nar.data.bench import compare_readers, write_synthetic


def test_compare_readers_and_the_written_results(tmp_path, capsys):
    root = write_synthetic(tmp_path / "jpegs", images=6, shard_size=4)
    result = compare_readers(root, images=6, crop=32, rounds=2)
    assert [r.first for r in result.rounds] == ["ours", "plain"] and result.ours > 0 and result.plain > 0
    assert result.ratio == result.ours / result.plain

    from nar.cli.main import main

    out = tmp_path / "results"
    assert main(["bench-data", "--synthetic", "6", "--synthetic-dir", str(root), "--images", "4", "--rounds", "1",
                 "--crop", "32", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["machine"]["webdataset"] and len(report["rounds"]) == 1 and report["ratio_ours_over_plain"] > 0
    assert "Target: ours ≥ 0.9 × plain" in (out / "README.md").read_text() and "| **median** |" in capsys.readouterr().out


def test_the_recorded_command_is_the_one_given_to_main(tmp_path, monkeypatch):
    """As `nar bench`: the command comes from main's argv (tests, notebooks, scripts), not from sys.argv."""
    import sys

    from nar.cli.main import main

    monkeypatch.setattr(sys, "argv", ["pytest", "-q"])
    out = tmp_path / "results"
    argv = ["bench-data", "--synthetic", "4", "--synthetic-dir", str(tmp_path / "jpegs"), "--images", "2",
            "--rounds", "1", "--crop", "32", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["command"] == "nar " + " ".join(argv)
    assert report["command"] in (out / "README.md").read_text()


def test_zero_rounds_or_images_name_the_flag(tmp_path, capsys):
    """--rounds 0 / --images 0 had no median to take or divided by zero after the warm-up: argparse's usage error
    (exit 2, naming the flag) before any synthetic JPEG is written."""
    import pytest

    from nar.cli.main import main
    from nar.errors import ConfigError

    for flag in ("--rounds", "--images", "--synthetic"):
        out = tmp_path / flag.strip("-")
        with pytest.raises(SystemExit) as stop:
            main(["bench-data", "--synthetic-dir", str(tmp_path / "jpegs"), flag, "0", "--out", str(out)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"argument {flag}: must be >= 1, got 0" in err, err
        assert not out.exists() and not (tmp_path / "jpegs").exists()
    root = write_synthetic(tmp_path / "jpegs", images=2, shard_size=2)
    for key in ("rounds", "images"):
        with pytest.raises(ConfigError, match=f"{key}.*got 0"):
            compare_readers(root, crop=32, **{"rounds": 1, "images": 2, key: 0})
