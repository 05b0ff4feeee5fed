"""Helpers for the data tests: write JPEGs and short .avi files (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
UCF_CLASSES = ("ApplyEyeMakeup", "Basketball")


def write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 52)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def write_avi(path: Path, num_frames: int, *, height: int = 24, width: int = 32, shade: int = 0) -> None:
    """A short MPEG-4 ``.avi`` whose frame ``i`` is a flat grey ``(shade + 8 i) mod 256`` (PyAV)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            img = np.full((height, width, 3), (shade + 8 * i) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)




def run_data_cli(argv: list[str]) -> int:
    """``nar <argv>`` through the data sub-command alone (independent of other sub-commands' imports)."""
    import argparse

    from nar.cli import data as data_cli
    from nar.errors import NarError

    parser = argparse.ArgumentParser(prog="nar")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NarError:
        return 2
