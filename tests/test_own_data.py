"""README "Your own data", run as written: the commands are read from the README's code blocks and run on tiny
image, video and caption folders this test writes, with only the README's budget keys made smaller.

Nothing is edited by hand and no key is set beyond those the README names: each pipeline must reach samples
on disk and scores in ``results.json``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nar.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SECTION = ROOT.joinpath("README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
# Smaller values of the budget keys the README names (its sentence on the keys to change is checked below).
BUDGET = {"train-tokenizer": ["val.rfid=false", "data.batch_size=4"],
          "train": ["eval.num_samples=4", "data.batch_size=8"]}
STEPS = "trainer.max_steps=6"


def commands(kind: str, source: Path) -> list[list[str]]:
    """The ``nar …`` lines of the README block under ``### <kind>``, the source folder substituted."""
    block = SECTION.split(f"### {kind}", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    out = []
    for line in block.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "nar", line
        argv = [str(source) if a.startswith("~/") else a for a in argv[1:]]
        argv = [STEPS if a.startswith("trainer.max_steps=") else a for a in argv]
        out.append(argv + BUDGET.get(argv[0], []))
    return out


def test_the_readme_names_every_key_the_test_sets() -> None:
    for key in [STEPS, *sum(BUDGET.values(), [])]:
        assert f"`{key.split('=')[0]}" in SECTION, f"README 'Your own data' does not name {key.split('=')[0]}"


def write_images(root: Path, classes: tuple[str, ...], per_class: int, size: int = 32) -> None:
    """An ImageNet-layout folder of coloured squares (one colour per class), plus one corrupt PNG."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 3)):
        for c, name in enumerate(classes):
            for i in range(n):
                img = np.full((size, size, 3), 40 + 80 * c, dtype=np.uint8)
                img[rng.integers(0, size // 2):, :, c % 3] = 250
                path = root / split / name / f"{name}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path)
    (root / "train" / classes[0] / "broken.png").write_bytes(b"\x89PNG not really")


def write_clips(root: Path, classes: tuple[str, ...]) -> Path:
    """A UCF-101-layout folder: ``<Class>/*.avi`` (PyAV) with ``classInd.txt`` and split lists."""
    from data.nar_data_testutil import write_avi

    videos, train, test = root / "UCF-101", [], []
    for c, name in enumerate(classes):
        for g in range(5):
            rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
            write_avi(videos / rel, 10, shade=90 * c)
            (train.append(f"{rel} {c + 1}") if g < 3 else test.append(rel))
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(classes)))
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return videos


def write_captioned(root: Path, n: int = 80) -> None:
    """Images with same-name ``.txt`` captions (a colour word per image)."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    root.mkdir(parents=True)
    for i in range(n):
        word = list(colours)[i % 3]
        Image.fromarray(np.full((32, 32, 3), colours[word], dtype=np.uint8)).save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text(f"a {word} square\n")


def run_all(kind: str, source: Path) -> None:
    for argv in commands(kind, source):
        assert main(argv) == 0, f"nar {' '.join(argv)}"


def scores_of(run: str) -> dict:
    results = json.loads(next(Path("runs", run, "eval").glob("*/results.json")).read_text())
    assert results["num_samples"] == 4 and results["scores"]
    return results


# Images run in the default suite; videos (a 3-D tokenizer, per-frame Inception) and captions (MiniLM) take
# minutes on 2 CPU cores and run with the slow tests (`make test-slow`).
@pytest.mark.parametrize("kind", ["Images", pytest.param("Videos", marks=pytest.mark.slow),
                                  pytest.param("Captions", marks=pytest.mark.slow)])
def test_own_data_commands(kind: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if kind == "Images":
        write_images(tmp_path / "src", ("zero", "three", "seven"), per_class=12)
        run_all(kind, tmp_path / "src")
        meta = json.loads(Path("data/digits/meta.json").read_text())
        assert meta["splits"]["train"]["skipped"]["count"] == 1  # the corrupt PNG, skipped and counted
        assert "val/fid" in scores_of("digits")["scores"]
        assert len(list(Path("samples/digits/images").glob("*.png"))) == 8 and Path("samples/digits/grid.png").is_file()
    elif kind == "Videos":
        videos = write_clips(tmp_path / "ucf", ("Juggling", "Rowing"))
        run_all(kind, videos)
        assert "val/fvd_proxy_inception" in scores_of("clips")["scores"]
        assert len(list(Path("samples/clips/images").glob("*.gif"))) == 2 and Path("samples/clips/grid.png").is_file()
    else:
        write_captioned(tmp_path / "captioned")
        run_all(kind, tmp_path / "captioned")
        assert "val/fid" in scores_of("captioned")["scores"]
        assert Path("samples/captioned/images/0000_00.png").is_file()
