"""Token extraction with flip and ten-crop; token DataModule; videos."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nar.data.datamodules import TokenDataConfig, TokenShardDataModule
from nar.data.encode import encode_png
from nar.data.shards import SplitIndex, iter_tar, read_meta, write_meta, write_split
from nar.data.tokens import extract_tokens
from nar.data.transforms import ten_crop
from nar.errors import DataError


class PoolTokenizer(nn.Module):
    """A stand-in tokenizer: mean of each 4×4 patch of the red channel, quantised to 16 codes."""

    codebook_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        red = x[:, 0]  # [B, (T,) H, W]
        if red.dim() == 4:  # video: pool 2 frames together
            red = nn.functional.avg_pool3d(red[:, None], (2, 4, 4))[:, 0]
        else:
            red = nn.functional.avg_pool2d(red[:, None], 4)[:, 0]
        return ((red + 1) / 2 * 15.999).long()


def _gradient_image(i: int) -> dict:
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]  # red grows left → right
    return {"png": encode_png(Image.fromarray(arr)), "cls": i % 2, "txt": f"caption {i}", "json": {"i": i}}


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "img"
    rec = write_split(root, "train", list(range(5)), make_sample=_gradient_image, shard_size=2)
    write_meta(root, "image", [rec], classes=["x", "y"], image_size=16)
    return root


def test_ten_crop_order():
    x = torch.arange(36.0).reshape(1, 6, 6)
    crops = ten_crop(x, 4)
    assert crops.shape == (10, 1, 4, 4)
    assert torch.equal(crops[0], x[:, 1:5, 1:5]) and torch.equal(crops[1], x[:, :4, :4])
    assert torch.equal(crops[5], crops[0].flip(-1))


def test_extract_tokens_with_flip_then_resume(images, tmp_path):
    tok = PoolTokenizer()
    out = tmp_path / "tok"
    meta = extract_tokens(images, out, tok, flip=True, batch_size=2, tokenizer_name="pool")
    assert meta["kind"] == "tokens" and meta["grid"] == [4, 4] and meta["codebook_size"] == 16
    assert meta["augmentations"] == ["center", "center_flip"] and meta["classes"] == ["x", "y"]
    assert meta["splits"]["train"]["shard_samples"] == [2, 2, 1]  # one token shard per image shard
    raw = next(iter_tar(out / "train" / "train-000000.tar"))
    codes = np.load(io.BytesIO(raw["tokens.npy"]))
    assert codes.dtype == np.int32 and codes.shape == (2, 4, 4)
    assert (np.diff(codes[0], axis=1) >= 0).all() and np.array_equal(codes[1], codes[0][:, ::-1])
    assert raw["txt"] == b"caption 0" and raw["cls"] == b"0"
    assert SplitIndex.load(out, "train").labels.tolist() == [0, 1, 0, 1, 0]

    calls = tok.calls
    extract_tokens(images, out, tok, flip=True, batch_size=2, tokenizer_name="pool")
    assert tok.calls == calls  # every shard already done

    dm = TokenShardDataModule(TokenDataConfig(root=str(out), val_split="train", batch_size=5, num_workers=0, shuffle_buffer=2))
    assert dm.grid == (4, 4)
    batch = next(iter(dm.val_dataloader()))
    assert batch["tokens"].shape == (5, 4, 4) and batch["tokens"].dtype == torch.int64
    assert torch.equal(batch["tokens"][0], torch.from_numpy(codes[0]).long())  # eval: the centre view
    train = next(iter(dm.train_dataloader()))
    assert train["tokens"].shape == (5, 4, 4)


def test_extract_tokens_ten_crop_and_caption_features(images, tmp_path):
    def text_encoder(captions):
        feats = torch.randn(len(captions), 6, 3)
        mask = torch.zeros(len(captions), 6, dtype=torch.bool)
        mask[:, -2:] = True  # right-aligned
        return feats, mask

    meta = extract_tokens(images, tmp_path / "tok", PoolTokenizer(), ten_crop=True, text_encoder=text_encoder)
    assert len(meta["augmentations"]) == 10 and meta["caption_features"]
    raw = next(iter_tar(tmp_path / "tok" / "train" / "train-000000.tar"))
    assert np.load(__import__("io").BytesIO(raw["tokens.npy"])).shape == (10, 4, 4)
    dm = TokenShardDataModule(TokenDataConfig(root=str(tmp_path / "tok"), val_split="train", batch_size=2, num_workers=0,
                                              caption_features=True))
    batch = next(iter(dm.val_dataloader()))
    assert batch["capfeat"].shape == (2, 6, 3) and batch["capmask"].dtype == torch.bool


def test_extract_tokens_from_video_shards(tmp_path):
    def clip(i: int) -> dict:
        return {"frames.npy": np.full((4, 8, 8, 3), 40 * i, dtype=np.uint8), "cls": i}

    rec = write_split(tmp_path / "vid", "train", list(range(3)), make_sample=clip, shard_size=3)
    write_meta(tmp_path / "vid", "video", [rec], classes=["a", "b", "c"], image_size=8, frames=4)
    meta = extract_tokens(tmp_path / "vid", tmp_path / "tok", PoolTokenizer(), flip=False)
    assert meta["grid"] == [2, 2, 2] and meta["augmentations"] == ["center"] and meta["frames"] == 4
    assert read_meta(tmp_path / "tok")["splits"]["train"]["samples"] == 3


def test_cli_tokens_with_a_real_tokenizer_preset(tmp_path, capsys):
    """`nar data embedded` (emoji subset) → `nar data tokens --tokenizer vq-tiny-emoji` → a token DataModule."""
    pytest.importorskip("nar.tokenizers")
    from nar_data_testutil import run_data_cli

    from nar.data.embedded.emoji import build_emoji

    build_emoji(tmp_path / "emoji", limit=6, size=32, val_fraction=0.0)
    code = run_data_cli(["data", "tokens", str(tmp_path / "emoji"), "--out", str(tmp_path / "tok"),
                         "--tokenizer", "vq-tiny-emoji", "--device", "cpu", "--batch-size", "4"])
    assert code == 0 and "grid (8, 8)" in capsys.readouterr().out
    meta = read_meta(tmp_path / "tok")
    assert meta["codebook_size"] == 512 and meta["splits"]["train"]["samples"] == 6
    dm = TokenShardDataModule(TokenDataConfig(root=str(tmp_path / "tok"), val_split="train", batch_size=6, num_workers=0))
    tokens = next(iter(dm.val_dataloader()))["tokens"]
    assert tokens.shape == (6, 8, 8) and 0 <= int(tokens.min()) and int(tokens.max()) < 512
    # --gpus 2 on the CPU: two processes, each loading the tokenizer (a file: a preset's weights are random), one
    # meta.json, the same tokens as one process
    from nar.tokenizers import load_tokenizer, save_tokenizer

    saved = save_tokenizer(load_tokenizer("vq-tiny-emoji"), tmp_path / "vq.pt")
    for out, extra in (("one", []), ("two", ["--gpus", "2"])):
        assert run_data_cli(["data", "tokens", str(tmp_path / "emoji"), "--out", str(tmp_path / out), *extra,
                             "--tokenizer", str(saved), "--device", "cpu", "--batch-size", "4"]) == 0
    one, two = (TokenShardDataModule(TokenDataConfig(root=str(tmp_path / out), val_split="train", batch_size=6,
                                                     num_workers=0)) for out in ("one", "two"))
    assert torch.equal(next(iter(one.val_dataloader()))["tokens"], next(iter(two.val_dataloader()))["tokens"])


def test_image_size_comes_from_the_tokenizer_and_is_checked_against_meta(images, tmp_path):
    from types import SimpleNamespace

    from nar.data.tokens import tokenizer_image_size
    from nar.errors import DataError

    tok = PoolTokenizer()
    src_meta = read_meta(images)  # stores 16-px images
    tok.config = SimpleNamespace(image_size=16)
    assert tokenizer_image_size(images, src_meta, tok, None) == 16
    tok.config = SimpleNamespace(image_size=32)
    with pytest.raises(DataError, match=r"encodes 32-px inputs but .*meta.json stores 16-px.*--image-size 32"):
        extract_tokens(images, tmp_path / "tok", tok)
    assert not (tmp_path / "tok" / "meta.json").exists()
    meta = extract_tokens(images, tmp_path / "tok", tok, image_size=32)  # --image-size overrides
    assert meta["image_size"] == 32 and meta["grid"] == [8, 8]
    assert meta["augmentations"] == ["center"]  # no flip unless asked for
    with pytest.raises(DataError, match="pass --image-size N"):
        tokenizer_image_size(images, {}, PoolTokenizer(), None)


def _pool_tokenizer(device: str) -> PoolTokenizer:
    return PoolTokenizer()


def test_two_processes_give_the_same_tokens_per_key_as_one(tmp_path):
    """A gloo group of two CPU processes splits the source shards; one meta.json, the same tokens per key."""
    from nar.data.tokens import extract_tokens_parallel

    root = tmp_path / "img"
    rec = write_split(root, "train", list(range(9)), make_sample=_gradient_image, shard_size=2)  # 5 shards
    write_meta(root, "image", [rec], classes=["x", "y"], image_size=16)
    one = extract_tokens(root, tmp_path / "one", PoolTokenizer(), flip=True, batch_size=3)
    two = extract_tokens_parallel(root, tmp_path / "two", _pool_tokenizer, 2, flip=True, batch_size=3)

    def tokens(out) -> dict[str, bytes]:
        return {s["__key__"]: s["tokens.npy"] for shard in SplitIndex.load(out, "train").shards for s in iter_tar(shard)}

    assert tokens(tmp_path / "two") == tokens(tmp_path / "one") and len(tokens(tmp_path / "one")) == 9
    assert two["splits"] == one["splits"] and two["grid"] == one["grid"] == [4, 4]
    assert sorted(p.name for p in (tmp_path / "two" / "train").glob("_progress*")) == ["_progress.0of2.json",
                                                                                     "_progress.1of2.json"]
    assert not (tmp_path / "two" / ".nar.lock").exists()
    with pytest.raises(DataError, match="no split 'nope'"):  # an error in the workers is raised here
        extract_tokens_parallel(root, tmp_path / "three", _pool_tokenizer, 2, splits=["nope"])


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_foreign_shards_unreadable_sources_and_odd_keys(tmp_path):
    """Token extraction over an indexed shard set: a class that is not an integer skips its sample (named), keys
    made by ``tar -C dir .`` (``./a0``) become keys a shard can hold, a source shard that cannot be read is left
    unwritten while the others are written (the run then ends with an error naming it, and the same command
    finishes once it is back), and one damaged part-way keeps what it read and names the loss."""
    from nar.data.index import index_shards

    png = _gradient_image(0)["png"]
    src = tmp_path / "src"
    src.mkdir()
    _tar(src / "s-0.tar", [("./a0.png", png), ("./a0.cls", b"1"), ("./a1.png", png), ("./a1.cls", b"n01440764"),
                           ("./d.x/a2.png", png), ("./d.x/a2.cls", b"0")])
    _tar(src / "s-1.tar", [(f"b{i}.{ext}", data) for i in range(3) for ext, data in (("png", png), ("cls", b"0"))])
    _tar(src / "s-2.tar", [(f"c{i}.{ext}", data) for i in range(4) for ext, data in (("png", png), ("cls", b"1"))])
    index_shards(str(src / "s-{0..2}.tar"), src, classes=["x", "y"])
    with tarfile.open(src / "s-2.tar") as tar:
        cut = tar.getmember("c3.png").offset_data + 10  # a cut member: the sample before it may be partial too
    (src / "s-2.tar").write_bytes((src / "s-2.tar").read_bytes()[:cut])
    (src / "s-1.tar").rename(tmp_path / "away.tar")

    out = tmp_path / "tok"
    with pytest.raises(DataError, match="1 of 3 shards were not written"):
        extract_tokens(src, out, PoolTokenizer(), batch_size=2, image_size=16)
    first = {s["__key__"]: s for s in iter_tar(out / "train" / "train-000000.tar")}
    assert sorted(first) == ["a0", "d_x_a2"] and first["a0"]["cls"] == b"1"
    assert not (out / "train" / "train-000001.tar").exists()

    (tmp_path / "away.tar").rename(src / "s-1.tar")
    meta = extract_tokens(src, out, PoolTokenizer(), batch_size=2, image_size=16)
    train = meta["splits"]["train"]
    assert train["shard_samples"] == [2, 3, 2]
    reasons = dict(train["skipped"]["files"])
    assert "is not an integer" in reasons[f"{src / 's-0.tar'}:./a1"]
    assert "samples after the first 2 are lost" in reasons[str(src / "s-2.tar")]


def test_indexing_into_another_kind_of_dataset_changes_nothing(tmp_path, images):
    from nar.data.index import index_shards

    out = tmp_path / "tok"
    extract_tokens(images, out, PoolTokenizer(), batch_size=2, tokenizer_name="pool")
    labels = (out / "train" / "labels.npy").read_bytes()
    with pytest.raises(DataError, match="describes a 'tokens' dataset"):
        index_shards(str(images / "train" / "train-000000.tar"), out)  # other labels than the tokens'
    assert (out / "train" / "labels.npy").read_bytes() == labels


def _length_encoder(slots: int = 4, width: int = 2):
    """A stand-in text encoder whose features hold each caption's length (to check captions meet their samples)."""

    def encode(captions):
        feats = torch.tensor([float(len(c)) for c in captions])[:, None, None].expand(-1, slots, width)
        return feats.clone(), torch.ones(len(captions), slots, dtype=torch.bool)

    return encode


