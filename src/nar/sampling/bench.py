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
from nar.model.flops import sampling_flops_per_image
from nar.sampling.api import SAMPLER_OPTIONS, compile_mode, kv_dtype_of, model_for, parse_sampler
from nar.sampling.fast import FastSampler
from nar.sampling.logits import SamplingConfig
from nar.sampling.reference import reference_generate
from nar.sampling.wavefront import WavefrontSampler

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets (half their "with sparsity"
# figures), matched on the name torch reports, upper-cased, the longest key that matches winning: "NVIDIA H100
# PCIe" is not the SXM "H100". H200 is the H100's chip with more memory. H100 PCIe 1,513 and H100 NVL 1,671
# sparse (NVIDIA's H100 datasheet); H200 NVL 1,671 sparse as NVIDIA's H200 page lists it, a figure not checked
# against a printed datasheet here. Pass --peak-tflops for any other card.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H100 PCIE": 756.0, "H100 NVL": 835.0, "H200": 989.0, "H200 NVL": 835.0,
                    "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def card_of(device_name: str) -> str | None:
    """The key of :data:`PEAK_BF16_TFLOPS` a device name holds (the longest that matches), else None."""
    hits = [k for k in PEAK_BF16_TFLOPS if k in device_name.upper()]
    return max(hits, key=len) if hits else None


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known card (:func:`card_of`), else None."""
    card = card_of(device_name)
    return PEAK_BF16_TFLOPS[card] if card else None


def parse_variant(name: str) -> frozenset[str]:
    """A benchmark variant: a sampler option as :func:`nar.sampling.api.parse_sampler` reads it."""
    return parse_sampler(name, key="variants")


def variant_method(variant: str) -> str:
    """The row name of NAR under ``variant``: ``nar`` or ``nar+<options in a fixed order>``."""
    opts = parse_variant(variant)
    return "+".join(["nar", *(o for o in SAMPLER_OPTIONS if o in opts)])


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
    ms_per_pass: float | None = None  # wall time of one forward pass (a wavefront pass serves two cohorts)
    flops_per_image: int | None = None  # sampling FLOPs per image, CFG included; + the decoder's on decode rows
    fraction_of_peak: float | None = None  # images/s x FLOPs per image over the device's dense bf16 peak

    def __post_init__(self) -> None:
        if self.ms_per_pass is None:
            self.ms_per_pass = 1e3 * self.seconds_per_batch / self.forward_passes


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
                   schedules: Sequence[str] | None = None, variants: Sequence[str] = (),
                   decoder: Decoder | None = None, decode_variants: Sequence[str] = (),
                   peak: float | None = None, on_row: Callable[[list[BenchRow]], object] | None = None
                   ) -> list[BenchRow]:
    """Time token generation (no pixel decoding) for each batch size and method.

    ``schedules`` names the methods, each a fast sampler on ``cfg``'s trunk (:func:`schedule_config`:
    ``nar``, ``raster``, ``par-2x2`` …); default ``nar`` and, with ``raster``, ``raster``. With ``rounds > 1``
    their samplers are built side by side and timed in alternation, ``rounds`` times each (``iters`` calls a
    round); a row reports the median round and keeps every round, so a ratio can be taken round by round and
    a drift of the machine's speed during the run hits every method alike. Peak memory is then that of all
    the samplers together.

    ``variants`` adds a NAR row per faster path (:func:`parse_variant`, e.g. ``compile``, ``wavefront+compile``,
    ``fp8+wavefront+compile``): timed after the schedules one at a time, or with ``rounds > 1`` in the same
    alternating rounds as the schedules (their speed-ups over ``nar`` then round by round too). ``decoder`` with
    ``decode_variants`` adds tokens + pixels rows: the sampler of that variant followed by the tokenizer's
    decoder, images/s counting decoded images. ``peak`` (TFLOP/s) fills each row's fraction of peak.
    ``on_row(rows)`` is called after every row (the CLI writes its files then, so a run cut short keeps them).
    """
    if rounds < 1:
        raise ConfigError(f"rounds: must be >= 1, got {rounds}")
    names = list(schedules) if schedules is not None else ["nar", "raster"] if raster else ["nar"]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"schedules: name each method once, got {names}")
    configs = {name: schedule_config(cfg, name) for name in names}  # every name checked before any timing
    for v in (*variants, *decode_variants):
        parse_variant(v)
    variants = [v for v in variants if parse_variant(v) or "nar" not in configs]  # 'fast' is the nar row itself
    dev = torch.device(device)
    dt = DTYPES[dtype]
    rows = _Rows(on_row, peak, sampling, configs, cfg, decoder.flops_per_image if decoder is not None else 0)
    models = {name: random_model(c, dev, dt, seed) for name, c in configs.items()}
    nar = (models["nar"] if "nar" in models
           else random_model(cfg, dev, dt, seed) if reference or variants or decode_variants else None)
    fp8_model = None
    if any("fp8" in parse_variant(v) for v in (*variants, *decode_variants)):
        fp8_model = model_for(nar, frozenset({"fp8"}))
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
        else:  # the schedules and the variants' token rows side by side, alternating
            _reset_peak(dev)
            samplers = {name: run.build(model) for name, model in models.items()}
            samplers |= {variant_method(v): run.build(fp8_model if "fp8" in parse_variant(v) else nar,
                                                      parse_variant(v)) for v in variants}
            seconds: dict[str, list[float]] = {name: [] for name in samplers}
            for r in range(rounds):
                for name, sampler in samplers.items():
                    seconds[name].append(run.time(sampler, r == 0))
                log.info("batch %d, round %d of %d: %s", batch, r + 1, rounds,
                         ", ".join(f"{name} {batch / sec[-1]:.1f}" for name, sec in seconds.items()) + " images/s")
            rows += [run.row(name, sampler, seconds[name], _peak(dev)) for name, sampler in samplers.items()]
            del samplers
        timed = [] if rounds == 1 else variants  # variants already timed in the rounds keep only their decode rows
        order = [(v, False) for v in variants if v not in timed]  # each tokens + pixels row after its own
        for v in decode_variants:
            order.insert(order.index((v, False)) + 1 if (v, False) in order else len(order), (v, True))
        for variant, with_decode in order:
            opts = parse_variant(variant)
            _reset_peak(dev)
            sampler = run.build(fp8_model if "fp8" in opts else nar, opts)
            method = variant_method(variant) + ("+decode" if with_decode else "")
            rows.append(run.row(method, sampler, [run.time(sampler, True, decoder if with_decode else None)],
                                _peak(dev), decoder if with_decode else None))
            del sampler
        if reference:
            _reset_peak(dev)
            sec = time_call(lambda y=labels, g=gen: reference_generate(nar, y, sampling, generator=g), dev,
                            min(warmup, 1), max(1, iters // 2), 0.0)
            rows.append(BenchRow("nar-reference", batch, nar.num_passes, batch / sec, batch * N / sec, sec, _peak(dev),
                                 "eager, dense mask, per-token sampling", [sec]))
            log.info("nar-reference batch %d: %.1f images/s", batch, batch / sec)
    return list(rows)


class _Rows(list):
    """The benchmark's rows: each appended row gets its FLOPs per image and fraction of peak, then ``on_row``.
    A tokens + pixels row (``+decode``) counts the decoder's FLOPs (``decode_flops``) beside the tokens'."""

    def __init__(self, on_row, peak: float | None, sampling: SamplingConfig, configs: dict[str, NARConfig],
                 cfg: NARConfig, decode_flops: int = 0):
        super().__init__()
        self.on_row, self.peak, self.sampling, self.configs, self.cfg = on_row, peak, sampling, configs, cfg
        self.decode_flops = decode_flops

    def append(self, r: BenchRow) -> None:
        parts = r.method.split("+")
        if parts[0] in self.configs or parts[0] in ("nar", "nar-reference"):
            r.flops_per_image = sampling_flops_per_image(self.configs.get(parts[0], self.cfg), self.sampling.guided)
            if "decode" in parts:
                r.flops_per_image += self.decode_flops
            if self.peak:
                r.fraction_of_peak = r.images_per_s * r.flops_per_image / (self.peak * 1e12)
        super().append(r)
        if self.on_row is not None:
            self.on_row(list(self))

    def __iadd__(self, rows):
        for r in rows:
            self.append(r)
        return self


@dataclass
class Decoder:
    """A tokenizer's decoder as the benchmark runs it (see :func:`build_decoder`)."""

    tokenizer: torch.nn.Module
    name: str
    execution: str
    flops_per_image: int  # one grid of codes to pixels (nar.tokenizers.cost)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(tokens)


