"""``nar evaluate``'s chunk folder holds one evaluation's samples only: a rerun reads chunks back only when the
checkpoint, tokenizer, sampler, model config, decoded shape and seed scheme are those that made them (folders of
the older ``eval.seed + c`` scheme are refused); neighbouring ``eval.seed`` share no chunk; the real images are
sized to the decoded samples, not to the tokenizer's training size; ``results.json`` says how the samples were
made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_streaming_eval import class_sorted_shards, evaluate_args, save_generator

from nar.config import load_config
from nar.errors import ConfigError
from nar.lightning.generation import chunk_path
from nar.runs import TrainConfig

N, BATCH = 12, 4  # 3 chunks; 4 classes: every chunk holds the labels 0-3 (balanced)


@pytest.fixture(scope="module")
def ckpt(tokenizer_file, tmp_path_factory) -> Path:
    return save_generator(tmp_path_factory.mktemp("chunks") / "gen.ckpt", tokenizer_file)


def other_tokenizer(path: Path, seed: int = 1) -> Path:
    """A vq-tiny-emoji tokenizer of other (seeded random) weights: the same shapes, other pixels."""
    from nar.tokenizers import build_tokenizer, save_tokenizer

    torch.manual_seed(seed)
    return save_tokenizer(build_tokenizer("vq-tiny-emoji"), path)


def chunks_of(out: Path, count: int) -> list[np.ndarray]:
    return [np.load(chunk_path(out / "chunks", c))["pixels"] for c in range(count)]


def test_a_resumed_evaluation_with_another_tokenizer_is_refused(ckpt, tmp_path, caplog):
    """The reviewer's reproduction: chunks 1-2 of a finished evaluation deleted, the rerun given another
    tokenizer.path read chunk 0 back and scored a mix of two tokenizers' samples; it is refused at start, naming
    the tokenizer, and generates nothing. The same command still reads its chunks back."""
    import logging

    from nar.cli.main import main

    out = tmp_path / "eval"
    args = evaluate_args(ckpt, out, N, BATCH, "eval.metrics=[]")
    assert main(args) == 0
    for c in (1, 2):
        chunk_path(out / "chunks", c).unlink()
    other = other_tokenizer(tmp_path / "other.pt")
    caplog.clear()
    assert main([*args, f"tokenizer.path={other}"]) == 2
    assert "tokenizer" in caplog.text and str(out / "chunks") in caplog.text, caplog.text
    assert not chunk_path(out / "chunks", 1).exists()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(args) == 0 and "1 of 3 chunks read back" in caplog.text


def base_cfg(tokenizer: str | Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, [], [f"tokenizer.path={tokenizer}", "model.grid=[8,8]", "model.dim=32",
                                         "model.n_layer=1", "model.n_head=2", *extra])


def test_a_chunk_folder_names_every_setting_that_changes_the_samples(tmp_path):
    """What makes other samples is recorded, and a rerun that changes it is refused naming the key: the tokenizer
    (another file, the same file rewritten as a retraining does, a preset name instead of a file, another
    tokenizer.config), eval.sampler (the wavefront draws other samples), the model config (grid, heads) and the
    decoded sample shape. The order of a sampler's options does not count."""
    from nar.workflows.train import claim_chunk_folder

    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"weights")
    tok = other_tokenizer(tmp_path / "tok.pt", seed=0)
    base = base_cfg(tok)
    shape = (3, 32, 32)
    folder = tmp_path / "chunks"
    claim_chunk_folder(folder, weights, base, sample_shape=shape)
    claim_chunk_folder(folder, weights, base, sample_shape=shape)  # the same settings: taken
    recorded = json.loads((folder / "settings.json").read_text())
    assert recorded["tokenizer"]["path"] == str(tok.resolve()) and recorded["sampler"] == "fast"
    assert recorded["model"]["grid"] == [8, 8] and recorded["sample_shape"] == list(shape)

    def refused(cfg: TrainConfig, key: str, sample_shape=shape) -> None:
        with pytest.raises(ConfigError, match=rf"{folder}.*\b{key}\b"):
            claim_chunk_folder(folder, weights, cfg, sample_shape=sample_shape)

    refused(base_cfg(other_tokenizer(tmp_path / "other.pt")), "tokenizer")
    refused(base_cfg("vq-tiny-emoji"), "tokenizer")  # a preset: random weights
    refused(base_cfg(tok, "tokenizer.config=vq-tiny-emoji"), "tokenizer")
    refused(base_cfg(tok, "eval.sampler=wavefront"), "sampler")
    refused(base_cfg(tok, "model.grid=[16,16]"), "model")
    refused(base_cfg(tok, "model.n_head=4"), "model")
    refused(base, "sample_shape", sample_shape=(3, 64, 64))
    # the same tokenizer file rewritten with other weights (retrained): its size or time changes
    other_tokenizer(tok, seed=2)
    refused(base, "tokenizer")

    wave = tmp_path / "wave"
    claim_chunk_folder(wave, weights, base_cfg(tok, "eval.sampler=wavefront+compile"), sample_shape=shape)
    claim_chunk_folder(wave, weights, base_cfg(tok, "eval.sampler=compile+wavefront"), sample_shape=shape)