def test_a_bad_caption_skips_its_sample_and_odd_json_is_ignored(tmp_path):
    """A caption that is not UTF-8 skips (and names) only its sample; a json field that is valid JSON but not an
    object is ignored, as invalid JSON is."""
    odd = {1: {"txt": b"caf\xe9 in latin-1"}, 2: {"json": b"[1, 2]"}, 3: {"json": b"7"}}

    def sample(i: int) -> dict:
        return {**_gradient_image(i), **odd.get(i, {})}

    n = 5
    src = tmp_path / "img"
    rec = write_split(src, "train", list(range(n)), make_sample=sample, shard_size=n)
    write_meta(src, "image", [rec], classes=["x", "y"], image_size=16)
    meta = extract_tokens(src, tmp_path / "tok", PoolTokenizer(), batch_size=n, text_encoder=_length_encoder())
    train = meta["splits"]["train"]
    assert train["samples"] == n - 1 and train["skipped"]["count"] == 1
    (name, reason), = train["skipped"]["files"]
    assert name.endswith(":000000001") and "UTF-8" in reason
    got = {s["__key__"]: s for s in iter_tar(tmp_path / "tok" / "train" / "train-000000.tar")}
    assert sorted(got) == [f"{i:09d}" for i in range(n) if i != 1]
    for key, s in got.items():
        assert np.load(io.BytesIO(s["capfeat.npy"]))[0, 0] == len(s["txt"])  # each caption with its own sample
        fields = __import__("json").loads(s["json"])
        assert fields.get("i") == (None if int(key) in odd else int(key)) and fields["source_key"] == key


