"""Sampling benchmark: NAR (fast sampler) vs the raster and PAR baselines vs the plain reference, side by side."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from nar.errors import ConfigError
from nar.model import NARConfig, NARModel
from nar.sampling.fast import FastSampler
from nar.sampling.logits import SamplingConfig
from nar.sampling.reference import reference_generate

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchRow:
    method: str
    batch: int
    forward_passes: int
    images_per_s: float
    tokens_per_s: float
    seconds_per_batch: float  # the median over rounds
    peak_memory_gib: float | None
    execution: str = "eager"
    round_seconds: list[float] = field(default_factory=list)  # seconds per batch in each round


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, iters: int, min_time: float) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls, over at least ``iters`` calls and ``min_time`` s."""
    for _ in range(warmup):
        fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while n < iters or time.perf_counter() - start < min_time:
        fn()
        n += 1
        if device.type == "cuda" and n % 4 == 0:
            _sync(device)
    _sync(device)
    return (time.perf_counter() - start) / n


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["dim=128", "grid=[8, 8]"]`` → ``{"dim": 128, "grid": [8, 8]}``, read as the training CLI reads
    its ``key=value`` overrides (:func:`nar.config.merge_sources`); ``NARConfig.from_name`` then checks them."""
    from omegaconf import OmegaConf

    from nar.config import merge_sources

    return OmegaConf.to_container(merge_sources(OmegaConf.create({}), overrides=pairs))


def random_model(cfg: NARConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> NARModel:
    torch.manual_seed(seed)
    model = NARModel(cfg)
    for head in model.heads:  # zero-initialised heads would give flat logits; random is the realistic case
        torch.nn.init.normal_(head.proj.weight, std=cfg.initializer_range)
    return model.to(device=device, dtype=dtype).eval()


def raster_baseline(cfg: NARConfig) -> NARConfig:
    """The raster next-token model on ``cfg``'s trunk (one head, no head blocks)."""
    return replace(cfg, mode="raster", regions=None, head_blocks=None)


