"""End to end through ``nar train-tokenizer``'s code path on a few real (embedded) Atari clips."""

from __future__ import annotations

import pytest
import torch

from nar.errors import ConfigError
from nar.lightning.data import tokenizer_datamodule
from nar.tokenizers import load_tokenizer
from nar.workflows.tokenizer import tokenizer_config, train_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def atari_clips(tmp_path_factory):
    from nar.data.embedded.atari import GAMES, build_atari

    root = tmp_path_factory.mktemp("atari")
    build_atari(root, games=GAMES[:2], clips_per_game=2, val_clips_per_game=1, frames=4, size=16)
    return root


def tiny_overrides(out) -> list[str]:
    return [f"runs_root={out.parent}", f"name={out.name}", "trainer.max_steps=2", "trainer.val_every=2",
            "trainer.accelerator=cpu", "data.limit_val_samples=2",
            "trainer.threads=1", "data.num_workers=0", "data.batch_size=2", "data.eval_batch_size=2",
            "val.rfid=false", "model.num_frames=4", "model.image_size=16", "model.temporal_downsample=[true,false]"]


def test_video_tokenizer_trains_and_saves(atari_clips, tmp_path):
    cfg = tokenizer_config("atari", overrides=tiny_overrides(tmp_path / "run"), root=str(atari_clips))
    assert train_tokenizer(cfg) == tmp_path / "run" / "tokenizer.pt"
    tokenizer = load_tokenizer(tmp_path / "run" / "tokenizer.pt")
    assert tokenizer.config.grid == (2, 4, 4)
    clip = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    assert tokenizer.encode(clip).shape == (1, 2, 4, 4)
    assert load_tokenizer(tmp_path / "run" / "checkpoints" / "last.ckpt").config == tokenizer.config


def test_clip_length_mismatch_fails_at_start_up(atari_clips, tmp_path):
    overrides = [o for o in tiny_overrides(tmp_path / "run") if not o.startswith("model.num_frames")]
    cfg = tokenizer_config("atari", overrides=[*overrides, "model.num_frames=8"], root=str(atari_clips))
    with pytest.raises(ConfigError, match=r"model\.num_frames': 8 but the clips .* have 4 frames"):
        tokenizer_datamodule(cfg)
