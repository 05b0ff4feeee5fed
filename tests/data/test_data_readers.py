"""Readers: exact node × worker split for evaluation, resampled training stream, DataModules."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nar.data.datamodules import ImageDataConfig, ImageShardDataModule, TokenDataConfig, datamodule_for
from nar.data.encode import encode_png
from nar.data.readers import (
    ImageSample,
    MissingSamples,
    ResampledShardStream,
    ShardStream,
    class_balanced_ids,
    partition_bounds,
)
from nar.data.shards import SplitIndex, write_meta, write_split
from nar.errors import ConfigError, DataError

NUM = 23


def _image(i: int) -> dict:
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    arr[0, 0] = i  # the sample's id, readable back from the pixels
    return {"png": encode_png(Image.fromarray(arr)), "cls": i % 3, "json": {"i": i}, "txt": f"image {i}"}


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    recs = [write_split(root, "train", list(range(NUM)), make_sample=_image, shard_size=5),
            write_split(root, "val", list(range(NUM)), make_sample=_image, shard_size=4)]
    write_meta(root, "image", recs, classes=["a", "b", "c"])  # 12×10 images: no fixed stored size
    return root


def _keys(dataset, workers: int) -> list[str]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [s["__key__"] if isinstance(s, dict) else s for s in loader]


def test_partition_bounds_cover_exactly():
    for n in (0, 1, 7, 23):
        for parts in (1, 2, 3, 4, 8):
            spans = [partition_bounds(n, parts, p) for p in range(parts)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(h - lo for lo, h in spans) - min(h - lo for lo, h in spans) <= 1


def test_eval_pass_two_ranks_two_workers_is_disjoint_and_complete(image_root):
    index = SplitIndex.load(image_root, "val")
    per_rank = [_keys(ShardStream(index, rank=r, world_size=2), workers=2) for r in (0, 1)]
    assert len(per_rank[0]) + len(per_rank[1]) == NUM
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == [f"{i:09d}" for i in range(NUM)]
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    assert ShardStream(index, rank=0, world_size=2).num_samples() == len(per_rank[0])
    # deterministic: the same pass again gives the same order
    assert _keys(ShardStream(index, rank=1, world_size=2), workers=2) == per_rank[1]


def test_class_balanced_subset_split_over_ranks(image_root):
    index = SplitIndex.load(image_root, "val")
    ids = class_balanced_ids(index.labels, per_class=4, seed=0)
    assert np.bincount(index.labels[ids]).tolist() == [4, 4, 4]
    got = []
    for r in (0, 1):
        got += _keys(ShardStream(index, sample_ids=ids, rank=r, world_size=2), workers=2)
    assert sorted(got) == [f"{i:09d}" for i in ids]
    assert class_balanced_ids(index.labels, per_class=100).size == NUM  # short classes give all they have


def test_resampled_stream_quota_seed_and_epochs(image_root):
    index = SplitIndex.load(image_root, "train")

    def take(seed: int) -> tuple[list[str], list[str]]:
        ds = ResampledShardStream(index, shuffle_buffer=6, seed=seed, samples_per_epoch=17)
        return [s["__key__"] for s in ds], [s["__key__"] for s in ds]

    epoch0, epoch1 = take(0)
    assert len(epoch0) == 17 and len(epoch1) == 17
    assert epoch0 != epoch1  # reseeded per epoch
    assert take(0) == (epoch0, epoch1)  # reproducible
    assert take(1)[0] != epoch0
    assert epoch0 != sorted(epoch0)  # shuffled

    # with workers and ranks: every (rank, worker) gets the same share, so ranks see equal batch counts
    n = [len(_keys(ResampledShardStream(index, samples_per_epoch=17, rank=r, world_size=2), workers=2)) for r in (0, 1)]
    assert n == [8, 8]


def test_resampled_stream_survives_an_unreadable_shard(image_root, caplog):
    index = SplitIndex.load(image_root, "train")
    index.shards[1].write_bytes(b"this is no tar file")
    ds = ResampledShardStream(index, shuffle_buffer=3, samples_per_epoch=200)
    assert len(list(ds)) == 200 and ds.bad.counts["unreadable shard"] == 1
    warned = [r for r in caplog.records if "train-000001.tar" in r.getMessage() and "skipped" in r.getMessage()]
    assert len(warned) == 1  # logged once, then the shard is left out
    for shard in index.shards:
        shard.write_bytes(b"")
    with pytest.raises(DataError, match="no readable"):
        list(ResampledShardStream(index, samples_per_epoch=5))


def test_reader_skips_undecodable_samples(tmp_path, caplog):
    def maybe_bad(i: int) -> dict:
        return {"png": b"not a png", "cls": 0} if i == 2 else _image(i)

    rec = write_split(tmp_path, "val", list(range(5)), make_sample=maybe_bad, shard_size=5)
    write_meta(tmp_path, "image", [rec], classes=["a"])
    ds = ShardStream(SplitIndex.load(tmp_path, "val"), ImageSample(8), allow_missing=True)
    got = list(ds)
    assert len(got) == 4 and ds.bad.total == 1
    assert (ds.expected, ds.delivered, ds.last_pass.missing) == (5, 4, 1)
    assert any("000000002" in r.getMessage() for r in caplog.records)
    strict = ShardStream(SplitIndex.load(tmp_path, "val"), ImageSample(8))  # the default: no score on fewer samples
    with pytest.raises(MissingSamples, match=r"4 of 5 selected samples read; 1 skipped .*val-000000.tar:000000002"):
        list(strict)
    assert MissingSamples.exit_code == 1


def test_image_datamodule_batches(image_root):
    dm = ImageShardDataModule(ImageDataConfig(root=str(image_root), image_size=8, batch_size=4, num_workers=0,
                                              shuffle_buffer=5, samples_per_epoch=12, random_crop=True))
    assert dm.num_classes == 3 and dm.classes == ["a", "b", "c"]
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and batches[0]["image"].shape == (4, 3, 8, 8)
    assert batches[0]["image"].min() >= -1 and batches[0]["image"].max() <= 1
    assert batches[0]["label"].dtype == torch.int64 and len(batches[0]["caption"]) == 4
    val = list(dm.val_dataloader())
    assert sum(len(b["label"]) for b in val) == NUM
    sub = list(ImageShardDataModule(ImageDataConfig(root=str(image_root), image_size=8, batch_size=5, num_workers=0,
                                                    eval_per_class=2)).val_dataloader())
    assert torch.cat([b["label"] for b in sub]).bincount().tolist() == [2, 2, 2]
    # the deterministic view: centre crop, pixels intact
    first = next(iter(ImageShardDataModule(ImageDataConfig(root=str(image_root), image_size=10, batch_size=1,
                                                           num_workers=0)).val_dataloader()))
    assert first["image"].shape == (1, 3, 10, 10)


def test_training_crop_scale_and_flip_come_from_the_draw(image_root):
    """With scale jitter the crop takes three of a draw's fixed numbers and the flip the fourth: the view is a
    function of the draw's numbers alone (not of its fallback generator), so resumed streams repeat it; the
    DataModule hands ``min_crop_frac`` to training only, validation keeps the centre crop."""
    from nar.data.readers import DrawRandom, _DrawNumbers

    raw = next(iter(ShardStream(SplitIndex.load(image_root, "train"))))
    sample = ImageSample(8, random_crop=True, min_crop_frac=0.8, hflip=True)
    numbers = _DrawNumbers([5, 0, 0, 0])
    views = [sample(raw, DrawRandom(numbers.row(d), [s, d]))["image"] for d in range(8) for s in (1, 2)]
    for a, b in zip(views[::2], views[1::2]):  # same draw, other fallback seed: the same view
        assert torch.equal(a, b)
    assert len({v.numpy().tobytes() for v in views[::2]}) > 1
    centre = ImageSample(8)(raw, None)["image"]
    cfg = ImageDataConfig(root=str(image_root), image_size=8, random_crop=True, min_crop_frac=0.8)
    dm = ImageShardDataModule(cfg)
    train, val = dm.train_transform(), dm.eval_transform()
    assert (train.random_crop, train.min_crop_frac) == (True, 0.8)
    assert torch.equal(val(raw, DrawRandom(numbers.row(0), [1, 0]))["image"], centre)
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match="min_crop_frac"):
            ImageDataConfig(root=str(image_root), min_crop_frac=bad)


def test_eval_per_class_on_unlabelled_split(tmp_path):
    """eval_per_class on a split whose samples have no class (captions / pairs: labels all −1) would select
    nothing and evaluate zero samples: refused, naming the split, the setting and the sample count."""
    root = tmp_path / "pairs"
    unlabelled = [{k: v for k, v in _image(i).items() if k != "cls"} for i in range(NUM)]
    rec = write_split(root, "val", unlabelled, make_sample=dict, shard_size=NUM)
    write_meta(root, "pairs", [rec], classes=[])
    dm = ImageShardDataModule(ImageDataConfig(root=str(root), image_size=8, batch_size=4, num_workers=0,
                                              eval_per_class=2))
    with pytest.raises(DataError, match=f"val: eval_per_class=2 .* none of its {NUM} samples has a class"):
        dm.val_dataloader()
    full = ImageShardDataModule(ImageDataConfig(root=str(root), image_size=8, batch_size=NUM, num_workers=0))
    assert sum(len(b["image"]) for b in full.val_dataloader()) == NUM  # without it, every sample is evaluated

def test_datamodule_config_errors(image_root, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        ImageDataConfig(root=str(image_root), batch_size=0)
    from nar.data.datamodules import TokenShardDataModule

    with pytest.raises(DataError, match="reads"):
        TokenShardDataModule(TokenDataConfig(root=str(image_root)))
    with pytest.raises(DataError, match="meta.json"):
        ImageShardDataModule(ImageDataConfig(root=str(tmp_path / "nothing")))
    from nar.config import load_config

    cfg = load_config(ImageDataConfig, overrides=[f"root={image_root}", "eval_per_class=50", "batch_size=8"])
    assert cfg.eval_per_class == 50 and isinstance(cfg, ImageDataConfig)
    with pytest.raises(ConfigError):
        load_config(ImageDataConfig, overrides=["no_such_key=1"])


def test_datamodule_under_a_lightning_trainer(image_root):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.val_seen = 0

        def training_step(self, batch, _):
            return (self.w * batch["image"].mean()).sum()

        def validation_step(self, batch, _):
            self.val_seen += len(batch["label"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = datamodule_for(image_root, image_size=8, batch_size=4, num_workers=0, samples_per_epoch=8)
    probe = Probe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(probe, datamodule=dm)
    assert trainer.global_step == 2 and probe.val_seen == NUM


def test_rank_comes_from_the_trainer_or_the_process_group(image_root, monkeypatch):
    from types import SimpleNamespace

    import torch.distributed as dist

    dm = ImageShardDataModule(ImageDataConfig(root=str(image_root), image_size=8, num_workers=0))
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)  # what Lightning sets under DDP
    stream = dm.eval_dataset("val")
    assert (stream.rank, stream.world_size) == (1, 2) and stream.num_samples() == NUM - NUM // 2

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    index = SplitIndex.load(image_root, "val")
    rank0 = [s["__key__"] for s in ShardStream(index)]  # rank from the process group
    assert rank0 == [f"{i:09d}" for i in range(NUM // 2)]


def test_batch_larger_than_the_split_wraps_around_instead_of_hanging(tmp_path):
    """8 samples, batch 16 (and 9), drop_last: each epoch still yields full batches, promptly."""
    rec = write_split(tmp_path, "train", list(range(8)), make_sample=_image, shard_size=8)
    write_meta(tmp_path, "image", [rec], classes=["a", "b", "c"])
    for batch_size, workers in ((16, 0), (9, 2)):
        dm = ImageShardDataModule(ImageDataConfig(root=str(tmp_path), image_size=8, batch_size=batch_size,
                                                  num_workers=workers, drop_last=True, pin_memory=False))
        batches = list(dm.train_dataloader())
        assert len(batches) == max(1, workers) and all(len(b["label"]) == batch_size for b in batches)
    stream = ResampledShardStream(SplitIndex.load(tmp_path, "train"), samples_per_epoch=20, batch_size=16)
    assert stream.quota(1) == 32 and stream.quota(4) == 16  # whole batches, at least one per reader


def test_evaluation_split_by_role(tmp_path, caplog):
    from nar.data.shards import resolve_split

    recs = [write_split(tmp_path, s, list(range(4)), make_sample=_image, shard_size=4) for s in ("train", "test")]
    meta = write_meta(tmp_path, "image", recs, classes=["a", "b", "c"])
    with caplog.at_level("INFO"):
        assert resolve_split(meta, "val") == "test"  # UCF-101 writes train/test
    assert any("no 'val' split; evaluating on 'test'" in r.getMessage() for r in caplog.records)
    assert resolve_split(meta, "test") == "test" and resolve_split(meta, "train", role="training") == "train"
    with pytest.raises(DataError, match=r"no training split 'val'; the dataset has \['test', 'train'\]"):
        resolve_split(meta, "val", role="training")
    with pytest.raises(DataError, match="no evaluation split 'holdout'"):
        resolve_split(meta, "holdout")
    dm = ImageShardDataModule(ImageDataConfig(root=str(tmp_path), image_size=8, batch_size=4, num_workers=0))
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == 4  # val_split "val" reads test
    assert sum(len(b["label"]) for b in dm.test_dataloader()) == 4
    assert not ImageDataConfig().hflip  # flips are opt-in


# --------------------------------------------------------------------------------------------------
# Training-time validation: a few damaged val samples are tolerated, up to data.val_missing_tolerance
# --------------------------------------------------------------------------------------------------

VAL = 20  # samples of the damaged val split; batches of 3, so 2 workers end on partial batches


def _damaged_val(root, bad: set[int]):
    """A 20-sample val split (shards of 5) whose samples in ``bad`` do not decode."""
    rec = write_split(root, "val", list(range(VAL)), shard_size=5,
                      make_sample=lambda i: {"png": b"not a png", "cls": 0} if i in bad else _image(i))
    write_meta(root, "image", [rec], classes=["a", "b", "c"])
    return root


def _trainer(fn: str = "fit", step: int = 0):
    """What a DataModule reads of its Lightning trainer: rank, world size, the stage and the step."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    return SimpleNamespace(global_rank=0, world_size=1, state=SimpleNamespace(fn=TrainerFn(fn)), global_step=step)