def test_resuming_with_another_text_encoder_is_refused(images, tmp_path):
    """The text encoder (its name, and its features' slots and width) is part of the settings a resumed extraction
    must share; meta.json records it. A folder begun before it was recorded is refused with its own message."""
    import json

    from nar.data.shards import fingerprint, shard_location

    out = tmp_path / "tok"
    meta = extract_tokens(images, out, PoolTokenizer(), batch_size=2, text_encoder=_length_encoder(4, 2),
                          text_encoder_name="minilm:/m:4")
    assert (meta["text_encoder"], meta["caption_len"], meta["caption_dim"]) == ("minilm:/m:4", 4, 2)
    tok = PoolTokenizer()
    extract_tokens(images, out, tok, batch_size=2, text_encoder=_length_encoder(4, 2), text_encoder_name="minilm:/m:4")
    assert tok.calls == 0  # same settings: every shard already done
    for other in (dict(text_encoder=_length_encoder(5, 2), text_encoder_name="minilm:/m:4"),  # shape differs
                  dict(text_encoder=_length_encoder(4, 3)),
                  dict(text_encoder=_length_encoder(4, 2), text_encoder_name="t5:/m:4"),  # same shape, other model
                  dict()):
        with pytest.raises(DataError, match="different inputs or settings"):
            extract_tokens(images, out, tok, batch_size=2, **other)
    assert tok.calls == 0

    # a folder written before the encoder was recorded (params with only text=True): its encoder is unknown
    shards = [str(shard_location(images, s)) for s in read_meta(images)["splits"]["train"]["shards"]]
    old = fingerprint(shards, shard_size=1, size=16, flip=False, ten_crop=False, crop_range=1.1, tokenizer="", text=True)
    progress = out / "train" / "_progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "fingerprint": old}))
    with pytest.raises(DataError, match="did not record the text encoder"):
        extract_tokens(images, out, tok, batch_size=2, text_encoder=_length_encoder(4, 2),
                       text_encoder_name="minilm:/m:4")
    assert tok.calls == 0


