"""The ways to get samples: ``make_sampler`` hands back the fast sampler for one batch at a time (the plain
loop where it is unavailable; both draw the same tokens for the same seed, tested token for token), and
``sample_stream`` runs a sequence of batches through the sampler a ``sampler`` option names: the fast one,
compiled, the wavefront stream or fp8 block weights (see :func:`parse_sampler`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

import torch

from nar.errors import ConfigError
from nar.model import NARModel
from nar.model.float8 import FP8
from nar.sampling.logits import SamplingConfig

log = logging.getLogger(__name__)

Sampler = Callable[..., torch.Tensor]  # (cond, generator=None) -> tokens [B, *grid]

SAMPLER_OPTIONS = ("compile", "autotune", "wavefront", "fp8", "fp8kv")


def parse_sampler(name: str, key: str = "sampler") -> frozenset[str]:
    """``fast`` (the CUDA-graph sampler as it is) or options joined by ``+``:

    * ``compile``: inductor-compiled blocks and sampling arithmetic inside the CUDA graph;
    * ``autotune``: the same with ``max-autotune-no-cudagraphs`` (long compile; implies ``compile``);
    * ``wavefront``: two cohorts in flight, half a schedule apart (:mod:`nar.sampling.wavefront`; class
      conditions only, other draws than the one-batch sampler for the same seed);
    * ``fp8``: a bf16 copy of the model with float8 block weights (:mod:`nar.model.fp8`; Hopper GPUs);
    * ``fp8kv``: KV caches in float8 with a scale per key and value row (:class:`~nar.model.layers.KVCache`):
      half the bytes every pass reads; the attention kernel reads float8 on Ada and Hopper GPUs.

    ``fp8`` and ``fp8kv`` change the numbers the model computes: measure what they change
    (:mod:`nar.sampling.precision`, ``benchmarks/fp8_agreement.py``) before trusting their samples.
    """
    if name == "fast":
        return frozenset()
    opts = name.split("+")
    bad = [o for o in opts if o not in SAMPLER_OPTIONS]
    if bad or len(set(opts)) != len(opts):
        raise ConfigError(f"'{name}' is not 'fast' or options joined by '+' from {', '.join(SAMPLER_OPTIONS)}",
                          key=key)
    return frozenset(opts)


def sampler_name(name: str, key: str = "sampler") -> str:
    """``name`` with its options in one order (``wavefront+compile`` = ``compile+wavefront``): what records and
    their comparisons (an evaluation's chunk folder, a ``nar sample`` job) hold."""
    return "+".join(sorted(parse_sampler(name, key=key))) or "fast"


def compile_mode(options: frozenset[str]) -> bool | str:
    """The ``compile`` argument of the samplers for parsed ``options``."""
    return "max-autotune-no-cudagraphs" if "autotune" in options else "compile" in options


def kv_dtype_of(options: frozenset[str]) -> torch.dtype | None:
    """The samplers' ``kv_dtype`` for parsed ``options``: float8 e4m3 with ``fp8kv``, else the model's dtype."""
    return FP8 if "fp8kv" in options else None


def model_for(model: NARModel, options: frozenset[str]) -> NARModel:
    """``model`` itself, or with ``fp8`` a bf16 copy whose block weights are float8 (the original is untouched)."""
    if "fp8" not in options:
        return model
    from nar.model.fp8 import quantize_fp8

    quantized = copy.deepcopy(model).to(torch.bfloat16).eval()
    log.info("sampling with %s", quantize_fp8(quantized))
    return quantized


def make_sampler(model: NARModel, batch: int, sampling: SamplingConfig | None, cond_mask: torch.Tensor | None = None,
                 **fast_options: Any) -> Sampler:
    """A callable ``(cond, generator=None) -> tokens [batch, *grid]`` for ``batch`` conditions at a time.

    ``cond``: class ids ``[batch]`` or caption features ``[batch, L, D]``; ``cond_mask [batch, L]`` (captions)
    is fixed when the sampler is built. ``fast_options`` (``cuda_graph``, ``compile``, ``attention``) go to
    :class:`~nar.sampling.fast.FastSampler`; the plain loop (:func:`~nar.sampling.generate.generate`) ignores them.
    A fast sampler reuses its buffers and, on a GPU, its captured CUDA graph: build one per batch size and reuse it.
    """
    try:
        from nar.sampling.fast import FastSampler

        return FastSampler(model, batch=batch, sampling=sampling, cond_mask=cond_mask, **fast_options)
    except ImportError:  # pragma: no cover - the plain loop has the same semantics
        from nar.sampling.generate import generate

        def plain(cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            return generate(model, cond, sampling, cond_mask=cond_mask, generator=generator)

        return plain


Batch = tuple[torch.Tensor, torch.Tensor | None, int]  # (conditions, caption mask or None, seed)


def sample_stream(model: NARModel, batches: Iterable[Batch], sampling: SamplingConfig | None,
                  sampler: str = "fast", batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """Tokens ``[b, *grid]`` for each ``(cond [b, ...], cond_mask, seed)`` of ``batches``, in order.

    ``sampler`` names the path (:func:`parse_sampler`). The one-batch samplers draw batch ``i`` from a generator
    seeded with its seed (as :func:`make_sampler` with ``generator.manual_seed(seed)``); the wavefront draws each
    batch from its own two seeded generators (:mod:`nar.sampling.wavefront`), so in both a batch's tokens depend
    on its conditions and seed alone. The wavefront needs class conditions; caption batches keep the one-batch
    sampler (said once in the log). Its cohorts are ``batch_size`` rows (default: the first batch's size), and
    no batch may exceed that: smaller ones (the last of a list) are padded by repeating their last condition, and
    trimmed. Give the list's batch size when a stream may start at its short last batch (a resumed evaluation
    regenerating only that chunk): the padding is part of what the cohort draws, so it must be the same.
    """
    options = parse_sampler(sampler)
    model = model_for(model, options)
    compile, kv_dtype = compile_mode(options), kv_dtype_of(options)
    batches = iter(batches)
    if "wavefront" in options:
        if model.cfg.condition == "class":
            yield from _wavefront(model, batches, sampling, compile, kv_dtype, batch_size)
            return
        log.info("the wavefront sampler takes class conditions; these caption batches use the one-batch sampler")
    unmasked: dict[int, Sampler] = {}  # by batch size; only these are reused
    generators: dict[torch.device, torch.Generator] = {}
    for cond, mask, seed in batches:
        b = cond.shape[0]
        if mask is not None:  # a caption mask is fixed when a sampler is built: a new one per masked batch
            run = make_sampler(model, b, sampling, cond_mask=mask, compile=compile, kv_dtype=kv_dtype)
        else:
            if b not in unmasked:
                unmasked[b] = make_sampler(model, b, sampling, compile=compile, kv_dtype=kv_dtype)
            run = unmasked[b]
        if cond.device not in generators:
            generators[cond.device] = torch.Generator(device=cond.device)
        yield run(cond, generator=generators[cond.device].manual_seed(seed))


def _wavefront(model: NARModel, batches: Iterator[Batch], sampling: SamplingConfig | None,
               compile: bool | str, kv_dtype: torch.dtype | None, batch_size: int | None) -> Iterator[torch.Tensor]:
    from nar.sampling.wavefront import WavefrontSampler

    first = next(batches, None)
    if first is None:
        return
    size = batch_size or first[0].shape[0]
    stream = WavefrontSampler(model, size, sampling, compile=compile, kv_dtype=kv_dtype)
    sizes: list[int] = []

    def cohorts() -> Iterator[tuple[torch.Tensor, int]]:
        for cond, _, seed in chain([first], batches):
            n = cond.shape[0]
            if n > size:
                raise ValueError(f"the wavefront stream was built for batches of {size}; got one of {n}")
            sizes.append(n)
            yield (cond if n == size else torch.cat([cond, cond[-1:].expand(size - n)])), seed

    for i, tokens in enumerate(stream.stream(cohorts())):
        yield tokens[:sizes[i]]
