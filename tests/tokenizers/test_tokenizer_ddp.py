"""Two-process DDP (gloo, CPU) with the PatchGAN on: the discriminator stays identical across ranks."""

from __future__ import annotations

import pytest
import torch
from tokenizer_helpers import tiny_image
from torch.utils.data import DataLoader, TensorDataset

import lightning as L
from nar.lightning.tokenizer_module import TokenizerModule
from nar.tokenizers import TokenizerLossConfig, TokenizerValConfig

pytestmark = pytest.mark.slow


class RanksAgree(L.Callback):
    """Fails the run if any parameter (tokenizer or discriminator) differs between ranks."""

    def on_train_end(self, trainer, module) -> None:
        flat = torch.cat([p.detach().flatten() for p in module.parameters()])
        gathered = module.all_gather(flat)  # [world, N]
        if not torch.equal(gathered[0], gathered[1]):
            raise AssertionError("parameters diverged between ranks")


def test_ddp_gan_parameters_stay_in_sync(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(16, 3, 16, 16) * 2 - 1
    loss = TokenizerLossConfig(adversarial_weight=0.5, adversarial_start_step=0, disc_layers=1)
    module = TokenizerModule(tiny_image(), loss=loss, val=TokenizerValConfig(rfid=False, log_samples=0))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true",
                        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[RanksAgree()])
    trainer.fit(module, DataLoader(TensorDataset(images), batch_size=4))