class _CleaningEncoder:
    """A stand-in text encoder that says how it cleans captions, as nar.text.TextEncoder does (clean_captions)."""

    def __init__(self, how: str) -> None:
        self.clean_captions = how
        self.encode = _length_encoder(4, 2)

    def __call__(self, captions):
        return self.encode(captions)


def test_caption_cleaning_is_recorded_and_a_resume_with_the_other_is_refused(images, tmp_path):
    """How the text encoder cleaned the captions (text.clean_captions) joins the settings a resumed extraction
    must share, and meta.json: features of cleaned and of uncleaned captions never share a folder. "none" leaves
    the settings as they were before the key existed, so a folder begun then resumes as before."""
    import json

    from nar.data.shards import fingerprint, shard_location

    for how, other in (("official", "none"), ("none", "official")):
        out = tmp_path / how
        meta = extract_tokens(images, out, PoolTokenizer(), batch_size=2, text_encoder=_CleaningEncoder(how),
                              text_encoder_name="t5:/m:4")
        assert meta["clean_captions"] == how and meta["text_encoder"] == "t5:/m:4"
        tok = PoolTokenizer()
        extract_tokens(images, out, tok, batch_size=2, text_encoder=_CleaningEncoder(how), text_encoder_name="t5:/m:4")
        assert tok.calls == 0  # the same cleaning: every shard already done
        with pytest.raises(DataError, match=f"clean_captions '{how}'.*this run's is '{other}'.*--clean-captions {how}"):
            extract_tokens(images, out, tok, batch_size=2, text_encoder=_CleaningEncoder(other),
                           text_encoder_name="t5:/m:4")
        assert tok.calls == 0

    # "none": the fingerprint of the settings before clean_captions existed; an encoder that does not say cleans nothing
    shards = [str(shard_location(images, s)) for s in read_meta(images)["splits"]["train"]["shards"]]
    before = fingerprint(shards, shard_size=1, size=16, flip=False, ten_crop=False, crop_range=1.1, tokenizer="",
                         text=True, text_encoder="t5:/m:4", caption_shape=[4, 2])
    assert json.loads((tmp_path / "none" / "train" / "_progress.json").read_text())["fingerprint"] == before
    tok = PoolTokenizer()
    extract_tokens(images, tmp_path / "none", tok, batch_size=2, text_encoder=_length_encoder(4, 2),
                   text_encoder_name="t5:/m:4")
    assert tok.calls == 0


