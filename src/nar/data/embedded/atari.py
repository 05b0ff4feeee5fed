"""``atari``: short game clips rendered with ``ale-py`` and the ROMs it bundles; class = game.

Each clip starts from a fresh game state advanced by a random number of warm-up steps, then records
``frames`` screens, one every ``frame_skip`` emulator frames, under "sticky" random actions (the
previous action is repeated with probability ``sticky``), resized from 210×160 to ``size × size``.
The emulator runs with its own seed and no random action repeats, so a seed gives the same clips.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nar.data.shards import SkipSample, dataset_lock, refuse_other_folder_settings, write_meta, write_split
from nar.errors import DataError

log = logging.getLogger(__name__)

# Visually distinct games (layouts, palettes, motion); all bundled with ale-py ≥ 0.9.
GAMES: tuple[str, ...] = ("pong", "breakout", "space_invaders", "freeway", "seaquest")


def _ale_module() -> Any:
    try:
        import ale_py
        from ale_py import roms  # noqa: F401
    except ImportError:
        raise DataError("the atari dataset needs the Arcade Learning Environment: pip install ale-py") from None
    return ale_py


def rom_path(game: str) -> Path:
    """The bundled ROM of ``game``; :class:`DataError` if ale-py lacks it."""
    ale_py = _ale_module()
    try:
        path = Path(ale_py.roms.get_rom_path(game))
    except Exception as err:  # noqa: BLE001 — ale-py raises different types across versions
        raise DataError(f"ale-py has no ROM for {game!r}: {err}") from None
    if not path.is_file():
        raise DataError(f"ale-py has no ROM for {game!r} ({path})")
    return path


def _seed32(*parts: Any) -> int:
    """A stable 31-bit seed from strings and ints (Python's ``hash`` is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class RenderClips:
    """Producer: a chunk of items ``(game, class, split, clip id)`` → clip samples, one emulator per game."""

    seed: int = 0
    frames: int = 16
    size: int = 64
    frame_skip: int = 4
    sticky: float = 0.75
    max_warmup: int = 150

    def __call__(self, items: Sequence[tuple[str, int, str, int]], first_index: int = 0) -> Iterator[Any]:
        ale_py = _ale_module()
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        emulators: dict[str, Any] = {}
        for offset, (game, cls, split, clip) in enumerate(items):
            key = f"{first_index + offset:09d}"
            try:
                if game not in emulators:
                    ale = ale_py.ALEInterface()
                    ale.setInt("random_seed", _seed32(self.seed, split, game, first_index))
                    ale.setFloat("repeat_action_probability", 0.0)
                    ale.loadROM(str(rom_path(game)))
                    emulators[game] = ale
                rng = np.random.default_rng(_seed32(self.seed, split, game, clip))
                frames = self._clip(emulators[game], rng)
            except Exception as err:  # noqa: BLE001
                yield SkipSample(f"{game}/{split}/{clip}", f"cannot render clip: {err}")
                continue
            meta = {"label": game, "game": game, "clip": clip, "frame_skip": self.frame_skip, "source": f"ale-py:{game}"}
            yield key, {"frames.npy": frames, "cls": cls, "json": meta}

    def _clip(self, ale: Any, rng: np.random.Generator) -> np.ndarray:
        actions = ale.getMinimalActionSet()
        ale.reset_game()
        action = actions[0]

        def step() -> None:
            nonlocal action
            if rng.random() >= self.sticky:
                action = actions[int(rng.integers(len(actions)))]
            for _ in range(self.frame_skip):
                ale.act(action)

        for _ in range(int(rng.integers(20, self.max_warmup))):
            step()
            if ale.game_over():
                ale.reset_game()
        out = np.empty((self.frames, self.size, self.size, 3), dtype=np.uint8)
        for t in range(self.frames):
            if t:
                step()
            if ale.game_over():  # do not cut across an episode boundary: restart the clip
                return self._clip(ale, rng)
            screen = Image.fromarray(ale.getScreenRGB())
            out[t] = np.asarray(screen.resize((self.size, self.size), resample=Image.BOX))
        return out


def build_atari(
    out: str | Path,
    *,
    seed: int = 0,
    games: Sequence[str] = GAMES,
    clips_per_game: int = 48,
    val_clips_per_game: int = 12,
    frames: int = 16,
    size: int = 64,
    frame_skip: int = 4,
    shard_size: int = 64,
    workers: int = 1,
) -> dict[str, Any]:
    """Write Atari clips (``train`` and held-out ``val``, games interleaved) under ``out``; returns ``meta.json``."""
    games = tuple(games)
    for g in games:
        rom_path(g)  # fail early, naming the game
    renderer = RenderClips(seed=seed, frames=frames, size=size, frame_skip=frame_skip)
    counts = {split: n for split, n in (("train", clips_per_game), ("val", val_clips_per_game)) if n > 0}
    with dataset_lock(out):  # one writer per folder, across all its splits and meta.json
        # a count of 0 skips a split: one built alone must match the settings meta.json records for the other
        refuse_other_folder_settings(out, "video", list(counts), {"classes": list(games), "frames": frames,
                                                                   "image_size": size, "frame_skip": frame_skip,
                                                                   "seed": seed})
        records = []
        for split, n in counts.items():
            items = [(g, c, split, i) for i in range(n) for c, g in enumerate(games)]
            records.append(write_split(
                out, split, items, produce=renderer, shard_size=shard_size, workers=workers,
                params=dataclasses.asdict(renderer), desc=f"atari {split}", unit="clip",
            ))
        return write_meta(out, "video", records, classes=list(games), source="embedded:atari (ale-py bundled ROMs)",
                          frames=frames, image_size=size, frame_skip=frame_skip, seed=seed)
