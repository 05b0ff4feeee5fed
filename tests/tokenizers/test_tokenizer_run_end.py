"""How ``nar train-tokenizer`` ends, resumes and refuses: a checkpoint and a validation of the last step (also
when a signal cuts that validation short), a resume into another shape refused by name, a --root without data."""

from __future__ import annotations

import signal

import pytest

from nar.errors import ConfigError, RunInterrupted
from nar.lightning.tokenizer_module import TokenizerModule
from nar.runs.folder import intact_checkpoints, resume_checkpoint
from nar.workflows.tokenizer import tokenizer_config, train_tokenizer


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    from nar.data.embedded import build_embedded

    out = tmp_path_factory.mktemp("emoji")
    build_embedded(out, only=["emoji"], options={"emoji": {"size": 16, "limit": 30}})
    return out / "emoji"


def overrides(runs, name="t", **extra) -> list[str]:
    base = {"runs_root": runs, "name": name, "trainer.max_steps": 3, "trainer.ckpt_every": 2, "trainer.val_every": 0,
            "trainer.accelerator": "cpu", "trainer.threads": 1, "data.num_workers": 0, "data.batch_size": 2,
            "data.eval_batch_size": 2, "data.limit_val_samples": 4, "val.rfid": "false", "val.log_samples": 0,
            "loss.perceptual_weight": 0, "model.base_channels": 16, "model.encoder_ch_mult": "[1,2]",
            "model.decoder_ch_mult": "[1,2]", "model.num_res_blocks": 1, "model.z_channels": 8,
            "model.codebook_size": 32, "model.codebook_embed_dim": 4, "model.norm_groups": 8, "model.image_size": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def validations(monkeypatch):
    """The steps at which TokenizerModule validated (one entry per validation)."""
    steps: list[int] = []
    original = TokenizerModule.validation_step

    def step(self, batch, batch_idx):
        if batch_idx == 0:
            steps.append(self.global_step)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TokenizerModule, "validation_step", step)
    return steps


@pytest.mark.parametrize(("val_every", "expected"), [(0, [3]), (3, [3])])
def test_the_last_step_is_checkpointed_and_validated_once(emoji, tmp_path, validations, val_every, expected):
    cfg = tokenizer_config("emoji", overrides=overrides(tmp_path, **{"trainer.val_every": val_every}), root=str(emoji))
    assert train_tokenizer(cfg, enable_progress_bar=False) == tmp_path / "t" / "tokenizer.pt"
    assert {c.path.name: c.step for c in intact_checkpoints(tmp_path / "t")[0]} == {"step_0000002.ckpt": 2,
                                                                                    "last.ckpt": 3}
    assert resume_checkpoint(tmp_path / "t").step == 3
    assert validations == expected  # val_every=0: only at the end; val_every=3: the end already validated


def test_a_signal_during_the_final_validation_is_an_interruption(emoji, tmp_path, validations, monkeypatch):
    cfg = tokenizer_config("emoji", overrides=overrides(tmp_path), root=str(emoji))
    original = TokenizerModule.validation_step

    def terminated(self, batch, batch_idx):
        if batch_idx == 0:
            signal.raise_signal(signal.SIGTERM)  # Lightning's handler notes it; the validation stops at its next batch
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TokenizerModule, "validation_step", terminated)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # whatever happens, never this pytest process
    try:
        with pytest.raises(RunInterrupted, match=r"SIGTERM during a validation at step 3; checkpoint .*last\.ckpt; "
                                                 r"continue with --resume"):
            train_tokenizer(cfg, enable_progress_bar=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not (tmp_path / "t" / "tokenizer.pt").exists()
    assert resume_checkpoint(tmp_path / "t").step == 3
    monkeypatch.undo()
    validations.clear()
    monkeypatch.setattr(TokenizerModule, "validation_step", lambda self, b, i: validations.append(i) or original(self, b, i))
    assert train_tokenizer(cfg, resume=True, enable_progress_bar=False) == tmp_path / "t" / "tokenizer.pt"
    assert validations  # --resume validated the last step again


def test_resume_into_another_shape_names_the_keys(emoji, tmp_path):
    cfg = tokenizer_config("emoji", overrides=overrides(tmp_path, **{"trainer.max_steps": 1}), root=str(emoji))
    train_tokenizer(cfg, enable_progress_bar=False)
    (tmp_path / "t" / "tokenizer.pt").unlink()
    other = tokenizer_config("emoji", overrides=overrides(tmp_path, **{"trainer.max_steps": 2, "model.codebook_size": 64,
                                                                       "model.z_channels": 4}), root=str(emoji))
    with pytest.raises(ConfigError, match=r"--resume: .*last\.ckpt was trained with model\.z_channels=8 \(config: 4\), "
                                          r"model\.codebook_size=32 \(config: 64\)"):
        train_tokenizer(other, resume=True, enable_progress_bar=False)
    assert not (tmp_path / "t" / "tokenizer.pt").exists() and resume_checkpoint(tmp_path / "t").step == 1
    # what may change on a resume (the step budget, the data's size) still resumes
    longer = tokenizer_config("emoji", overrides=overrides(tmp_path, **{"trainer.max_steps": 2}), root=str(emoji))
    assert train_tokenizer(longer, resume=True, enable_progress_bar=False).is_file()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_root_without_meta_json_is_named(tmp_path, make):
    root = tmp_path / "shards"
    if make == "empty":
        root.mkdir()
    with pytest.raises(ConfigError, match=rf"--root {root}: {root}/meta\.json not found"):
        tokenizer_config(root=str(root))
