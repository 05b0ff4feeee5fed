"""Bad tokenizer configs fail at start-up with a message naming the key."""

from __future__ import annotations

import pytest
from tokenizer_helpers import tiny_image, tiny_video

from nar.errors import ConfigError
from nar.tokenizers import PRESETS, TokenizerLossConfig, TokenizerOptimConfig, VQConfig
from nar.workflows.tokenizer import tokenizer_config


@pytest.mark.parametrize("overrides,key", [
    ({"image_size": 250}, "image_size"),  # 250 not divisible by 16
    ({"kind": "audio"}, "kind"),
    ({"base_channels": 48}, "base_channels"),  # 48 not divisible by 32 groups
    # every width base_channels * mult (24, 48) divides by 8 groups, the stem's 12 does not
    ({"base_channels": 12, "encoder_ch_mult": [2, 4], "decoder_ch_mult": [2, 4], "norm_groups": 8, "image_size": 32},
     "base_channels"),
    ({"decoder_ch_mult": [1, 2]}, "decoder_ch_mult"),
    ({"num_frames": 4}, "num_frames"),  # images have one frame
    ({"codebook_size": 1}, "codebook_size"),
])
def test_bad_image_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        VQConfig(**overrides)


def test_bad_video_config_names_the_key():
    with pytest.raises(ConfigError, match="'num_frames'.*not divisible by the temporal"):
        tiny_video(num_frames=5)
    with pytest.raises(ConfigError, match="'temporal_downsample'"):
        tiny_video(temporal_downsample=[True])
    with pytest.raises(ConfigError, match="'temporal_downsample'"):
        tiny_image(temporal_downsample=[True])


def test_every_preset_is_valid_and_has_the_documented_grid():
    grids = {"vq-16": (16, 16), "vq-8": (32, 32), "vq-tiny-emoji": (8, 8), "vq-video-ucf101": (4, 16, 16),
             "vq-video-tiny-atari": (4, 8, 8)}
    assert {name: cfg.grid for name, cfg in PRESETS.items()} == grids
    vq16 = VQConfig.from_name("vq-16")
    assert (vq16.base_channels, vq16.encoder_ch_mult, vq16.z_channels, vq16.codebook_size,
            vq16.codebook_embed_dim) == (128, [1, 1, 2, 2, 4], 256, 16384, 8)
    with pytest.raises(ConfigError, match="unknown tokenizer preset"):
        VQConfig.from_name("vq-17")


def test_loss_config_validation():
    with pytest.raises(ConfigError, match="'reconstruction'"):
        TokenizerLossConfig(reconstruction="huber")
    with pytest.raises(ConfigError, match="'adversarial_weight'"):
        TokenizerLossConfig(adversarial_weight=-1.0)


@pytest.mark.parametrize("data", ["emoji", "atari", "imagenet", "ucf101"])
def test_cli_config_of_every_dataset_builds(data):
    cfg = tokenizer_config(data, root="/nonexistent/shards")
    assert cfg.model == VQConfig.from_name({"emoji": "vq-tiny-emoji", "atari": "vq-video-tiny-atari",
                                            "imagenet": "vq-16", "ucf101": "vq-video-ucf101"}[data])


def test_cli_bad_override_fails_at_start_up():
    with pytest.raises(ConfigError, match=r"model\.image_size.*not divisible by the spatial downsampling factor 4"):
        tokenizer_config("emoji", overrides=["model.image_size=30"])
    with pytest.raises(ConfigError, match=r"model\.codebook_sise"):
        tokenizer_config("emoji", overrides=["model.codebook_sise=8"])
    with pytest.raises(ConfigError, match=r"data\.root.*--root"):
        tokenizer_config("imagenet")


def test_tokenizer_and_generator_runs_share_the_trainer_keys():
    """One trainer section: the same keys, names and checks for both kinds of run."""
    from nar.runs import TokenizerRunConfig, TrainConfig, TrainerConfig

    assert type(TokenizerRunConfig().trainer) is type(TrainConfig().trainer) is TrainerConfig
    cfg = tokenizer_config("emoji", overrides=["trainer.threads=1", "runs_root=/tmp/r", "name=tok"])
    assert str(cfg.run_dir) == "/tmp/r/tok" and cfg.trainer.threads == 1
    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        tokenizer_config("emoji", overrides=["trainer.precision=16-mixed"])


