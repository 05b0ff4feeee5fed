"""`nar data import-codes`: the official extract layout (plain, flip, ten_crop + its ten_crop_105 companion)
becomes token shards; every code and label arrives, centre view first, the others in the official order."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from nar.data.official import OFFICIAL_TEN_CROP, import_codes
from nar.data.shards import SplitIndex, iter_tar, read_meta
from nar.errors import DataError

N, L, VOCAB = 7, 16, 50  # 16 codes per view: a 4×4 grid


def _extract(code_path, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What extract_codes_c2i.py writes: imagenet64_codes/<i>.npy [1, views, L] and imagenet64_labels/<i>.npy [1]."""
    return _extract_n(code_path, N, views, seed)


def _extract_n(code_path, n: int, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, VOCAB, (n, 1, views, L))
    labels = rng.integers(0, 3, n)
    for sub in ("imagenet64_codes", "imagenet64_labels"):
        (code_path / sub).mkdir(parents=True)
    for i in range(n):
        np.save(code_path / "imagenet64_codes" / f"{i}.npy", codes[i])
        np.save(code_path / "imagenet64_labels" / f"{i}.npy", labels[i : i + 1])
    return codes[:, 0], labels


def _stored(out, split: str = "train") -> tuple[list[dict], np.ndarray, list[int]]:
    """The split's samples, tokens and classes in image order (the index in their json), whatever order they are
    stored in (train: shuffled)."""
    samples = [s for shard in SplitIndex.load(out, split).shards for s in iter_tar(shard)]
    samples.sort(key=lambda s: json.loads(s["json"])["index"])
    tokens = np.stack([np.load(io.BytesIO(s["tokens.npy"])) for s in samples])
    return samples, tokens, [int(s["cls"]) for s in samples]


def _stored_order(out, split: str) -> list[int]:
    """The image index of each sample of ``split`` in stored order."""
    return [json.loads(s["json"])["index"] for shard in SplitIndex.load(out, split).shards for s in iter_tar(shard)]


def test_ten_crop_with_its_105_companion(tmp_path):
    main, labels = _extract(tmp_path / "imagenet_code_c2i_flip_ten_crop", 10, 0)
    extra, _ = _extract(tmp_path / "imagenet_code_c2i_flip_ten_crop_105", 10, 1)
    for i in range(N):  # the companion's labels are the same images' labels
        np.save(tmp_path / "imagenet_code_c2i_flip_ten_crop_105" / "imagenet64_labels" / f"{i}.npy", labels[i : i + 1])
    out = tmp_path / "tokens"
    meta = import_codes(tmp_path / "imagenet_code_c2i_flip_ten_crop", out, codebook_size=VOCAB, shard_size=3)
    order = [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]  # torchvision TenCrop order, centre moved first
    assert meta["augmentations"] == [OFFICIAL_TEN_CROP[i] for i in order] + [OFFICIAL_TEN_CROP[i] + "_105" for i in order]
    assert meta["augmentations"][:2] == ["center", "top_left"] and meta["augmentations"][5] == "top_right_flip"
    assert meta["grid"] == [4, 4] and meta["codebook_size"] == VOCAB and meta["image_size"] == 64
    assert meta["splits"]["train"]["shard_samples"] == [3, 3, 1] and meta["crop_range"] == 1.1
    samples, tokens, classes = _stored(out)
    assert sorted(s["__key__"] for s in samples) == [f"{i:09d}" for i in range(N)]
    assert tokens.dtype == np.int32 and tokens.shape == (N, 20, 4, 4)
    want = np.concatenate([main[:, order], extra[:, order]], axis=1).reshape(N, 20, 4, 4)
    assert np.array_equal(tokens, want) and classes == labels.tolist()
    assert SplitIndex.load(out, "train").labels.tolist() == labels[_stored_order(out, "train")].tolist()
    assert read_meta(out)["classes"] == [str(c) for c in range(max(labels) + 1)]