def _val_datamodule(root, workers: int, trainer: object = "fit", **cfg):
    """The DataModule over ``root`` in a fit (``trainer="fit"``), under ``trainer``, or without one (None)."""
    dm = ImageShardDataModule(ImageDataConfig(root=str(root), image_size=8, batch_size=3, num_workers=workers,
                                              pin_memory=False, **cfg))
    dm.trainer = _trainer() if trainer == "fit" else trainer
    return dm


@pytest.mark.parametrize("workers", [0, 2])
def test_a_validation_while_training_tolerates_a_missing_sample_within_the_tolerance(tmp_path, workers, caplog):
    """One undecodable sample of 20, tolerance 0.05 (one of this rank's 20): the validation of a fit reads the 19
    others and reports one missing. The bound is the rank's: with 2 workers of 10 samples each, 0.05 of one
    worker's part would tolerate none."""
    dm = _val_datamodule(_damaged_val(tmp_path, {7}), workers, val_missing_tolerance=0.05)
    loader = dm.val_dataloader()
    for _ in range(2):  # every validation of the run
        assert sum(len(b["label"]) for b in loader) == VAL - 1
        assert (loader.dataset.last_pass.expected, loader.dataset.last_pass.missing) == (VAL, 1)
    assert any("19 of 20" in r.getMessage() and "data.val_missing_tolerance" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    final = _val_datamodule(tmp_path, workers, trainer=_trainer("validate", step=8), val_missing_tolerance=0.05)
    assert sum(len(b["label"]) for b in final.val_dataloader()) == VAL - 1  # the run's last validation, after fit


@pytest.mark.parametrize("workers", [0, 2])
def test_a_validation_missing_more_than_the_tolerance_fails_naming_the_key(tmp_path, workers):
    """Three undecodable samples of 20, tolerance 0.1 (two): the pass fails, naming the key to raise. With two
    workers neither misses more than two (2 and 1): the rank's total decides."""
    dm = _val_datamodule(_damaged_val(tmp_path, {2, 3, 13}), workers, val_missing_tolerance=0.1)
    with pytest.raises(MissingSamples, match=r"17 of 20 selected samples read.*data\.val_missing_tolerance") as err:
        list(dm.val_dataloader())
    assert "Traceback" not in str(err.value)


def test_a_tolerance_above_zero_lets_one_sample_go_however_few_a_process_reads(tmp_path):
    """0.01 of a rank's 20 samples rounds down to none; a tolerance above 0 still lets one damaged sample go (8 GPUs
    split a small validation subset into a few dozen samples each), but not two."""
    dm = _val_datamodule(_damaged_val(tmp_path / "one", {5}), 0, val_missing_tolerance=0.01)
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == VAL - 1
    dm = _val_datamodule(_damaged_val(tmp_path / "two", {5, 6}), 0, val_missing_tolerance=0.01)
    with pytest.raises(MissingSamples, match="more than data.val_missing_tolerance=0.01 tolerates \\(1 of 20\\)"):
        list(dm.val_dataloader())


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_and_a_validation_outside_training_stay_strict(tmp_path, workers):
    """The tolerance is for a run's validations only: the same pass under trainer.validate of a model not trained
    by that trainer (`nar evaluate`), without a trainer, or a test pass fails on the one missing sample."""
    from types import SimpleNamespace

    root = _damaged_val(tmp_path, {7})
    loaders = [_val_datamodule(root, workers, trainer=trainer, val_missing_tolerance=0.05).val_dataloader()
               for trainer in (_trainer("validate"), SimpleNamespace(global_rank=0, world_size=1), None)]
    loaders.append(_val_datamodule(root, workers, trainer=_trainer("test", step=8),
                                   val_missing_tolerance=0.05).test_dataloader())
    for loader in loaders:
        with pytest.raises(MissingSamples, match=r"of \d+ selected samples read.*data\.allow_missing"):
            list(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_validation_that_read_nothing_fails_even_with_allow_missing(tmp_path, workers):
    """Every sample undecodable: nothing to validate on, whatever data.allow_missing says; the error names the
    data folder and the split."""
    root = _damaged_val(tmp_path, set(range(VAL)))
    for cfg in ({"val_missing_tolerance": 0.5}, {"allow_missing": True}):
        with pytest.raises(MissingSamples, match=rf"{re.escape(str(tmp_path))}: split 'val'.*none of the 20 selected"):
            list(_val_datamodule(root, workers, **cfg).val_dataloader())
    partly = _damaged_val(tmp_path / "partly", set(range(10)))  # with workers: one reads nothing, the rank 10
    assert sum(len(b["label"]) for b in _val_datamodule(partly, workers, allow_missing=True).val_dataloader()) == 10


def test_val_missing_tolerance_is_a_fraction_below_one(image_root):
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="val_missing_tolerance"):
            ImageDataConfig(root=str(image_root), val_missing_tolerance=bad)
    assert ImageDataConfig(root=str(image_root)).val_missing_tolerance == 0.01