def test_a_chunk_folder_of_the_older_seed_scheme_is_refused(tmp_path):
    """Folders written before chunk c was seeded batch_seed(eval.seed, c) (it was eval.seed + c) record no seeds
    scheme: their chunks are other samples than this version makes, so they are refused, saying so and how to go
    on, rather than mixed."""
    from nar.workflows.train import claim_chunk_folder

    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"weights")
    cfg = base_cfg("vq-tiny-emoji")
    folder = tmp_path / "chunks"
    claim_chunk_folder(folder, weights, cfg)
    record = folder / "settings.json"
    settings = json.loads(record.read_text())
    assert settings["seeds"] == "batch_seed"
    old = {k: v for k, v in settings.items() if k not in ("seeds", "tokenizer", "sampler", "model", "sample_shape")}
    record.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=rf"{folder}.*older version.*(--out|delete)"):
        claim_chunk_folder(folder, weights, cfg)


def test_a_stored_chunk_of_another_shape_is_refused(tmp_path):
    """The chunk reader compares a stored chunk's pixel shape with the shape being generated: one of another
    shape is refused naming the file and both shapes (it belongs to another model or tokenizer), before anything
    is generated or handed to the metrics."""
    from nar.lightning.generation import save_chunk, stream_chunks

    save_chunk(chunk_path(tmp_path, 0), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None)
    generated: list[int] = []

    class FakeGenerator:
        device = torch.device("cpu")

        def tokens_stream(self, batches, batch_size=None):
            for cond, _, _ in batches:
                generated.append(cond.shape[0])
                yield torch.zeros(cond.shape[0], 4, 4, dtype=torch.long)

        def decode(self, tokens):
            return torch.zeros(tokens.shape[0], 3, 16, 16, dtype=torch.uint8)

    seen: list[int] = []
    with pytest.raises(ConfigError, match=r"chunk_000000\.npz.*8, 8.*16, 16"):
        stream_chunks(FakeGenerator(), torch.zeros(4, dtype=torch.long), None, [0, 1], 2, 0,
                      [lambda c, px, _: seen.append(c)], folder=tmp_path, sample_shape=(3, 16, 16))
    assert seen == [] and generated == []
    # the shape being generated: taken
    save_chunk(chunk_path(tmp_path, 0), torch.zeros(2, 3, 16, 16, dtype=torch.uint8), None)
    assert stream_chunks(FakeGenerator(), torch.zeros(4, dtype=torch.long), None, [0, 1], 2, 0,
                         [lambda c, px, _: seen.append(c)], folder=tmp_path, sample_shape=(3, 16, 16)) == 1
    assert seen == [0, 1] and generated == [2]