def test_flip_and_plain_extractions_and_bad_files(tmp_path, capsys):
    from nar_data_testutil import run_data_cli

    codes, labels = _extract(tmp_path / "imagenet_code_c2i_flip", 2, 2)
    (tmp_path / "imagenet_code_c2i_flip" / "imagenet64_labels" / "3.npy").unlink()  # a missing label: skipped
    np.save(tmp_path / "imagenet_code_c2i_flip" / "imagenet64_codes" / "5.npy", np.full((1, 2, L), VOCAB))
    (tmp_path / "map.txt").write_text("n02 two\nn00 zero\nn01 one\n")
    assert run_data_cli(["data", "import-codes", str(tmp_path / "imagenet_code_c2i_flip"), "--out", str(tmp_path / "t"),
                         "--codebook-size", str(VOCAB), "--synset-map", str(tmp_path / "map.txt")]) == 0
    assert "2 views: center, center_flip" in capsys.readouterr().out
    meta = read_meta(tmp_path / "t")
    assert meta["classes"] == ["n00", "n01", "n02"] and meta["class_names"] == ["zero", "one", "two"]
    skipped = dict(meta["splits"]["train"]["skipped"]["files"])
    assert any(p.endswith("labels/3.npy") and "missing" in r for p, r in skipped.items())
    assert any(p.endswith("codes/5.npy") and f"code {VOCAB} outside" in r for p, r in skipped.items())
    samples, tokens, classes = _stored(tmp_path / "t")
    kept = [i for i in range(N) if i not in (3, 5)]
    assert np.array_equal(tokens, codes[kept].reshape(-1, 2, 4, 4)) and classes == labels[kept].tolist()

    plain = tmp_path / "imagenet_code_plain"
    codes, _ = _extract(plain, 1, 3)
    meta = import_codes(plain, tmp_path / "p", codebook_size=VOCAB, grid=(2, 8))
    assert meta["augmentations"] == ["center"] and meta["grid"] == [2, 8]
    assert np.array_equal(_stored(tmp_path / "p")[1], codes.reshape(N, 1, 2, 8))
    with pytest.raises(DataError, match="not a square grid; pass --grid"):
        np.save(plain / "imagenet64_codes" / "0.npy", np.zeros((1, 1, 12), dtype=np.int64))
        import_codes(plain, tmp_path / "q", codebook_size=VOCAB)


def test_second_split_keeps_the_classes(tmp_path):
    """A val split holding the first classes only, imported after train, keeps meta.json's classes: the train
    samples of the other classes stay valid."""
    _extract(tmp_path / "train_codes", 1, 4)
    _extract(tmp_path / "val_codes", 1, 5)
    for i in range(N):  # train: every image its own class; val: class 0 only
        np.save(tmp_path / "train_codes" / "imagenet64_labels" / f"{i}.npy", np.array([i]))
        np.save(tmp_path / "val_codes" / "imagenet64_labels" / f"{i}.npy", np.array([0]))
    out = tmp_path / "tokens"
    import_codes(tmp_path / "train_codes", out, codebook_size=VOCAB)
    meta = import_codes(tmp_path / "val_codes", out, split="val", codebook_size=VOCAB)
    assert meta["classes"] == [str(c) for c in range(N)] == read_meta(out)["classes"]