def build_decoder(preset: str, grid: list[int], device: str, dtype: str, compile: bool,
                  batch: int | None = None) -> Decoder:
    """A tokenizer preset (random weights) set up for speed on ``device``: channels-last and cuDNN autotuning
    for image decoders on a GPU, and with ``compile`` the decoder compiled in place (``tokenizer.decoder.
    compile()``, what a user does too: inductor fuses each GroupNorm with its SiLU and keeps the channels-last
    layout between the cuDNN convolutions). With ``batch``, the compilation happens here, on random codes."""
    from nar.tokenizers import build_tokenizer
    from nar.tokenizers.cost import decode_cost

    dev = torch.device(device)
    tok = build_tokenizer(preset).to(device=dev, dtype=DTYPES[dtype]).eval()
    execution = "eager"
    if dev.type == "cuda" and len(grid) == 2:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
        tok = tok.to(memory_format=torch.channels_last)  # cuDNN's fastest convolution layout
        execution = "eager, channels_last, cudnn.benchmark"
    if compile:
        start = time.perf_counter()
        tok.decoder.compile()
        if batch:
            with torch.no_grad():
                tok.decode(torch.randint(0, tok.codebook_size, (batch, *grid), device=dev))  # compiles
            _sync(dev)
        execution = execution.replace("eager", "compiled") + f" ({time.perf_counter() - start:.0f} s to compile)"
    return Decoder(tok, f"{preset}:{dtype}", execution, decode_cost(preset, grid).flops)


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

    def build(self, model: NARModel, options: frozenset[str] = frozenset()):
        """A fast sampler, or with the ``wavefront`` option a :class:`WavefrontSampler`; ``compile`` and
        ``autotune`` compile it (the latter with ``max-autotune-no-cudagraphs``), ``fp8kv`` keeps its KV caches in
        float8."""
        compile, kv_dtype = compile_mode(options) or self.compile, kv_dtype_of(options)
        if "wavefront" in options:
            return WavefrontSampler(model, len(self.labels), self.sampling, cuda_graph=self.cuda_graph,
                                    compile=compile, attention=self.attention, kv_dtype=kv_dtype)
        return FastSampler(model, len(self.labels), self.sampling, cuda_graph=self.cuda_graph, compile=compile,
                           attention=self.attention, kv_dtype=kv_dtype)

    def time(self, sampler, first: bool, decoder: Decoder | None = None) -> float:
        """Seconds per batch of ``len(labels)`` images (a wavefront period completes two, in a steady stream).

        With ``decoder``, each batch's tokens are decoded too: on a GPU on a second CUDA stream, so the decoder
        of one batch can run beside the sampling of the next where the GPU has room (on the 2026-12-04 H200 run
        it had none: the pair took as long as the two one after the other); on a CPU one after the other."""
        overlap = decoder is not None and self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if overlap else None

        def decode(tokens: torch.Tensor) -> None:
            if side is None:
                decoder(tokens)
                return
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                decoder(tokens)
            tokens.record_stream(side)  # the allocator keeps it until the side stream is done with it

        if isinstance(sampler, WavefrontSampler):
            grid = sampler.model.cfg.grid

            @torch.no_grad()
            def call():
                sampler.run_period()
                if decoder is not None:  # copies: the next period overwrites the sampler's buffers
                    decode(sampler.finished.view(-1, *grid).clone())
                    decode(sampler.slots[0].tokens.view(-1, *grid).clone())
            return time_call(call, self.device, self.warmup if first else 0, self.iters, self.min_time) / 2

        @torch.no_grad()
        def one():
            tokens = sampler(self.labels, generator=self.gen)
            if decoder is not None:
                decode(tokens)
        return time_call(one, self.device, self.warmup if first else 0, self.iters, self.min_time)

    def row(self, name: str, sampler, seconds: list[float], peak: float | None,
            decoder: Decoder | None = None) -> BenchRow:
        batch, sec = len(self.labels), statistics.median(seconds)
        compiled = self.compile or (sampler.runners if isinstance(sampler, WavefrontSampler)
                                    else sampler.state.runners)
        mode = ("cuda-graph" if sampler.use_graph else "eager") + ("+compile" if compiled else "")
        mode += f", {sampler.attention} attention"
        passes_per_batch = sampler.num_passes
        if isinstance(sampler, WavefrontSampler):
            mode += f", 2 cohorts of {batch} in flight"
            passes_per_batch = sampler.num_passes / 2
        if any(type(m).__name__ == "FP8Linear" for m in sampler.model.modules()):
            mode += ", fp8 block weights"
        slot_state = sampler.slots[0].state if isinstance(sampler, WavefrontSampler) else sampler.state
        if slot_state.caches[0].quantized:
            mode += ", fp8 KV cache"
        if decoder is not None:
            where = "on a second CUDA stream" if self.device.type == "cuda" else "after each batch"
            mode += f", + decode {decoder.name} {where} ({decoder.execution})"
        log.info("%s batch %d: %.1f images/s", name, batch, batch / sec)
        return BenchRow(name, batch, sampler.num_passes, batch / sec, batch * sampler.model.cfg.num_cells / sec, sec,
                        peak, mode, seconds, ms_per_pass=1e3 * sec / passes_per_batch)


