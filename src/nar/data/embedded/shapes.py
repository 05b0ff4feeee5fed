"""``shapes``: procedural scenes of coloured primitives (``nar.shapes``) with captions that describe them.

Each sample stores the rendered image (``png``), the caption (``txt``), the scene's family as class
(``cls``) and the full scene (primitives, counts, colours, positions and the GenEval-style spec) in
``json["scene"]``, so a text-alignment metric can check a generated image against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nar.data.encode import encode_png
from nar.data.shards import SkipSample, dataset_lock, refuse_other_folder_settings, write_meta, write_split


@dataclasses.dataclass(frozen=True)
class RenderScenes:
    """Producer: items ``(split, scene id)`` → scene samples; scene ``i`` of a split depends only on (seed, split, i)."""

    seed: int = 0
    size: int = 64

    def __call__(self, items: Sequence[tuple[str, int]], first_index: int = 0) -> Iterator[Any]:
        from PIL import Image

        import nar.shapes as shapes

        family_index = {f: i for i, f in enumerate(shapes.FAMILIES)}
        for offset, (split, i) in enumerate(items):
            try:
                rng = np.random.default_rng([self.seed, 0 if split == "train" else 1, i])
                scene = shapes.sample_scene(rng)
                image = shapes.render_scene(scene, self.size)
                text = shapes.caption(scene)
            except Exception as err:  # noqa: BLE001
                yield SkipSample(f"shapes/{split}/{i}", f"cannot render scene: {err}")
                continue
            meta = {"label": scene.family, "scene": scene.to_dict(), "source": f"nar.shapes:{split}/{i}"}
            fields = {"png": encode_png(Image.fromarray(np.asarray(image, dtype=np.uint8))), "cls": family_index[scene.family],
                      "txt": text, "json": meta}
            yield f"{first_index + offset:09d}", fields


def build_shapes(
    out: str | Path,
    *,
    seed: int = 0,
    num_train: int = 2000,
    num_val: int = 500,
    size: int = 64,
    shard_size: int = 1000,
    workers: int = 1,
) -> dict[str, Any]:
    """Write shapes scenes (``train`` and ``val``) under ``out``; returns ``meta.json``. Class = GenEval family."""
    import nar.shapes as shapes

    renderer = RenderScenes(seed=seed, size=size)
    counts = {split: n for split, n in (("train", num_train), ("val", num_val)) if n > 0}
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        # a count of 0 skips a split: one built alone must match the settings meta.json records for the other
        refuse_other_folder_settings(out, "pairs", list(counts), {"image_size": size, "seed": seed})
        records = []
        for split, n in counts.items():
            records.append(write_split(
                out, split, [(split, i) for i in range(n)], produce=renderer, shard_size=shard_size, workers=workers,
                params=dataclasses.asdict(renderer), desc=f"shapes {split}", unit="img",
            ))
        return write_meta(out, "pairs", records, classes=list(shapes.FAMILIES), source="embedded:shapes (nar.shapes)",
                          image_size=size, seed=seed, has_captions=True)
