"""Run configs: every YAML loads; unknown keys and bad values fail at start-up naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nar.errors import ConfigError
from nar.lightning.config import load_train_config

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted(p for p in (ROOT / "experiments").glob("*/*.yaml") if p.parent.name in ("imagenet", "ucf101", "demo"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_experiment_yaml_loads(path: Path) -> None:
    paths = [path.with_name(path.name.replace("_smoke", ""))] if "_smoke" in path.name else []
    cfg = load_train_config([*paths, path])
    assert cfg.model.num_cells > 0 and cfg.model.seq_len > cfg.model.num_cells


def test_paper_recipe_of_nar_l() -> None:
    cfg = load_train_config([ROOT / "experiments/imagenet/nar_l.yaml"])
    assert (cfg.model.dim, cfg.model.n_layer, cfg.model.n_head) == (1024, 24, 16)
    assert cfg.optim.lr == 1e-4 and list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.weight_decay == 0.05
    assert cfg.optim.cond_dropout == 0.1 and cfg.optim.grad_clip == 1.0 and cfg.model.token_dropout == 0.1
    assert cfg.sampling.cfg_scale == 2.0 and cfg.eval.per_class == 50
    ucf = load_train_config([ROOT / "experiments/ucf101/nar_l.yaml"])
    assert ucf.model.grid == [4, 16, 16] and ucf.sampling.cfg_scale == 1.25


@pytest.mark.parametrize("override, key", [
    (["optim.lrr=1"], "optim.lrr"),                       # unknown key
    (["bogus=1"], "bogus"),
    (["model.dim=abc"], "model.dim"),                     # wrong type
    (["optim.lr=-1"], "optim.lr"),                        # out of range
    (["trainer.strategy=horovod"], "trainer.strategy"),
    (["model.mode=diffusion"], "model.mode"),
    (["model.grid=[0,4]"], "model.grid"),
    (["sampling.top_p=2"], "sampling.top_p"),
    (["eval.metrics=[fidd]"], "eval.metrics"),
    (["data.batch_size=0"], "data.batch_size"),
])
def test_errors_name_the_key(override: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config([], override)


def test_yaml_error_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  warmup: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.warmup"):
        load_train_config([bad])


def test_raster_override_gets_its_own_head_layout() -> None:
    cfg = load_train_config([ROOT / "experiments/demo/emoji.yaml"], ["model.mode=raster"])
    assert cfg.model.head_blocks == [0] and cfg.model.axis_names == ("next",)


def test_cli_reports_bad_key(capsys) -> None:
    from nar.cli.main import main

    assert main(["train", "--config", str(ROOT / "experiments/demo/emoji.yaml"), "optim.lr=-1"]) == 2