def test_a_resumed_text_extraction_reads_its_progress_once(images, tmp_path, monkeypatch):
    """The progress files of a split are read by write_split's resume check alone: the refusal of a folder begun
    before the text encoder was recorded reads them only once that check has failed."""
    from nar.data import tokens

    out = tmp_path / "tok"
    extract_tokens(images, out, PoolTokenizer(), batch_size=2, text_encoder=_length_encoder(4, 2),
                   text_encoder_name="minilm:/m:4")

    def refuse(split_dir):
        raise AssertionError(f"{split_dir}: progress files read outside write_split")

    monkeypatch.setattr(tokens, "_progress_files", refuse)
    tok = PoolTokenizer()
    extract_tokens(images, out, tok, batch_size=2, text_encoder=_length_encoder(4, 2), text_encoder_name="minilm:/m:4")
    assert tok.calls == 0


def test_text_feature_shape_reads_a_text_encoders_own_sizes():
    from nar.data.tokens import text_feature_shape

    class Sized:  # nar.text.TextEncoder's max_len and feature_dim: no caption needs encoding
        max_len, feature_dim = 7, 3

        def __call__(self, captions):
            raise AssertionError("not called")

    assert text_feature_shape(Sized()) == (7, 3) and text_feature_shape(_length_encoder(5, 4)) == (5, 4)


def test_a_text_encoder_whose_feature_shape_changes_is_refused(images, tmp_path):
    """Slots padded to each batch's longest caption would mix capfeat shapes in one folder (training's collate
    fails on them later): the extraction stops, naming the shard."""

    def per_batch(captions):
        slots = len(captions)  # 1 for the probe, then the batch size
        return torch.zeros(len(captions), slots, 2), torch.ones(len(captions), slots, dtype=torch.bool)

    with pytest.raises(DataError, match=r"\[2, 2\] caption features .*train-000000.tar, not the \[1, 2\]"):
        extract_tokens(images, tmp_path / "tok", PoolTokenizer(), batch_size=2, text_encoder=per_batch)


def test_cli_tokens_names_the_text_encoder(images, tmp_path, monkeypatch):
    """`nar data tokens --text-encoder KIND --text-encoder-path P --caption-len L` passes ``KIND:abs(P):L``;
    ``--clean-captions`` reaches the encoder, and meta.json records it (default "none")."""
    from nar_data_testutil import run_data_cli

    from nar.cli import data as data_cli

    def encoder(kind, path, max_len, device, clean_captions="none"):
        made = _CleaningEncoder(clean_captions)
        made.encode = _length_encoder(max_len, 2)
        return made

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_cli, "_tokenizer_on", lambda path, config, device: PoolTokenizer())
    monkeypatch.setattr(data_cli, "_text_encoder_on", encoder)
    argv = ["data", "tokens", str(images), "--tokenizer", "pool", "--device", "cpu", "--text-encoder", "t5",
            "--text-encoder-path", "t5-xl", "--caption-len", "7"]
    assert run_data_cli([*argv, "--out", "tok"]) == 0
    meta = read_meta(tmp_path / "tok")
    assert meta["text_encoder"] == f"t5:{tmp_path / 't5-xl'}:7" and meta["caption_len"] == 7
    assert meta["clean_captions"] == "none"
    assert run_data_cli([*argv, "--out", "clean", "--clean-captions", "official"]) == 0
    assert read_meta(tmp_path / "clean")["clean_captions"] == "official"


def test_pixels_tokenized_during_training_take_the_tokenizers_size(tmp_path):
    """Image shards without a fixed size (an indexed foreign set) are fed at the tokenizer's own image_size, not a
    fixed 256; a size whose token grid is not model.grid is refused at start, naming data.image_size."""
    from nar.config import load_config
    from nar.errors import ConfigError
    from nar.lightning.data import generator_datamodule
    from nar.runs import TrainConfig
    from nar.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("vq-tiny-emoji")
    size = tokenizer.config.image_size
    grid = list(tokenizer.grid_shape((size, size)))
    rec = write_split(tmp_path / "img", "train", list(range(2)), make_sample=_gradient_image, shard_size=2)
    write_meta(tmp_path / "img", "image", [rec], classes=["x", "y"])  # no image_size: sizes vary

    def datamodule(*overrides: str):
        return generator_datamodule(load_config(TrainConfig, [], [f"data.root={tmp_path / 'img'}", "data.num_workers=0",
                                                                  "tokenizer.path=vq-tiny-emoji", *overrides]))

    assert datamodule(f"model.grid={grid}").cfg.image_size == size
    with pytest.raises(ConfigError, match=rf"data.image_size.*{2 * size}.*model.grid.*data.image_size={size}"):
        datamodule(f"model.grid={grid}", f"data.image_size={2 * size}")


