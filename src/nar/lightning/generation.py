"""Evaluation samples generated chunk by chunk, streamed through the metrics and (for ``nar evaluate``) to disk.

The fixed condition list is cut into chunks of ``batch_size``; chunk ``c`` is sampled with seed
:func:`~nar.sampling.seeds.batch_seed` ``(seed, c)`` (as ``nar sample`` seeds its batches: ``seed + c`` made
chunk 1 of seed 0 chunk 0 of seed 1), so which samples exist depends only on the list, never on the number of
processes. Each chunk is decoded to ``uint8`` pixels, handed to the consumers (metric updates, the picture grid)
and, when a folder is given, written as ``chunk_<c>.npz`` (atomic). Device memory therefore holds one chunk
whatever the number of samples, and a killed evaluation continues from the chunks on disk: a chunk whose
file exists is read back instead of generated (one of another pixel shape than is being generated is refused),
and the metrics see exactly the same ``uint8`` pixels either way. :func:`write_samples_npz` then streams every
chunk into one ADM-style ``samples_<N>.npz``.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nar.atomic import atomic_path
from nar.errors import ConfigError, RuntimeFailure
from nar.progress import Progress
from nar.sampling import SamplingConfig, sample_stream
from nar.sampling.seeds import batch_seed

log = logging.getLogger(__name__)

# (chunk index, uint8 pixels [b, 3, H, W] or [b, 3, T, H, W] on the model's device, labels [b] or None)
Consumer = Callable[[int, torch.Tensor, "torch.Tensor | None"], None]


def chunk_path(folder: str | Path, chunk: int) -> Path:
    return Path(folder) / f"chunk_{chunk:06d}.npz"


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] → ``uint8`` in [0, 255] (the rounding the ADM evaluator's samples have)."""
    return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def channels_last(pixels: torch.Tensor) -> np.ndarray:
    """``[b, 3, H, W]`` → ``[b, H, W, 3]`` (videos ``[b, 3, T, H, W]`` → ``[b, T, H, W, 3]``), numpy."""
    return pixels.movedim(1, -1).contiguous().cpu().numpy()


def save_chunk(path: Path, pixels: torch.Tensor, labels: torch.Tensor | None) -> None:
    arrays = {"pixels": channels_last(pixels)}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def decoded_shape(tokenizer: Any, grid: Sequence[int]) -> tuple[int, ...] | None:
    """The shape of one sample ``tokenizer`` decodes from a ``grid`` of codes: ``(3, H, W)`` or ``(3, T, H, W)``
    (:meth:`~nar.tokenizers.config.VQConfig.decoded_size`); None for a tokenizer without a VQ config."""
    from nar.tokenizers.config import VQConfig

    config = getattr(tokenizer, "config", None)
    return (3, *config.decoded_size(grid)) if isinstance(config, VQConfig) else None


