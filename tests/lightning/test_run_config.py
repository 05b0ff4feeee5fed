"""Run configs: every YAML loads; unknown keys and bad values fail at start-up naming the key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nar.config import load_config
from nar.errors import ConfigError
from nar.runs import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted(p for p in (ROOT / "experiments").glob("*/*.yaml") if p.parent.name in ("imagenet", "ucf101", "demo"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_experiment_yaml_loads(path: Path) -> None:
    paths = [path.with_name(path.name.replace("_smoke", ""))] if "_smoke" in path.name else []
    cfg = load_config(TrainConfig, [*paths, path])
    assert cfg.model.num_cells > 0 and cfg.model.seq_len > cfg.model.num_cells


def test_paper_recipe_of_nar_l() -> None:
    cfg = load_config(TrainConfig, [ROOT / "experiments/imagenet/nar_l.yaml"])
    assert (cfg.model.dim, cfg.model.n_layer, cfg.model.n_head) == (1024, 24, 16)
    assert cfg.optim.lr == 1e-4 and list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.weight_decay == 0.05
    assert cfg.optim.cond_dropout == 0.1 and cfg.optim.grad_clip == 1.0 and cfg.model.token_dropout == 0.1
    assert cfg.sampling.cfg_scale == 2.0 and cfg.eval.per_class == 50
    ucf = load_config(TrainConfig, [ROOT / "experiments/ucf101/nar_l.yaml"])
    assert ucf.model.grid == [4, 16, 16] and ucf.sampling.cfg_scale == 1.25
    # the official video recipe (NAR-videos train_larp_ar.sh): lr 6e-4, cosine to 0.01x, wd 0.05, no clip, no EMA
    assert (ucf.optim.lr, ucf.optim.schedule, ucf.optim.min_lr_ratio) == (6e-4, "cosine", 0.01)
    assert ucf.optim.weight_decay == 0.05 and ucf.optim.grad_clip == 0 and not ucf.ema.enabled
    # its `-b 32` is the global batch (LARP's base_trainer splits it over the GPUs): 9537 clips // 32 a 1000-epoch run
    assert ucf.data.global_batch == 32
    epoch = 9537 // ucf.data.global_batch
    assert (ucf.optim.warmup_steps, ucf.trainer.max_steps) == (4 * epoch, 1000 * epoch)
    xxl = load_config(TrainConfig, [ROOT / "experiments/imagenet/nar_xxl.yaml"])
    assert xxl.optim.schedule == "constant"  # train_c2i_fsdp.py, the XXL script, builds no scheduler
    t2i = load_config(TrainConfig, [ROOT / "experiments/t2i/nar_xl.yaml"])
    assert (t2i.sampling.cfg_scale, t2i.sampling.top_k) == (7.5, 0)  # the official sample_t2i.py defaults


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
    (["data.roott=0601"], "data.roott"),                  # unknown, with a value a str key would keep as text
    (["model=5"], "model"),
])
def test_errors_name_the_key(override: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TrainConfig, [], override)


@pytest.mark.parametrize("text, key", [("optim:\n  warmup: 10\n", "optim.warmup"), ("model: 5\n", "model"),
                                       ("optim:\n  betas: 5\n", "optim.betas")])
def test_yaml_error_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml.*'{key}'"):
        load_config(TrainConfig, [bad])


@pytest.mark.parametrize("text", ["2024_06_01", "0601", "12:30", "1e3", "no", "0x10", "1_0", "a: b", "[a]", "#1"])
def test_string_keys_keep_the_override_text(text: str) -> None:
    """YAML 1.1 would read these as numbers, booleans, lists or a comment and hand back other text."""
    cfg = load_config(TrainConfig, [], [f"name={text}", f"tokenizer.config={text}", f"eval.real_split={text}"])
    assert cfg.name == cfg.tokenizer.config == cfg.eval.real_split == text
    assert cfg.run_dir == Path(cfg.runs_root) / text


def test_override_quoting_interpolations_and_other_types_as_before() -> None:
    cfg = load_config(TrainConfig, [], ['name="0601"', "tokenizer.config='it''s'", "init_from=",
                                        "eval.real_split=${data.val_split}", "tokenizer.path=a${runs_root}b",
                                        "optim.lr=1e-3", "eval.metrics=[fid, kid]", "trainer.max_steps=0x10",
                                        "sampling.top_k=0601"])
    assert (cfg.name, cfg.tokenizer.config, cfg.init_from) == ("0601", "it's", "")
    assert (cfg.eval.real_split, cfg.tokenizer.path) == (cfg.data.val_split, f"a{cfg.runs_root}b")
    assert cfg.optim.lr == 1e-3 and cfg.eval.metrics == ["fid", "kid"]
    assert cfg.trainer.max_steps == 16 and cfg.sampling.top_k == 385  # non-string keys: YAML 1.1 as before
    later = load_config(TrainConfig, [], ["tokenizer={config: a}", "tokenizer.config=0601", "name=x", "name=y"])
    assert (later.tokenizer.config, later.name) == ("0601", "y")  # applied in order: the last one wins
    with pytest.raises(ConfigError, match=r"key 'name'.*nope"):
        load_config(TrainConfig, [], ["name=${nope}"])


@dataclass
class _Tagged:
    tag: str | None = "x"
    tags: dict[str, str] = field(default_factory=lambda: {"a": "b"})


@pytest.mark.parametrize("override, value", [("tag=null", None), ("tag=~", None), ("tag=", None), ("tag=0601", "0601"),
                                             ("tags.a=0601", "0601")])
def test_optional_string_keys_take_null_and_keep_other_text(override: str, value: str | None) -> None:
    cfg = load_config(_Tagged, [], [override])
    key, _, item = override.partition("=")[0].partition(".")
    assert (cfg.tags[item] if item else cfg.tag) == value


@pytest.mark.parametrize("override", ["eval.inception_weights=null", "name=~"])
def test_null_on_a_text_key_that_cannot_be_none_is_refused(override: str) -> None:
    """Not the text 'null' (which later read as 'file not found: null'): refused at start, naming the key."""
    with pytest.raises(ConfigError, match=f"key '{override.partition('=')[0]}'"):
        load_config(TrainConfig, [], [override])


def test_raster_override_gets_its_own_head_layout() -> None:
    cfg = load_config(TrainConfig, [ROOT / "experiments/demo/emoji.yaml"], ["model.mode=raster"])
    assert cfg.model.blocks_per_axis == [0] and cfg.model.axis_names == ("next",)


def test_cli_reports_bad_key(capsys) -> None:
    from nar.cli.main import main

    assert main(["train", "--config", str(ROOT / "experiments/demo/emoji.yaml"), "optim.lr=-1"]) == 2


def test_a_yaml_names_a_preset_and_overrides_fields_on_top(tmp_path: Path) -> None:
    from nar.model import NARConfig

    cfg = load_config(TrainConfig, [ROOT / "experiments/imagenet/nar_xl.yaml"])
    xl = NARConfig.from_name("NAR-XL")
    assert (cfg.model.dim, cfg.model.n_layer, cfg.model.n_head, cfg.model.preset) == (xl.dim, xl.n_layer, xl.n_head, "NAR-XL")
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  preset: NAR-L\n  n_layer: 3\n")
    cfg = load_config(TrainConfig, [mine], ["model.dim=512"])
    assert (cfg.model.dim, cfg.model.n_layer, cfg.model.n_head) == (512, 3, 16)  # the file's and the override's keys win
    with pytest.raises(ConfigError, match=r"model\.preset.*NAR-Q"):
        load_config(TrainConfig, [], ["model.preset=NAR-Q"])


def test_changing_grid_or_mode_re_derives_the_head_layout() -> None:
    cfg = load_config(TrainConfig, [], ["model.grid=[2,4,4]"])
    assert cfg.model.head_blocks is None and cfg.model.blocks_per_axis == [2, 1, 0]


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: [1\n", r"bad\.yaml: line \d+, column \d+ YAML syntax error"),
    ("- a\n- b\n", r"bad\.yaml: the top level must be a mapping"),
])
def test_malformed_yaml_is_named(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, [bad])


def test_packaged_configs_resolve_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # away from the checkout: the package data answers
    assert load_config(TrainConfig, ["demo/emoji"]).name == load_config(TrainConfig, ["experiments/demo/emoji.yaml"]).name


def test_limit_val_samples_is_a_total_over_processes_in_whole_batches():
    """data.limit_val_samples is split over the processes and rounded down to whole batches each, so no run validates
    on more samples than asked (one batch each at least). The run's DataModule holds just those samples
    (tests/lightning/test_run_data.py)."""
    from nar.runs.config import DataSection, val_samples

    data = DataSection(root="x", batch_size=8, eval_batch_size=64, limit_val_samples=10000)
    for world in (1, 2, 8, 64):
        total = val_samples(data, world)
        assert total % (64 * world) == 0 and total <= 10000 < total + 64 * world
    assert val_samples(DataSection(root="x", batch_size=8, limit_val_samples=3), 2) == 16  # one batch each, the least
    assert val_samples(DataSection(root="x", batch_size=8)) is None  # the whole split


def test_positive_int_is_an_argparse_usage_error_naming_the_option(capsys) -> None:
    import argparse

    from nar.config import positive_int

    parser = argparse.ArgumentParser(prog="nar")
    parser.add_argument("--shard-size", type=positive_int)
    assert parser.parse_args(["--shard-size", "3"]).shard_size == 3
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--shard-size", bad])
        assert exit_.value.code == 2 and "argument --shard-size" in capsys.readouterr().err


def test_generator_config_reads_the_data_facts_of_a_text_root(tmp_path: Path, monkeypatch) -> None:
    """The pre-pass that finds data.root's meta.json types overrides as the real pass does: data.root=0601 is the
    folder '0601', not 385 (YAML 1.1 octal), so its grid and vocabulary reach the config."""
    import json

    from nar.workflows.train import generator_config

    grid, vocab = [3, 5], 64
    (tmp_path / "0601").mkdir()
    (tmp_path / "0601" / "meta.json").write_text(json.dumps({"kind": "tokens", "splits": {}, "grid": grid,
                                                             "codebook_size": vocab}))
    monkeypatch.chdir(tmp_path)
    cfg = generator_config([], ["data.root=0601", "name=no", "model.preset=NAR-tiny"])
    assert (cfg.data.root, cfg.name) == ("0601", "no")
    assert cfg.model.grid == grid and cfg.model.vocab_size == vocab


def test_tokenizer_runs_take_a_global_batch_as_generator_runs_do(caplog) -> None:
    """data.global_batch splits over the processes for tokenizer runs too (LlamaGen's --global-batch-size): the same
    divisibility error, the same warning for a data.batch_size of its own, none for a stored config read back."""
    from nar.config import from_dict, to_dict
    from nar.runs import TokenizerRunConfig

    for devices, nodes in ((8, 1), (2, 2), (1, 1)):
        cfg = load_config(TokenizerRunConfig, [], ["data.global_batch=64", f"trainer.devices={devices}",
                                                   f"trainer.num_nodes={nodes}"])
        assert cfg.data.batch_size * devices * nodes == 64
    with pytest.raises(ConfigError, match=r"data\.global_batch.*not divisible.*trainer\.devices"):
        load_config(TokenizerRunConfig, [], ["data.global_batch=64", "trainer.devices=3"])
    with pytest.raises(ConfigError, match=r"data\.global_batch"):
        load_config(TokenizerRunConfig, [], ["data.global_batch=0"])
    with caplog.at_level("WARNING", logger="nar.runs.config"):
        cfg = load_config(TokenizerRunConfig, [], ["data.global_batch=64", "trainer.devices=4"])
        assert from_dict(TokenizerRunConfig, to_dict(cfg)).data.batch_size == 16
        assert load_config(TokenizerRunConfig, [], ["data.batch_size=5"]).data.batch_size == 5  # no global_batch
    assert "data.batch_size" not in caplog.text
    with caplog.at_level("WARNING", logger="nar.runs.config"):
        cfg = load_config(TokenizerRunConfig, [], ["data.global_batch=64", "data.batch_size=5", "trainer.devices=4"])
    assert cfg.data.batch_size == 16 and re.search(r"data\.batch_size.*5 is ignored.*data\.global_batch", caplog.text)
    assert "trainer.accumulate" not in caplog.text  # tokenizer runs refuse accumulation: not offered as a remedy


@pytest.mark.parametrize("schema", ["TrainConfig", "TokenizerRunConfig"])
@pytest.mark.parametrize("old, replacement", [("trainer.out", "runs_root and name"),
                                              ("trainer.cpu_threads", "trainer.threads"),
                                              ("trainer.limit_val_batches", "data.limit_val_samples")])
def test_a_removed_key_is_refused_naming_what_replaced_it(tmp_path: Path, schema: str, old: str,
                                                          replacement: str) -> None:
    from nar.runs import config as run_config
    cls = getattr(run_config, schema)
    section, name = old.split(".")
    yaml_file = tmp_path / "old.yaml"
    yaml_file.write_text(f"{section}:\n  {name}: 2\n")
    for kwargs in ({"overrides": [f"{old}=2"]}, {"yaml_paths": [yaml_file]}):
        with pytest.raises(ConfigError, match=rf"key '{re.escape(old)}'.*it was removed: .*{re.escape(replacement)}"):
            load_config(cls, **kwargs)
    # the replacement is a key the schema takes, and an unknown key is still refused as before, with no hint
    with pytest.raises(ConfigError, match=r"key 'trainer.bogus': Key 'bogus' not in 'TrainerConfig'$"):
        load_config(cls, overrides=["trainer.bogus=2"])


@pytest.mark.parametrize("text, key, lines", [
    ("optim:\n  lr: 1.0e-3\noptim:\n  weight_decay: 0.1\n", "optim", (1, 3)),  # the first section's lr was lost
    ("optim:\n  lr: 1.0e-3\n  eps: 1.0e-6\n  lr: 2.0e-3\n", "lr", (2, 4)),
    ("model:\n  grid: [4, 4]\ndata:\n  root: a\n  root: b\n", "root", (4, 5)),
])
def test_a_key_twice_in_one_yaml_mapping_is_refused_naming_file_key_and_both_lines(tmp_path: Path, text: str,
                                                                                  key: str, lines: tuple) -> None:
    """YAML would keep the later value and drop the earlier one without a word."""
    dup = tmp_path / "dup.yaml"
    dup.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup\.yaml: key '{key}' appears twice.*lines {lines[0]} and {lines[1]}"):
        load_config(TrainConfig, [dup])


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    """A key a ``<<`` merge brings in may be set again beside it: that is what merge keys are for."""
    import yaml
    from omegaconf import OmegaConf

    from nar.config import read_yaml

    shared = tmp_path / "shared.yaml"
    shared.write_text("eval:\n  <<: &common {seed: 3, batch_size: 2}\n  batch_size: 8\n"
                      "data:\n  <<: *common\n  batch_size: 4\n  root: &root /d\ntokenizer:\n  path: *root\n")
    cfg = load_config(TrainConfig, [shared])
    assert (cfg.eval.seed, cfg.eval.batch_size, cfg.data.seed, cfg.data.batch_size) == (3, 8, 3, 4)
    assert cfg.tokenizer.path == cfg.data.root == "/d"
    # a mapping merged into the top level before its own turn, whose own key overrides what it merged
    nested = tmp_path / "nested.yaml"
    text = "a: &a {x: 1, y: 1}\nb: &b\n  <<: *a\n  x: 2\n<<: [*b]\nz: [*a, *b]\n"
    nested.write_text(text)
    data = read_yaml(nested)
    assert (data.b.x, data.b.y, data.z[1].x) == (2, 1, 2)
    assert OmegaConf.to_container(data) == yaml.safe_load(text)  # PyYAML's own reading, to the letter


def test_an_unset_environment_variable_in_data_root_names_the_key(tmp_path: Path, monkeypatch) -> None:
    """The pre-pass that looks for data.root's meta.json refuses it as the real pass refuses any other key."""
    from nar.workflows.train import generator_config

    monkeypatch.delenv("NAR_TEST_UNSET_DATA", raising=False)
    env = tmp_path / "env.yaml"
    env.write_text("data:\n  root: ${oc.env:NAR_TEST_UNSET_DATA}\n")
    for yamls, overrides in (([env], []), ([], ["data.root=${oc.env:NAR_TEST_UNSET_DATA}"])):
        with pytest.raises(ConfigError, match=r"key 'data\.root': cannot resolve.*NAR_TEST_UNSET_DATA"):
            generator_config(yamls, overrides)


def _float_keys(schema: type, path: str = "") -> list[tuple[str, bool]]:
    """``(key, is a list)`` of every float field of ``schema``, nested sections included."""
    import dataclasses
    import typing

    from nar.config import _dataclass_of

    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{path}.{f.name}" if path else f.name
        hint = hints[f.name]
        section = _dataclass_of(hint)
        if section is not None:
            out += _float_keys(section, key)
        elif typing.get_origin(hint) is list:
            if typing.get_args(hint) == (float,):
                out.append((key, True))
        elif float in (hint, *typing.get_args(hint)):  # float, float | None
            out.append((key, False))
    return out


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.lr=inf", "optim.weight_decay=.nan", "optim.eps=.nan",
                                      "optim.grad_clip=.nan", "optim.grad_clip=-.inf", "model.rope_base=.inf",
                                      "optim.betas=[0.9,.nan]"])