def test_clips_tokenized_during_training_are_checked_against_the_grid(tmp_path):
    """Video shards tokenized as the generator trains: clips stored at twice the tokenizer's size gave a grid
    error only at the first batch, naming neither the size nor the fix; now refused at start, naming
    data.image_size, and accepted at the size that fits."""
    from nar.config import load_config
    from nar.errors import ConfigError
    from nar.lightning.data import generator_datamodule
    from nar.runs import TrainConfig
    from nar.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("vq-video-tiny-atari")
    size, frames = tokenizer.config.image_size, tokenizer.config.num_frames
    grid = list(tokenizer.grid_shape((frames, size, size)))

    def clip(i: int) -> dict:
        return {"frames.npy": np.full((frames, 2 * size, 2 * size, 3), 40 * i, dtype=np.uint8), "cls": i}

    rec = write_split(tmp_path / "vid", "train", list(range(2)), make_sample=clip, shard_size=2)
    write_meta(tmp_path / "vid", "video", [rec], classes=["a", "b"], image_size=2 * size, frames=frames)

    def datamodule(*overrides: str):
        return generator_datamodule(load_config(TrainConfig, [], [f"data.root={tmp_path / 'vid'}", "data.num_workers=0",
                                                                  "tokenizer.path=vq-video-tiny-atari",
                                                                  f"model.grid={grid}", *overrides]))

    with pytest.raises(ConfigError, match=rf"data.image_size.*{2 * size} px.*{frames}-frame.*data.image_size={size}"):
        datamodule()
    assert datamodule(f"data.image_size={size}").cfg.image_size == size