def load_chunk(path: Path, expected: int,
               shape: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A chunk file's pixels (channels first) and labels; None when it is missing, unreadable or short.

    Raises:
        ConfigError: ``shape`` (one sample's, channels first: what is being generated) is given and the chunk's
            samples have another: it holds another model's or tokenizer's samples, which must not be mixed in.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            pixels = torch.from_numpy(data["pixels"]).movedim(-1, 1).contiguous()
            labels = torch.from_numpy(data["labels"]) if "labels" in data else None
    except Exception as err:  # noqa: BLE001 - a damaged chunk is generated again
        log.warning("%s is unreadable (%s); generating it again", path, err)
        return None
    if pixels.shape[0] != expected:
        log.warning("%s holds %d samples, expected %d; generating it again", path, pixels.shape[0], expected)
        return None
    if shape is not None and tuple(pixels.shape[1:]) != tuple(shape):
        raise ConfigError(f"{path} holds samples of shape {tuple(pixels.shape[1:])} (channels first), but samples of "
                          f"shape {tuple(shape)} are being generated: the folder holds another model's or tokenizer's "
                          f"samples; evaluate into another --out, or delete {path.parent} to start again")
    return pixels, labels


class ChunkGenerator:
    """Samples and decodes chunks of a fixed condition list through the sampler ``sampler`` names
    (:func:`nar.sampling.parse_sampler`: ``fast``, ``compile``, ``wavefront+compile``, …)."""

    def __init__(self, model: torch.nn.Module, tokenizer: torch.nn.Module, sampling: SamplingConfig,
                 device: torch.device, sampler: str = "fast") -> None:
        self.model, self.tokenizer, self.sampling, self.device = model, tokenizer, sampling, device
        self.sampler = sampler
        self.generate_seconds = 0.0
        self.decode_seconds = 0.0
        self.generated = 0

    @torch.no_grad()
    def tokens_stream(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor | None, int]],
                      batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Tokens of each ``(cond, mask, seed)`` in order; the time spent producing them counts as sampling.
        ``batch_size``: the chunk size of the whole list (a short last chunk, even alone, is drawn as in the list)."""
        stream = sample_stream(self.model, batches, self.sampling, self.sampler, batch_size)
        while True:
            _sync(self.device)
            start = time.perf_counter()
            tokens = next(stream, None)
            _sync(self.device)
            self.generate_seconds += time.perf_counter() - start
            if tokens is None:
                return
            yield tokens

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        pixels = to_uint8(self.tokenizer.decode(tokens.to(self.device)).clamp(-1, 1))
        _sync(self.device)
        self.decode_seconds += time.perf_counter() - start
        self.generated += pixels.shape[0]
        return pixels


def stream_chunks(generator: ChunkGenerator, conds: torch.Tensor, masks: torch.Tensor | None,
                  chunks: Sequence[int], batch_size: int, seed: int, consumers: Sequence[Consumer],
                  folder: Path | None = None, labels: torch.Tensor | None = None,
                  progress: Progress | None = None, seconds: dict[str, float] | None = None,
                  sample_shape: Sequence[int] | None = None) -> int:
    """Generate (or read back from ``folder``) each of ``chunks`` and hand it to every consumer, in the order of
    ``chunks``; returns the number of chunks read back from disk. Chunk ``c`` is sampled with seed
    ``batch_seed(seed, c)``. ``seconds`` (when given) accumulates the wall time of writing and reading chunk files
    (``write``, ``read``); the generator keeps its own sampling and decoding times. ``sample_shape``: one decoded
    sample's shape (:func:`decoded_shape`); a stored chunk of another is refused (:func:`load_chunk`).

    The consumers see the chunks in the same order whether a run is fresh or resumed, so a resumed evaluation
    feeds its metrics and picture grid exactly what an uninterrupted one would. Every stored chunk is checked
    first; the missing ones are then generated as one stream in chunk order (the wavefront sampler needs the
    next chunks while it finishes one). Memory holds one chunk: a stored chunk that comes after a missing one
    is read again at its turn (a resumed run's stored chunks usually all come first, and are read once)."""
    seconds = seconds if seconds is not None else {}

    def span(c: int) -> tuple[int, int]:
        return c * batch_size, min((c + 1) * batch_size, conds.shape[0])

    def read(c: int) -> torch.Tensor | None:
        if folder is None:
            return None
        lo, hi = span(c)
        start = time.perf_counter()
        stored = load_chunk(chunk_path(folder, c), hi - lo, sample_shape)
        seconds["read"] = seconds.get("read", 0.0) + time.perf_counter() - start
        return stored[0].to(generator.device) if stored is not None else None

    def batch(c: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        lo, hi = span(c)
        return conds[lo:hi], masks[lo:hi] if masks is not None else None, batch_seed(seed, c)

    def generate(c: int, tokens: torch.Tensor) -> torch.Tensor:
        pixels = generator.decode(tokens)
        if sample_shape is not None and tuple(pixels.shape[1:]) != tuple(sample_shape):
            raise RuntimeFailure(f"chunk {c} decoded to samples of shape {tuple(pixels.shape[1:])}, not the "
                                 f"{tuple(sample_shape)} the stored chunks were checked against")
        if folder is not None:
            lo, hi = span(c)
            start = time.perf_counter()
            save_chunk(chunk_path(folder, c), pixels, labels[lo:hi] if labels is not None else None)
            seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - start
        return pixels

    def hand_over(c: int, pixels: torch.Tensor, made: bool) -> None:
        lo, hi = span(c)
        # counted first: the chunk is on disk even when a consumer then stops the run (a stop asked)
        if progress is not None and made:
            progress.update(hi - lo)
        elif progress is not None:  # read back: an earlier run's work, kept out of the rate and the time left
            progress.skip(hi - lo)
        for consume in consumers:
            consume(c, pixels, labels[lo:hi] if labels is not None else None)

    missing: list[int] = []
    for c in chunks:
        pixels = read(c)
        if pixels is None:
            missing.append(c)
        elif not missing:  # nothing before it is missing: its turn is now
            hand_over(c, pixels, made=False)
    if not missing:
        return len(chunks)
    reused = len(chunks) - len(missing)
    stream = generator.tokens_stream([batch(c) for c in missing], batch_size)
    todo = set(missing)
    for c in chunks[chunks.index(missing[0]):]:
        if c in todo:
            hand_over(c, generate(c, next(stream)), made=True)
            continue
        pixels = read(c)
        made = pixels is None
        if made:  # valid a moment ago, gone or damaged since: generate it on its own (same seed)
            pixels = generate(c, next(generator.tokens_stream([batch(c)], batch_size)))
            reused -= 1
        hand_over(c, pixels, made)
    return reused


def write_samples_npz(folder: str | Path, num_chunks: int, out: str | Path) -> Path:
    """Stream ``chunk_*.npz`` 0 … ``num_chunks - 1`` into one ``.npz`` with ``arr_0`` ``uint8 [N, H, W, 3]``
    (videos ``[N, T, H, W, 3]``), the ADM evaluator's sample format, plus ``arr_1`` = the class labels when the
    chunks have them. Memory holds one chunk at a time; the file appears only once complete."""
    folder, out = Path(folder), Path(out)
    shapes, total, has_labels = None, 0, True
    for c in range(num_chunks):
        with np.load(chunk_path(folder, c)) as data:
            pix = data["pixels"]
            shapes = shapes or pix.shape[1:]
            if pix.shape[1:] != shapes:
                raise ValueError(f"{chunk_path(folder, c)}: sample shape {pix.shape[1:]} != {shapes}")
            total += pix.shape[0]
            has_labels = has_labels and "labels" in data
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _stream_array(zf, "arr_0", folder, num_chunks, "pixels", (total, *shapes), np.uint8)
        if has_labels:
            _stream_array(zf, "arr_1", folder, num_chunks, "labels", (total,), np.int64)
    return out


def _stream_array(zf: zipfile.ZipFile, name: str, folder: Path, num_chunks: int, key: str, shape: tuple,
                  dtype: Any) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for c in range(num_chunks):
            with np.load(chunk_path(folder, c)) as data:
                fh.write(np.ascontiguousarray(data[key], dtype=dtype).tobytes())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