def _shards(root, kind="image", sizes=(), **fields):
    """A dataset folder: ``meta.json`` with ``fields``, and (with ``sizes``) a train split of blank images kept as
    original bytes (no size in ``meta.json``), as ``nar data imagenet`` writes by default."""
    from PIL import Image

    from nar.data.encode import encode_png
    from nar.data.shards import write_meta, write_split

    root.mkdir(parents=True, exist_ok=True)
    records = []
    if sizes:
        records.append(write_split(root, "train", list(range(len(sizes))), shard_size=len(sizes),
                                   make_sample=lambda i: {"png": encode_png(Image.new("RGB", sizes[i])), "cls": 0}))
    write_meta(root, kind, records, **fields)
    return root


def _round(size: int, factor: int) -> int:
    return size // factor * factor


@pytest.mark.parametrize("fields,sizes", [
    ({"resize": 100}, ()),  # the imagenet recipe (vq-16, factor 16)
    ({"image_size": 30}, ()),  # the emoji recipe (factor 4)
    ({}, ((130, 97), (120, 101))),  # original bytes, short side 97: under the recipe's 256
    ({}, ((300, 270), (280, 290))),  # original bytes larger than the recipe's size: never above it
])
def test_recipe_for_rounds_the_stored_size_to_the_preset(tmp_path, fields, sizes):
    root = _shards(tmp_path / "ds", sizes=sizes, **fields)
    cfg = tokenizer_config(root=str(root))
    recipe = tokenizer_config(cfg.model.preset and {"vq-16": "imagenet", "vq-tiny-emoji": "emoji"}[cfg.model.preset],
                              root="/nonexistent/shards").model  # the recipe's own size and factor
    stored = fields.get("image_size") or fields.get("resize") or min(min(s) for s in sizes)
    if sizes:  # read off the images: the recipe's size caps it
        stored = min(stored, recipe.image_size)
    assert cfg.model.image_size == _round(stored, recipe.spatial_downsample) > 0


def test_recipe_for_with_a_preset_rounds_to_that_preset(tmp_path):
    root = _shards(tmp_path / "ds", resize=102)
    cfg = tokenizer_config(root=str(root), preset="vq-tiny-emoji")
    assert cfg.model.image_size == _round(102, VQConfig.from_name("vq-tiny-emoji").spatial_downsample)


def test_recipe_for_refuses_sizes_the_preset_cannot_use(tmp_path):
    factor = VQConfig.from_name("vq-tiny-emoji").spatial_downsample
    with pytest.raises(ConfigError, match=r"model\.image_size.*smaller than .* downsampling factor"):
        tokenizer_config(root=str(_shards(tmp_path / "small", image_size=factor - 1)))
    atari = VQConfig.from_name("vq-video-tiny-atari")
    frames = atari.temporal_factor + atari.temporal_factor // 2  # not a multiple: clips are never cut
    with pytest.raises(ConfigError, match=rf"model\.num_frames.*{frames} frames.*temporal downsampling factor "
                                          rf"{atari.temporal_factor}"):
        tokenizer_config(root=str(_shards(tmp_path / "clips", kind="video", image_size=atari.image_size,
                                          frames=frames)))
    ok = tokenizer_config(root=str(_shards(tmp_path / "ok", kind="video", image_size=atari.image_size + 2,
                                           frames=2 * atari.temporal_factor)))
    assert (ok.model.image_size, ok.model.num_frames) == (atari.image_size, 2 * atari.temporal_factor)


def test_the_upsampling_refusal_suggests_a_size_the_preset_takes(tmp_path):
    emoji = VQConfig.from_name("vq-tiny-emoji")
    stored = emoji.image_size - emoji.spatial_downsample // 2 - 1  # below the recipe's size and not a multiple
    root = _shards(tmp_path / "ds", image_size=stored)
    with pytest.raises(ConfigError, match=rf"upsampled.*model\.image_size={_round(stored, emoji.spatial_downsample)}$"):
        tokenizer_config("emoji", root=str(root))