def test_meta_records_the_tokenizer_and_source_as_absolute_paths(images, tmp_path, monkeypatch):
    """`nar data tokens img --tokenizer tok.pt` from one directory: meta.json names the tokenizer file and the source
    folder absolutely, so `nar train data.root=...` from any other directory finds them; a preset name stays a name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok.pt").write_bytes(b"")  # only its path matters here
    meta = extract_tokens(images.name, "tok", PoolTokenizer(), batch_size=2, tokenizer_name="tok.pt")
    assert meta["tokenizer"] == str(tmp_path / "tok.pt") and meta["source"] == str(images)
    assert read_meta(tmp_path / "tok")["tokenizer"] == str(tmp_path / "tok.pt")
    meta = extract_tokens(images.name, "preset", PoolTokenizer(), batch_size=2, tokenizer_name="vq-tiny-emoji")
    assert meta["tokenizer"] == "vq-tiny-emoji"


@pytest.fixture
def train_and_val(tmp_path):
    """An image folder with a train and a val split, for token folders written one split at a time."""
    root = tmp_path / "img2"
    recs = [write_split(root, split, list(range(3)), make_sample=_gradient_image, shard_size=2)
            for split in ("train", "val")]
    write_meta(root, "image", recs, classes=["x", "y"], image_size=16)
    return root


def _folder_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_split_written_with_other_folder_wide_settings_is_refused(train_and_val, tmp_path):
    """meta.json holds one tokenizer, cleaning, augmentation set, … for the whole folder: `--splits val` after
    `--splits train` with another of them is refused before anything is written (naming the field, both values
    and the split written with the recorded ones), and leaves meta.json and train as they were; with the same
    settings val joins the folder."""
    out = tmp_path / "tok"
    same = dict(batch_size=2, tokenizer_name="pool", text_encoder_name="t5:/m:4")
    extract_tokens(train_and_val, out, PoolTokenizer(), splits=["train"], text_encoder=_CleaningEncoder("official"),
                   **same)
    before = _folder_bytes(out)
    for other, field in ((dict(text_encoder=_CleaningEncoder("none")), "clean_captions: 'official' recorded, "
                                                                        "'none' in this run"),
                         (dict(text_encoder=_CleaningEncoder("official"), flip=True), "augmentations"),
                         (dict(), "caption_features")):
        tok = PoolTokenizer()
        with pytest.raises(DataError, match=rf"{re.escape(str(out))}.*{field}.*written with them: train.*--overwrite"):
            extract_tokens(train_and_val, out, tok, splits=["val"], **same, **other)
        assert tok.calls == 0 and _folder_bytes(out) == before and not (out / "val").exists()
    with pytest.raises(DataError, match=r"tokenizer: 'pool' recorded, 'other' in this run"):
        extract_tokens(train_and_val, out, PoolTokenizer(), splits=["val"], text_encoder=_CleaningEncoder("official"),
                       **{**same, "tokenizer_name": "other"})
    meta = extract_tokens(train_and_val, out, PoolTokenizer(), splits=["val"], text_encoder=_CleaningEncoder("official"),
                          **same)
    assert sorted(meta["splits"]) == ["train", "val"] and meta["clean_captions"] == "official"
    assert _folder_bytes(out / "train") == {k.removeprefix("train/"): v for k, v in before.items()
                                            if k.startswith("train/")}


def test_an_older_meta_without_clean_captions_takes_it_as_none(train_and_val, tmp_path):
    """A folder whose meta.json predates clean_captions (its captions uncleaned) takes a val split written with
    "none", and refuses one written with "official"."""
    import json

    out = tmp_path / "tok"
    same = dict(batch_size=2, text_encoder_name="t5:/m:4")
    extract_tokens(train_and_val, out, PoolTokenizer(), splits=["train"], text_encoder=_CleaningEncoder("none"), **same)
    meta = json.loads((out / "meta.json").read_text())
    del meta["clean_captions"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="clean_captions: 'none' recorded, 'official' in this run"):
        extract_tokens(train_and_val, out, PoolTokenizer(), splits=["val"], text_encoder=_CleaningEncoder("official"),
                       **same)
    meta = extract_tokens(train_and_val, out, PoolTokenizer(), splits=["val"], text_encoder=_CleaningEncoder("none"),
                          **same)
    assert sorted(meta["splits"]) == ["train", "val"]


def _seeded_tokenizer_file(path, seed: int):
    """A tokenizer file as training one leaves it: vq-tiny-emoji with weights drawn from ``seed``."""
    from nar.tokenizers import load_tokenizer, save_tokenizer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return save_tokenizer(load_tokenizer("vq-tiny-emoji"), path)


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_tokenizer_file_retrained_in_place_is_refused(train_and_val, tmp_path):
    """The tokenizer file's content, not only its path, is a setting of the folder: meta.json records its sha256.
    Retrained into the same path, the file is refused for the split it wrote (the resume) and for another split
    (meta.json's folder-wide settings), each refusal naming the tokenizer and --overwrite, and nothing is written;
    with the file it was written with, the split resumes with nothing to do and another joins the folder."""
    tok_file = _seeded_tokenizer_file(tmp_path / "tokenizer.pt", 0)
    written_with = tok_file.read_bytes()
    out = tmp_path / "tok"
    same = dict(batch_size=2, tokenizer_name=str(tok_file))
    meta = extract_tokens(train_and_val, out, PoolTokenizer(), splits=["train"], **same)
    assert meta["tokenizer_sha256"] == _sha256(tok_file) and meta["tokenizer"] == str(tok_file)
    before = _folder_bytes(out)

    _seeded_tokenizer_file(tok_file, 1)  # retrained: the same path, other weights
    assert tok_file.read_bytes() != written_with
    tok = PoolTokenizer()
    with pytest.raises(DataError, match=rf"tokenizer file {re.escape(str(tok_file))} changed.*--overwrite"):
        extract_tokens(train_and_val, out, tok, splits=["train"], **same)
    with pytest.raises(DataError, match=r"tokenizer_sha256: .*\(--tokenizer \(its file's content changed\)\).*"
                                        r"written with them: train.*--overwrite"):
        extract_tokens(train_and_val, out, tok, splits=["val"], **same)
    assert tok.calls == 0 and _folder_bytes(out) == before and not (out / "val").exists()

    tok_file.write_bytes(written_with)  # the file the folder was written with
    extract_tokens(train_and_val, out, tok, splits=["train"], **same)
    assert tok.calls == 0  # resumed: every shard already done
    meta = extract_tokens(train_and_val, out, tok, splits=["val"], **same)
    assert sorted(meta["splits"]) == ["train", "val"] and meta["tokenizer_sha256"] == _sha256(tok_file)


def test_a_half_written_split_refuses_a_tokenizer_changed_since(images, tmp_path):
    """A split whose run was stopped before meta.json was written, resumed with its tokenizer file retrained since
    (modified after the split's shards), is refused naming the file; one begun by an older version, which did not
    record the file's content, is refused saying so. A preset name (no file) records no content."""
    import json
    import os

    from nar.data.shards import fingerprint, shard_location

    tok_file = _seeded_tokenizer_file(tmp_path / "tokenizer.pt", 0)
    out = tmp_path / "tok"
    extract_tokens(images, out, PoolTokenizer(), batch_size=2, tokenizer_name=str(tok_file))
    (out / "meta.json").unlink()  # stopped after the last shard, before meta.json
    progress = out / "train" / "_progress.json"
    _seeded_tokenizer_file(tok_file, 1)
    os.utime(tok_file, (progress.stat().st_mtime + 10,) * 2)
    tok = PoolTokenizer()
    with pytest.raises(DataError, match=rf"tokenizer file {re.escape(str(tok_file))} changed after.*--overwrite"):
        extract_tokens(images, out, tok, batch_size=2, tokenizer_name=str(tok_file))

    shards = [str(shard_location(images, s)) for s in read_meta(images)["splits"]["train"]["shards"]]
    old = fingerprint(shards, shard_size=1, size=16, flip=False, ten_crop=False, crop_range=1.1,
                      tokenizer=str(tok_file), text=False)
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "fingerprint": old}))
    with pytest.raises(DataError, match=rf"older nar.*content of the tokenizer file {re.escape(str(tok_file))}"):
        extract_tokens(images, out, tok, batch_size=2, tokenizer_name=str(tok_file))
    assert tok.calls == 0

    meta = extract_tokens(images, tmp_path / "preset", PoolTokenizer(), batch_size=2, tokenizer_name="vq-tiny-emoji")
    assert "tokenizer_sha256" not in meta
    written = json.loads((tmp_path / "preset" / "train" / "_progress.json").read_text())["fingerprint"]
    assert written == fingerprint(shards, shard_size=1, size=16, flip=False, ten_crop=False, crop_range=1.1,
                                  tokenizer="vq-tiny-emoji", text=False)  # as before the content was recorded