def test_the_decoded_shape_is_what_the_tokenizer_decodes():
    """decoded_shape (counted from the config) is the shape a real decode gives: images at the tokenizer's own
    grid, a larger and a non-square one; a video tokenizer's clips."""
    from nar.lightning.generation import decoded_shape
    from nar.tokenizers import build_tokenizer

    torch.manual_seed(0)
    for preset, grids in (("vq-tiny-emoji", [(8, 8), (16, 16), (4, 6)]), ("vq-video-tiny-atari", [(2, 4, 4)])):
        tok = build_tokenizer(preset).eval()
        for grid in grids:
            with torch.no_grad():
                real = tuple(tok.decode(torch.zeros(1, *grid, dtype=torch.long)).shape[1:])
            assert decoded_shape(tok, grid) == real, (preset, grid)
    assert decoded_shape(torch.nn.Identity(), (8, 8)) is None  # no VQ config: unknown


def test_neighbouring_eval_seeds_share_no_chunk_and_the_results_say_how_samples_were_made(ckpt, tmp_path,
                                                                                          tokenizer_file):
    """eval.seed 0 and 1 (chunk c was seeded eval.seed + c: seed 0's chunks 1-2 were seed 1's chunks 0-1, the same
    labels) share no chunk; results.json records the seed, chunk size, sampler, tokenizer, decoded image size and
    the command."""
    from nar.cli.main import main
    from nar.sampling.seeds import batch_seed

    runs = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        args = evaluate_args(ckpt, out, N, BATCH, "eval.metrics=[]", f"eval.seed={seed}")
        assert main(args) == 0
        runs[seed] = chunks_of(out, N // BATCH)
        results = json.loads((out / "results.json").read_text())
        assert results["seed"] == seed and results["batch_size"] == BATCH and results["sampler"] == "fast"
        assert results["seeds"] == "batch_seed" and batch_seed(seed, 0) != seed
        assert results["tokenizer"]["path"] == str(Path(tokenizer_file).resolve())
        assert results["image_size"] == [32, 32] and results["real_image_size"] is None  # nothing real scored
        assert results["command"].startswith("nar evaluate ") and f"eval.seed={seed}" in results["command"]
    for a, pixels in enumerate(runs[0]):
        for b, others in enumerate(runs[1]):
            assert not np.array_equal(pixels, others), (a, b)


def test_real_images_are_sized_to_the_decoded_samples(tokenizer_file, tmp_path, monkeypatch):
    """A model sampling 16x16 tokens through the 8x8-trained emoji tokenizer (image_size 32) decodes 64-px
    samples: its real images are cropped to 64 px (the feature cache keyed by it), not to 32, and results.json
    records the size."""
    import nar.lightning.callbacks.decoding as decoding
    from nar.cli.main import main

    monkeypatch.setenv("NAR_CACHE", str(tmp_path / "cache"))
    ckpt16 = save_generator(tmp_path / "gen16.ckpt", tokenizer_file, grid=(16, 16))
    real = class_sorted_shards(tmp_path / "real", 4, 2)
    sizes: list[int | None] = []
    plain = decoding.real_features

    def spy(*args, **kwargs):
        sizes.append(kwargs.get("image_size"))
        return plain(*args, **kwargs)

    monkeypatch.setattr(decoding, "real_features", spy)
    out = tmp_path / "eval16"
    assert main(evaluate_args(ckpt16, out, 4, 4, "eval.metrics=[fid]", f"eval.real_root={real}",
                              "eval.real_split=train")) == 0
    assert sizes == [64]
    results = json.loads((out / "results.json").read_text())
    assert results["image_size"] == [64, 64] and results["real_image_size"] == 64
    with np.load(out / "samples_4.npz") as data:
        assert data["arr_0"].shape == (4, 64, 64, 3)
