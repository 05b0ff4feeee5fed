"""Small on-disk inputs for the data tests: a miniature ImageNet and UCF-101, written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nar_data_testutil import UCF_CLASSES, WNIDS, write_avi, write_jpeg


@pytest.fixture
def mini_imagenet(tmp_path: Path) -> Path:
    """``train/<wnid>/`` × 3 classes × 4 images (+ one corrupt, one truncated JPEG), a flat ``val/`` of 6 images
    with ``LOC_val_solution.csv`` (+ one unlabelled), and a synset map (naming one wnid more than the folders)."""
    rng = np.random.default_rng(0)
    src = tmp_path / "imagenet"
    for wnid in WNIDS:
        for i in range(4):
            write_jpeg(src / "train" / wnid / f"{wnid}_{i}.JPEG", rng)
    (src / "train" / WNIDS[0] / "corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    whole = (src / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG").read_bytes()
    (src / "train" / WNIDS[1] / "truncated.JPEG").write_bytes(whole[: len(whole) // 2])
    rows = ["ImageId,PredictionString"]
    for i in range(6):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        write_jpeg(src / "val" / f"{name}.JPEG", rng)
        rows.append(f"{name},{WNIDS[i % 3]} 1 2 30 40")
    write_jpeg(src / "val" / "unlabelled.JPEG", rng)
    (src / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (src / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n"
        "n09999999 empty\n"
    )
    return src


@pytest.fixture
def mini_ucf101(tmp_path: Path) -> Path:
    """``UCF-101/<Class>/*.avi`` (2 classes × 3 videos of 12–20 frames, one corrupt) and ``ucfTrainTestlist``."""
    root = tmp_path / "ucf"
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    train, test = [], []
    for c, name in enumerate(UCF_CLASSES):
        for g in range(3):
            rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
            write_avi(videos / rel, 12 + 4 * g, shade=60 * c)
            (train.append(f"{rel} {c + 1}") if g < 2 else test.append(rel))
    bad = f"{UCF_CLASSES[1]}/v_{UCF_CLASSES[1]}_g09_c01.avi"
    (videos / bad).write_bytes(b"RIFF....AVI not really")
    test += [bad, f"{UCF_CLASSES[0]}/v_missing.avi"]
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(UCF_CLASSES)))
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return videos