def test_unreadable_first_code_file(tmp_path):
    """A corrupt ``0.npy`` is skipped and reported like any other bad file (the shapes come from the next
    readable one); when none is readable the error names the folder."""
    codes, _ = _extract(tmp_path / "imagenet_code_c2i_flip", 2, 6)
    folder = tmp_path / "imagenet_code_c2i_flip" / "imagenet64_codes"
    (folder / "0.npy").write_bytes((folder / "0.npy").read_bytes()[:60])  # truncated by a killed extraction
    meta = import_codes(tmp_path / "imagenet_code_c2i_flip", tmp_path / "t", codebook_size=VOCAB)
    assert meta["splits"]["train"]["samples"] == N - 1
    assert [(p.endswith("codes/0.npy"), r.startswith("cannot read")) for p, r in
            meta["splits"]["train"]["skipped"]["files"]] == [(True, True)]
    assert np.array_equal(_stored(tmp_path / "t")[1], codes[1:].reshape(N - 1, 2, 4, 4))
    for i in range(N):
        (folder / f"{i}.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=f"{folder}: none of its {N} <i>.npy files"):
        import_codes(tmp_path / "imagenet_code_c2i_flip", tmp_path / "u", codebook_size=VOCAB)


def test_ten_crop_given_as_dot(tmp_path, monkeypatch):
    """``.`` from inside a ten-crop extraction is still a ten-crop one, with its ``_105`` companion mixed in."""
    _extract(tmp_path / "imagenet_code_c2i_flip_ten_crop", 10, 7)
    _extract(tmp_path / "imagenet_code_c2i_flip_ten_crop_105", 10, 7)
    monkeypatch.chdir(tmp_path / "imagenet_code_c2i_flip_ten_crop")
    meta = import_codes(".", tmp_path / "tokens", codebook_size=VOCAB)
    assert len(meta["augmentations"]) == 20 and meta["augmentations"][-1].endswith("_105")
    assert meta["crop_range"] == 1.1


def test_train_is_written_shuffled_each_image_with_its_own_codes_and_label(tmp_path):
    """The extraction is in ImageFolder order (class by class) and training reads whole shards: ``train`` is
    written in a seeded random order, image ``i``'s codes (both folders') with image ``i``'s label, the same for
    the same seed; another split keeps the image order."""
    n, classes = 30, 6
    codes = tmp_path / "imagenet_code_c2i_flip_ten_crop"
    main, _ = _extract_n(codes, n, 10, 8)
    extra, _ = _extract_n(tmp_path / "imagenet_code_c2i_flip_ten_crop_105", n, 10, 9)
    labels = np.arange(n) // (n // classes)  # class-sorted, as ImageFolder lists the images
    for folder in (codes, tmp_path / "imagenet_code_c2i_flip_ten_crop_105"):
        for i in range(n):
            np.save(folder / "imagenet64_labels" / f"{i}.npy", labels[i : i + 1])
    import_codes(codes, tmp_path / "a", codebook_size=VOCAB, shard_size=8)
    stored = _stored_order(tmp_path / "a", "train")
    assert sorted(stored) == list(range(n)) and stored != list(range(n))
    same = np.mean(labels[stored][1:] == labels[stored][:-1])
    assert same < np.mean(labels[1:] == labels[:-1]) / 2
    _, tokens, got = _stored(tmp_path / "a")
    order = [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert np.array_equal(tokens, np.concatenate([main[:, order], extra[:, order]], axis=1).reshape(n, 20, 4, 4))
    assert got == labels.tolist()
    assert SplitIndex.load(tmp_path / "a", "train").labels.tolist() == labels[stored].tolist()

    import_codes(codes, tmp_path / "b", codebook_size=VOCAB, shard_size=8)
    assert _stored_order(tmp_path / "b", "train") == stored
    import_codes(codes, tmp_path / "a", split="val", codebook_size=VOCAB, shard_size=8)
    assert _stored_order(tmp_path / "a", "val") == list(range(n))


def _folder_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_split_imported_with_other_folder_wide_settings_is_refused(tmp_path):
    """meta.json holds one set of views, grid, codebook, tokenizer and classes for every split (checks.py refuses a
    sample whose view count differs): `--split val` after train with other ones is refused before anything is
    written, naming each field, both values and the split written with the recorded ones; with the same ones (its
    own code folder: the source is per split) val joins the folder."""
    _, labels = _extract(tmp_path / "imagenet_code_c2i_flip", 2, 0)
    _extract(tmp_path / "imagenet_code_val_flip", 2, 1)
    classes = [str(c) for c in range(labels.max() + 1)]  # as train records them
    more = [*classes, str(len(classes))]
    _extract(tmp_path / "imagenet_code_val_plain", 1, 2)
    out = tmp_path / "tokens"
    same = dict(split="val", codebook_size=VOCAB, tokenizer="vq16.pt")
    import_codes(tmp_path / "imagenet_code_c2i_flip", out, codebook_size=VOCAB, tokenizer="vq16.pt")
    before = _folder_bytes(out)
    for folder, other, field in (
            ("plain", {}, r"augmentations: \['center', 'center_flip'\] recorded, \['center'\] in this run"),
            ("flip", {"grid": (2, 8)}, r"grid: \[4, 4\] recorded, \[2, 8\] in this run \(--grid\)"),
            ("flip", {"codebook_size": VOCAB + 1}, rf"codebook_size: {VOCAB} recorded, {VOCAB + 1} in this run"),
            ("flip", {"tokenizer": ""}, r"tokenizer: 'vq16.pt' recorded, '' in this run \(--tokenizer\)"),
            ("flip", {"num_classes": len(more)}, re.escape(f"classes: {classes!r} recorded, {more!r} in this run"))):
        with pytest.raises(DataError, match=rf"meta.json records .*{field}.*written with them: train.*--overwrite"):
            import_codes(tmp_path / f"imagenet_code_val_{folder}", out, **{**same, **other})
        assert _folder_bytes(out) == before and not (out / "val").exists()
    meta = import_codes(tmp_path / "imagenet_code_val_flip", out, **same)
    assert sorted(meta["splits"]) == ["train", "val"] and meta["augmentations"] == ["center", "center_flip"]