@pytest.mark.parametrize("schema,key", [(TokenizerLossConfig, "entropy_temperature"), (TokenizerOptimConfig, "lr"),
                                        (TokenizerOptimConfig, "disc_lr"), (TokenizerOptimConfig, "grad_clip"),
                                        (TokenizerOptimConfig, "weight_decay")])
def test_nan_is_refused_by_name(schema, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        schema(**{key: float("nan")})


def test_imagenet_recipe_is_llamagens_vq_train():
    """LlamaGen's vq_train.py: global batch 128 split over the GPUs, Adam without weight decay, VQLoss without the
    adaptive GAN weight (disc_adaptive_weight=False, never turned on) and with LPIPS' dropout on, random_crop_arr
    (scale jitter 0.8) + flips."""
    for devices, per_gpu in ((8, 16), (1, 128)):
        cfg = tokenizer_config("imagenet", root="/nonexistent/shards", overrides=[f"trainer.devices={devices}"])
        assert (cfg.data.global_batch, cfg.data.batch_size) == (128, per_gpu)
    assert not cfg.loss.adaptive_weight and cfg.optim.weight_decay == 0.0
    assert cfg.loss.lpips_dropout  # its LPIPS trains in train mode: dropout before the linear heads
    assert cfg.data.random_crop and cfg.data.min_crop_frac == 0.8 and cfg.data.hflip
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.loss.reconstruction, cfg.loss.perceptual_weight) == \
        (1e-4, [0.9, 0.95], "l2", 1.0)
    assert (cfg.loss.adversarial_weight, cfg.loss.adversarial_start_step, cfg.loss.commitment_beta) == (0.5, 20000, 0.25)
    # the other recipes keep what they had: centre crops, their own batch, ucf101's adaptive weight
    for data in ("emoji", "atari", "ucf101"):
        other = tokenizer_config(data, root="/nonexistent/shards")
        assert not other.data.random_crop and other.data.global_batch is None
    assert other.loss.adaptive_weight


def test_tokenizer_random_crop_reaches_training_only(tmp_path):
    """data.random_crop / data.min_crop_frac go to the training transform; validation keeps the centre crop;
    video tokenizers (centre-cropped clips) refuse it by name."""
    import numpy as np
    from PIL import Image

    from nar.config import load_config
    from nar.data.encode import encode_png
    from nar.data.shards import write_meta, write_split
    from nar.lightning.data import tokenizer_datamodule
    from nar.runs import TokenizerRunConfig

    def image(i: int) -> dict:
        return {"png": encode_png(Image.fromarray(np.full((10, 12, 3), i, dtype=np.uint8))), "cls": i % 2}

    root = tmp_path / "img"
    write_meta(root, "image", [write_split(root, s, [0, 1], make_sample=image, shard_size=2) for s in ("train", "val")],
               classes=["x", "y"])
    base = [f"data.root={root}", "model.preset=vq-tiny-emoji", "model.image_size=8", "data.num_workers=0"]
    for extra, crop, frac in (([], False, 0.8), (["data.random_crop=true"], True, 0.8),
                              (["data.random_crop=true", "data.min_crop_frac=0.5"], True, 0.5)):
        dm = tokenizer_datamodule(load_config(TokenizerRunConfig, [], [*base, *extra]))
        train, val = dm.train_transform(), dm.eval_transform()
        assert (train.random_crop, train.min_crop_frac) == (crop, frac) and not val.random_crop
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match=r"data\.min_crop_frac"):
            load_config(TokenizerRunConfig, [], [*base, f"data.min_crop_frac={bad}"])
    with pytest.raises(ConfigError, match=r"data\.random_crop.*image"):
        load_config(TokenizerRunConfig, [], ["model.preset=vq-video-tiny-atari", "data.random_crop=true"])


def test_own_data_takes_the_recipes_per_gpu_share_not_its_global_batch(tmp_path):
    """`nar train-tokenizer --root` on photos picks the imagenet recipe, whose batch is global (LlamaGen's 128 over
    8 GPUs): on the machine at hand it trains with that per-GPU share per process, not 128 on one GPU; a
    data.batch_size given still wins, and `--data imagenet` keeps the global batch."""
    from nar.workflows.tokenizer import RECIPE_GPUS

    root = _shards(tmp_path / "ds", resize=100)
    recipe = tokenizer_config("imagenet", root="/nonexistent/shards")
    assert recipe.data.global_batch
    own = tokenizer_config(root=str(root))
    assert own.data.global_batch is None and own.data.batch_size == recipe.data.global_batch // RECIPE_GPUS
    assert tokenizer_config(root=str(root), overrides=["data.batch_size=4"]).data.batch_size == 4