def test_a_text_encoder_folder_changed_in_place_is_refused(train_and_val, tmp_path):
    """The text encoder's model folder (``kind:path:len``) is identified by its files' names, sizes and modification
    times: new weights at the same path are refused for the split written (the resume) and for another split;
    a hidden file (a download tool's cache) may change; the unchanged folder resumes and adds a split."""
    import os

    model = tmp_path / "t5-xl"
    (model / ".cache").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x01" * 64)
    out = tmp_path / "tok"
    same = dict(batch_size=2, tokenizer_name="pool", text_encoder_name=f"t5:{model}:4")
    meta = extract_tokens(train_and_val, out, PoolTokenizer(), splits=["train"], text_encoder=_length_encoder(4, 2),
                          **same)
    assert meta["text_encoder"] == f"t5:{model}:4" and len(meta["text_encoder_files"]) == 64
    before = _folder_bytes(out)
    stamp = weights.stat().st_mtime_ns
    (model / ".cache" / "download.lock").write_text("touched by a download tool")
    tok = PoolTokenizer()
    extract_tokens(train_and_val, out, tok, splits=["train"], text_encoder=_length_encoder(4, 2), **same)
    assert tok.calls == 0  # resumed

    weights.write_bytes(b"\x02" * 64)  # other weights, the same size
    os.utime(weights, ns=(stamp + 10**10,) * 2)
    with pytest.raises(DataError, match=rf"text encoder's files in {re.escape(str(model))} changed.*--overwrite"):
        extract_tokens(train_and_val, out, tok, splits=["train"], text_encoder=_length_encoder(4, 2), **same)
    with pytest.raises(DataError, match=r"text_encoder_files: .*\(--text-encoder-path \(its files changed\)\).*"
                                        r"written with them: train.*--overwrite"):
        extract_tokens(train_and_val, out, tok, splits=["val"], text_encoder=_length_encoder(4, 2), **same)
    assert tok.calls == 0 and _folder_bytes(out) == before

    weights.write_bytes(b"\x01" * 64)
    os.utime(weights, ns=(stamp, stamp))  # the folder as it was (a copy that keeps modification times)
    meta = extract_tokens(train_and_val, out, tok, splits=["val"], text_encoder=_length_encoder(4, 2), **same)
    assert sorted(meta["splits"]) == ["train", "val"]


def test_cli_tokens_refuses_a_tokenizer_retrained_into_its_file(tmp_path):
    """The reviewer's reproduction: `nar data tokens` with tokenizer.pt, the tokenizer retrained into the same
    tokenizer.pt, the same command again: refused (before, it resumed and kept the old codes under meta.json's
    name of the new tokenizer); with the file unchanged, the same command resumes."""
    import argparse

    from nar.cli import data as data_cli
    from nar.data.embedded.emoji import build_emoji

    build_emoji(tmp_path / "emoji", limit=4, size=32, val_fraction=0.0)
    tok_file = _seeded_tokenizer_file(tmp_path / "tokenizer.pt", 0)
    parser = argparse.ArgumentParser(prog="nar")
    data_cli.register(parser.add_subparsers(dest="command"))
    argv = ["data", "tokens", str(tmp_path / "emoji"), "--out", str(tmp_path / "tok"), "--tokenizer", str(tok_file),
            "--device", "cpu", "--batch-size", "4"]
    assert data_cli.run_tokens(parser.parse_args(argv)) == 0
    before = _folder_bytes(tmp_path / "tok")
    assert data_cli.run_tokens(parser.parse_args(argv)) == 0 and _folder_bytes(tmp_path / "tok") == before
    _seeded_tokenizer_file(tok_file, 1)
    with pytest.raises(DataError, match=rf"tokenizer file {re.escape(str(tok_file))} changed.*--overwrite"):
        data_cli.run_tokens(parser.parse_args(argv))
    assert _folder_bytes(tmp_path / "tok") == before
