"""`nar evaluate` reads official NAR checkpoints directly (the conformance fixture's c2i model and VQ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nar.config import load_config
from nar.runs import TrainConfig
from nar.workflows.train import evaluate


def test_evaluate_official_checkpoint(conformance: dict, tmp_path: Path) -> None:
    c2i, vq = conformance["c2i"], conformance["vq"]
    gen_path, vq_path = tmp_path / "nar_official.pt", tmp_path / "vq_official.pt"
    torch.save(c2i["checkpoint"], gen_path)
    torch.save(vq["checkpoint"], vq_path)
    c = c2i["config"]
    grid = list(c["grid"]) if isinstance(c["grid"], (list, tuple)) else [c["grid"], c["grid"]]
    cfg = load_config(TrainConfig, [], [
        f"model.dim={c['dim']}", f"model.n_layer={c['n_layer']}", f"model.n_head={c['n_head']}",
        f"model.vocab_size={c['vocab_size']}", f"model.grid=[{grid[0]},{grid[1]}]",
        f"model.num_classes={c['num_classes']}", f"model.multiple_of={c['multiple_of']}",
        f"tokenizer.path={vq_path}", f"runs_root={tmp_path}", "name=official", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "eval.metrics=[]", "eval.batch_size=4", "sampling.cfg_scale=2.0"])
    results = evaluate(cfg, gen_path, num_samples=8, enable_progress_bar=False)
    # one pass per frontier (h + w - 1), as many as the official decoder made (its recorded steps)
    assert results["scores"]["val/forward_passes"] == len(c2i["decode_steps"])
    out = tmp_path / "official" / "eval" / "nar_official-8"  # beside the run's outputs, never over them
    assert (out / "samples" / "latest.png").is_file() and not (tmp_path / "official" / "samples").exists()
    with np.load(out / "samples_8.npz") as data:  # the ADM evaluator's input
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape[0] == 8 and data["arr_0"].shape[-1] == 3
    assert results["num_samples"] == 8