def test_a_global_batch_given_for_own_data_replaces_the_per_gpu_share_quietly(tmp_path, caplog):
    """The per-GPU share recipe_for picks is the tool's, not the user's: a data.global_batch given on the own-data
    path is taken without a warning about a data.batch_size nobody set; an uneven split names only the keys a
    tokenizer run may change (not trainer.accumulate, which it refuses)."""
    import logging

    root = _shards(tmp_path / "ds", resize=100)
    with caplog.at_level(logging.WARNING, logger="nar"):
        cfg = tokenizer_config(root=str(root), overrides=["data.global_batch=64", "trainer.devices=2"])
    assert cfg.data.batch_size == 32 and "is ignored" not in caplog.text
    with pytest.raises(ConfigError, match=r"trainer\.devices x trainer\.num_nodes = 3 x 1") as err:
        tokenizer_config("imagenet", root="/nonexistent/shards", overrides=["trainer.devices=3"])
    assert "accumulate" not in str(err.value)


def _own_images(root, sizes, sources):
    """A dataset folder as ``nar data imagenet`` writes one by default: a train split of blank PNGs kept as original
    bytes (no size in ``meta.json``), each with its json ``source``, in the order given (one shard)."""
    from PIL import Image

    from nar.data.encode import encode_png
    from nar.data.shards import write_meta, write_split

    rec = write_split(root, "train", list(range(len(sizes))), shard_size=len(sizes), make_sample=lambda i: {
        "png": encode_png(Image.new("RGB", sizes[i])), "cls": 0, "json": {"source": sources[i]}})
    write_meta(root, "image", [rec], classes=["a"])
    return root


@pytest.mark.parametrize("outlier", [(4000, 20), (1, 1)])
@pytest.mark.parametrize("position", [0, 20])
def test_one_odd_image_does_not_set_the_size_of_the_run_and_is_named(tmp_path, caplog, outlier, position):
    """20 images of 64 px and one banner (or a 1×1 file), wherever it lies in the shard: the run trains at the size
    the images have, not the outlier's (a 20-px run, or a refusal for the 1×1 one), and a warning names the outlier
    by key and source, with the count; the log line says how the size was read off the images."""
    import logging

    sizes = [(64, 64)] * 20
    sizes.insert(position, outlier)
    sources = [f"train/a/img{i:02d}.png" for i in range(len(sizes))]
    sources[position] = "train/a/odd one.png"
    root = _own_images(tmp_path / "ds", sizes, sources)
    with caplog.at_level(logging.INFO, logger="nar"):
        cfg = tokenizer_config(root=str(root))
    emoji = VQConfig.from_name("vq-tiny-emoji")  # the recipe of small images: it caps the size at its own
    assert cfg.model.preset == "vq-tiny-emoji" and cfg.model.image_size == min(64, emoji.image_size)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    assert f"{position:09d} (train/a/odd one.png)" in warned[0] and "1 of 21 probed" in warned[0]
    assert "64 px" in warned[0] and "img" not in warned[0]  # only the outlier is named
    assert any("median short side of 21 train images" in r.getMessage() for r in caplog.records
               if r.levelname == "INFO")


def test_images_too_small_for_every_preset_are_refused_naming_the_size_and_how_it_was_read(tmp_path):
    """A folder mostly of 3-px images is genuinely too small: refused, saying the median, how many images of which
    shard it was read off, and the smallest size any preset takes."""
    root = _own_images(tmp_path / "ds", [(3, 3)] * 4 + [(64, 64)], [f"s{i}.png" for i in range(5)])
    with pytest.raises(ConfigError, match=r"median short side of 5 train images.*is 3 px.*smaller than preset "
                                          r"vq-tiny-emoji's spatial downsampling factor 4.*at least 4 px") as err:
        tokenizer_config(root=str(root))
    assert str(root) in str(err.value)