def test_non_finite_values_are_refused_naming_the_key(override: str) -> None:
    """NaN passes every `value < minimum` check; the run then stopped much later on a 'non-finite training loss'."""
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}': must be a finite number"):
        load_config(TrainConfig, [], [override])


@pytest.mark.parametrize("schema", ["TrainConfig", "TokenizerRunConfig"])
def test_every_float_key_refuses_nan_and_inf(schema: str) -> None:
    from nar.runs import config as run_config

    cls = getattr(run_config, schema)
    keys = _float_keys(cls)
    assert len(keys) > 10
    for key, is_list in keys:
        for bad in (".nan", ".inf", "-.inf"):
            with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}': must be a finite number"):
                load_config(cls, [], [f"{key}=[{bad}]" if is_list else f"{key}={bad}"])


def test_a_range_error_names_the_file_or_override_that_set_the_key(tmp_path: Path) -> None:
    first, neg, other = tmp_path / "a.yaml", tmp_path / "neg.yaml", tmp_path / "other.yaml"
    first.write_text("optim:\n  lr: 1.0e-3\n")
    neg.write_text("optim:\n  lr: -1.0e-3\n")
    other.write_text("optim:\n  eps: 1.0e-6\n")
    with pytest.raises(ConfigError, match=r"key 'optim\.lr': must be > 0, got -0\.001 \(set in .*neg\.yaml\)$"):
        load_config(TrainConfig, [first, neg, other])  # the last file that set it, not the last file
    with pytest.raises(ConfigError, match=r"key 'optim\.lr': must be > 0, got -1\.0 \(set by the override "
                                          r"'optim\.lr=-1'\)$") as err:
        load_config(TrainConfig, [neg], ["optim.lr=-1", "optim.eps=1e-6"])
    assert err.value.key == "optim.lr"
    with pytest.raises(ConfigError, match=r"key 'model\.grid': .*set by the override 'model=\{grid: \[0, 4\]\}'"):
        load_config(TrainConfig, [], ["model={grid: [0, 4]}"])
    with pytest.raises(ConfigError, match=r"key 'data\.batch_size': must be >= 1, got 0$"):
        load_config(TrainConfig, [other], [], [{"data": {"batch_size": 0}}])  # a stored config: no file to name