def schedule_config(cfg: NARConfig, schedule: str) -> NARConfig:
    """The generator of one benchmark schedule on ``cfg``'s trunk: ``nar`` (``cfg`` itself), ``raster``
    (:func:`raster_baseline`) or ``par-RxC`` (PAR with ``R``, ``C`` … regions per axis, one head, e.g.
    ``par-2x2`` for PAR-4x, ``par-1x4x4`` for a 16x split of every video frame)."""
    if schedule == "nar":
        return cfg
    if schedule == "raster":
        return raster_baseline(cfg)
    counts = schedule.removeprefix("par-").split("x")
    if not schedule.startswith("par-") or not all(c.isdigit() for c in counts):
        raise ConfigError(f"'{schedule}' is not nar, raster or par-<regions per axis joined by x> (par-2x2)",
                          key="schedules")
    try:
        return replace(cfg, mode="par", regions=[int(c) for c in counts], head_blocks=None)
    except ConfigError as err:
        raise ConfigError(f"{schedule}: {err.message}", key="schedules") from None


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_sampling(cfg: NARConfig, batches: list[int], sampling: SamplingConfig, device: str = "cpu",
                   dtype: str = "fp32", raster: bool = True, reference: bool = False, cuda_graph: bool | None = None,
                   compile: bool = False, warmup: int = 1, iters: int = 3, min_time: float = 0.0,
                   seed: int = 0, attention: str = "auto", rounds: int = 1,
                   schedules: Sequence[str] | None = None) -> list[BenchRow]:
    """Time token generation (no pixel decoding) for each batch size and method.

    ``schedules`` names the methods, each a fast sampler on ``cfg``'s trunk (:func:`schedule_config`:
    ``nar``, ``raster``, ``par-2x2`` …); default ``nar`` and, with ``raster``, ``raster``. With ``rounds > 1``
    their samplers are built side by side and timed in alternation, ``rounds`` times each (``iters`` calls a
    round); a row reports the median round and keeps every round, so a ratio can be taken round by round and
    a drift of the machine's speed during the run hits every method alike. Peak memory is then that of all
    the samplers together.
    """
    if rounds < 1:
        raise ConfigError(f"rounds: must be >= 1, got {rounds}")
    names = list(schedules) if schedules is not None else ["nar", "raster"] if raster else ["nar"]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"schedules: name each method once, got {names}")
    configs = {name: schedule_config(cfg, name) for name in names}  # every name checked before any timing
    dev = torch.device(device)
    dt = DTYPES[dtype]
    rows: list[BenchRow] = []
    models = {name: random_model(c, dev, dt, seed) for name, c in configs.items()}
    nar = models["nar"] if "nar" in models else random_model(cfg, dev, dt, seed) if reference else None
    N = cfg.num_cells
    for batch in batches:
        gen = torch.Generator(device=dev).manual_seed(seed)
        labels = torch.randint(0, cfg.num_classes, (batch,), device=dev, generator=gen)
        run = _SamplerTimer(sampling, labels, gen, dev, cuda_graph, compile, attention, warmup, iters, min_time)
        if rounds == 1:  # one method at a time, each with its own peak memory
            for name, model in models.items():
                _reset_peak(dev)
                sampler = run.build(model)
                rows.append(run.row(name, sampler, [run.time(sampler, True)], _peak(dev)))
                del sampler
        else:
            _reset_peak(dev)
            samplers = {name: run.build(model) for name, model in models.items()}
            seconds: dict[str, list[float]] = {name: [] for name in samplers}
            for r in range(rounds):
                for name, sampler in samplers.items():
                    seconds[name].append(run.time(sampler, r == 0))
            rows += [run.row(name, sampler, seconds[name], _peak(dev)) for name, sampler in samplers.items()]
            del samplers
        if reference:
            _reset_peak(dev)
            sec = time_call(lambda y=labels, g=gen: reference_generate(nar, y, sampling, generator=g), dev,
                            min(warmup, 1), max(1, iters // 2), 0.0)
            rows.append(BenchRow("nar-reference", batch, nar.num_passes, batch / sec, batch * N / sec, sec, _peak(dev),
                                 "eager, dense mask, per-token sampling", [sec]))
            log.info("nar-reference batch %d: %.1f images/s", batch, batch / sec)
    return rows


@dataclass
class _SamplerTimer:
    """Builds and times fast samplers for one batch of conditions."""

    sampling: SamplingConfig
    labels: torch.Tensor
    gen: torch.Generator
    device: torch.device
    cuda_graph: bool | None
    compile: bool
    attention: str
    warmup: int
    iters: int
    min_time: float

    def build(self, model: NARModel) -> FastSampler:
        return FastSampler(model, len(self.labels), self.sampling, cuda_graph=self.cuda_graph, compile=self.compile,
                           attention=self.attention)

    def time(self, sampler: FastSampler, first: bool) -> float:
        return time_call(lambda: sampler(self.labels, generator=self.gen), self.device,
                         self.warmup if first else 0, self.iters, self.min_time)

    def row(self, name: str, sampler: FastSampler, seconds: list[float], peak: float | None) -> BenchRow:
        batch, sec = len(self.labels), statistics.median(seconds)
        mode = ("cuda-graph" if sampler.use_graph else "eager") + ("+compile" if self.compile else "")
        mode += f", {sampler.attention} attention"
        log.info("%s batch %d: %.1f images/s", name, batch, batch / sec)
        return BenchRow(name, batch, sampler.num_passes, batch / sec, batch * sampler.model.cfg.num_cells / sec, sec,
                        peak, mode, seconds)


def speedup(fast: BenchRow, slow: BenchRow) -> tuple[float, float, float]:
    """``slow``'s seconds over ``fast``'s: the median of the round-by-round ratios and their range
    (rows timed in the same rounds), else the ratio of the two medians three times."""
    if len(fast.round_seconds) == len(slow.round_seconds) > 1:
        ratios = [s / f for f, s in zip(fast.round_seconds, slow.round_seconds)]
        return statistics.median(ratios), min(ratios), max(ratios)
    ratio = slow.seconds_per_batch / fast.seconds_per_batch
    return ratio, ratio, ratio


def bench_tokenizer_decode(preset: str, batch: int, grid: list[int], device: str = "cpu", dtype: str = "fp32",
                           warmup: int = 1, iters: int = 3, min_time: float = 0.0, compile: bool = False) -> BenchRow:
    """Images/s of a tokenizer's decoder (random weights) on ``batch`` random code grids.

    ``compile`` compiles the decoder in place (``tokenizer.decoder.compile()``, what a user does too):
    inductor fuses each GroupNorm with its SiLU and keeps the channels-last layout between the cuDNN
    convolutions, which the eager GroupNorm does not."""
    from nar.tokenizers import build_tokenizer

    dev = torch.device(device)
    tok = build_tokenizer(preset).to(device=dev, dtype=DTYPES[dtype]).eval()
    execution = "eager"
    if dev.type == "cuda" and len(grid) == 2:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
        tok = tok.to(memory_format=torch.channels_last)  # cuDNN's fastest convolution layout
        execution = "eager, channels_last, cudnn.benchmark"
    codes = torch.randint(0, tok.codebook_size, (batch, *grid), device=dev)
    _reset_peak(dev)
    with torch.no_grad():
        if compile:
            start = time.perf_counter()
            tok.decoder.compile()
            tok.decode(codes)  # compiles
            _sync(dev)
            execution = execution.replace("eager", "compiled") + f" ({time.perf_counter() - start:.0f} s to compile)"
        sec = time_call(lambda: tok.decode(codes), dev, warmup, iters, min_time)
    return BenchRow(f"decode:{preset}:{dtype}", batch, 1, batch / sec, batch * len(codes[0].flatten()) / sec, sec,
                    _peak(dev), execution)