def speedup(fast: BenchRow, slow: BenchRow) -> tuple[float, float, float]:
    """``slow``'s seconds over ``fast``'s: the median of the round-by-round ratios and their range
    (rows timed in the same rounds), else the ratio of the two medians three times."""
    if len(fast.round_seconds) == len(slow.round_seconds) > 1:
        ratios = [s / f for f, s in zip(fast.round_seconds, slow.round_seconds)]
        return statistics.median(ratios), min(ratios), max(ratios)
    ratio = slow.seconds_per_batch / fast.seconds_per_batch
    return ratio, ratio, ratio


def bench_tokenizer_decode(preset: str, batch: int, grid: list[int], device: str = "cpu", dtype: str = "fp32",
                           warmup: int = 1, iters: int = 3, min_time: float = 0.0, compile: bool = False,
                           peak: float | None = None) -> BenchRow:
    """Images/s of a tokenizer's decoder (random weights, :func:`build_decoder`) on ``batch`` random code grids;
    with ``peak`` (TFLOP/s), its fraction of peak from the decoder's counted FLOPs."""
    dev = torch.device(device)
    _reset_peak(dev)
    decoder = build_decoder(preset, grid, device, dtype, compile, batch)
    codes = torch.randint(0, decoder.tokenizer.codebook_size, (batch, *grid), device=dev)
    with torch.no_grad():
        sec = time_call(lambda: decoder(codes), dev, warmup, iters, min_time)
    row = BenchRow(f"decode:{preset}:{dtype}", batch, 1, batch / sec, batch * len(codes[0].flatten()) / sec, sec,
                   _peak(dev), decoder.execution, flops_per_image=decoder.flops_per_image)
    if peak:
        row.fraction_of_peak = row.images_per_s * decoder.flops_per_image / (peak * 1e12)
    return row
