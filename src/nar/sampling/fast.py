"""The fast sampler: a static batch, a KV cache in decode order, and the whole generation as one CUDA graph.

What makes it fast, compared with the plain loop in :mod:`nar.sampling.generate` run with the
``sequence`` layout (the official code's formulation):

* keys are stored in decode order, so each pass attends to a prefix of the cache with no mask at
  all (class conditions), on the GPU through a kernel sized for a frontier's few queries
  (:mod:`nar.model.decode_attention`) instead of the math kernel over a dense boolean mask;
* every per-step constant (slots, positions, rotary rows, parent maps) is built once on the device;
* sampling is batched over the frontier with the exponential race — no per-token loop, no host sync;
* every step has a fixed shape, so prefill + all passes + sampling are captured once into a single
  CUDA graph and replayed: one launch per batch instead of thousands.

On the CPU (or with ``cuda_graph=False``) the same code runs eagerly; it is tested token for token
against the plain loop.
"""

from __future__ import annotations

import logging

import torch

from nar.errors import ConfigError
from nar.model import NARModel
from nar.model.decode_attention import triton_available
from nar.sampling.generate import decode_into
from nar.sampling.logits import SamplingConfig, apply_guidance, check_condition, with_null

log = logging.getLogger(__name__)


class CompiledDraw:
    """Guidance, temperature and the exponential race of :func:`nar.sampling.logits.sample_tokens` (GPU
    branch) as two compiled kernels around the random draw.

    Eagerly the logits make six passes over ``[2B, n, V]`` memory after the projection (upcast, lerp,
    noise, log, subtract, argmax); compiled, one pass reads the model's half-precision logits and writes
    the guided float32 ones, and one reads those with the noise and reduces to the argmax. The random
    numbers come from the same ``exponential_`` call on the same generator, so the tokens are the plain
    path's up to float rounding inside the fused arithmetic (tested on a GPU: >97 % identical).
    Only for plain sampling (no greedy, top-k or top-p: those keep the general path).
    """

    def __init__(self, sampling: SamplingConfig):
        self.sampling = sampling
        self.prepare = torch.compile(self._prepare, dynamic=True)
        self.pick = torch.compile(self._pick, dynamic=True)

    @staticmethod
    def applies(sampling: SamplingConfig) -> bool:
        return not sampling.greedy and sampling.top_k == 0 and sampling.top_p >= 1.0

    def _prepare(self, raw: torch.Tensor, guided: bool) -> torch.Tensor:
        s = self.sampling
        x = apply_guidance(raw.float(), s, guided)  # the plain loop's arithmetic; `guided` is a bool per pass
        return x / s.temperature if s.temperature != 1.0 else x

    @staticmethod
    def _pick(logits: torch.Tensor, race: torch.Tensor) -> torch.Tensor:
        return (logits - race.log()).argmax(-1)

    def __call__(self, raw: torch.Tensor, guided: bool, generator: torch.Generator | None) -> torch.Tensor:
        logits = self.prepare(raw, guided)
        race = torch.empty_like(logits).exponential_(1.0, generator=generator)
        return self.pick(logits, race)


def choose_attention(attention: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto`` → the small-query kernel where it runs (half precision on a GPU with Triton), else SDPA."""
    if attention != "auto":
        return attention
    half = dtype in (torch.bfloat16, torch.float16)
    return "triton" if device.type == "cuda" and half and triton_available() else "sdpa"


def compile_blocks(fns: list, mode: bool | str = True) -> list:
    """``torch.compile`` each of ``fns`` (blocks, or their ``forward_segments``) with symbolic lengths: the
    frontier width and the cache prefix vary per pass. The fused kernels are then recorded into the CUDA
    graph like any other. ``mode``: True for inductor's default, or a ``torch.compile`` mode name
    (``max-autotune-no-cudagraphs``; the sampler records its own graph, so never a cudagraphs mode)."""
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    kwargs = {} if mode is True else {"mode": mode}
    return [torch.compile(fn, dynamic=True, **kwargs) for fn in fns]


def check_batch(batch: int) -> None:
    """Raise :class:`~nar.errors.ConfigError` (key ``batch``) unless ``batch`` is a positive int: the samplers
    preallocate ``batch`` rows, and a bad size would only fail later, in ``torch.zeros`` or a modulo."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"must be a positive integer (samples per call), got {batch!r}", key="batch")


def capture_failed(err: RuntimeError) -> None:
    """Decide on a failed CUDA-graph capture: re-raise an out-of-memory error (running eagerly would hide it as a
    silently slow run, and the eager run needs the same memory), else log why the sampler now runs eagerly."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        raise err
    log.warning("CUDA graph capture failed (%s); running eagerly", err)


def placement(model: NARModel, cuda_graph: bool | None) -> tuple[torch.device, torch.dtype, bool]:
    """The device and dtype a sampler runs in (the model's) and whether it records a CUDA graph: by default on
    a GPU; ``cuda_graph=True`` off a GPU is an error."""
    p = next(model.parameters())
    use_graph = (p.device.type == "cuda") if cuda_graph is None else cuda_graph
    if use_graph and p.device.type != "cuda":
        raise ValueError("cuda_graph=True needs the model on a CUDA device")
    return p.device, p.dtype, use_graph


def capture_graph(run, generators: list[torch.Generator | None], device: torch.device) -> torch.cuda.CUDAGraph:
    """Record ``run()`` into a CUDA graph (after two warm-up calls on a side stream: allocator, cuBLAS and
    attention kernels) and return it. The warm-up and the capture draw random numbers: every generator in
    ``generators`` (None: the device's default one) is registered with the graph and then restored, so the
    first replay starts from the caller's state and a seed gives the same tokens on every call."""
    gens = [g for g in generators if g is not None]
    saved = [g.get_state() for g in gens]
    default = torch.cuda.get_rng_state(device) if None in generators else None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    for g in gens:
        graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        run()
    for g, state in zip(gens, saved):
        g.set_state(state)
    if default is not None:
        torch.cuda.set_rng_state(default, device)
    return graph


class FastSampler:
    """Reusable sampler for a fixed batch size, condition kind and sampling config.

    Example::

        sampler = FastSampler(model.to(torch.bfloat16).cuda(), batch=64, sampling=SamplingConfig(cfg_scale=2.0))
        tokens = sampler(labels, generator=torch.Generator("cuda").manual_seed(0))  # [64, 16, 16]
    """

    def __init__(self, model: NARModel, batch: int, sampling: SamplingConfig | None = None,
                 cond_mask: torch.Tensor | None = None, cuda_graph: bool | None = None, compile: bool | str = False,
                 attention: str = "auto", kv_dtype: torch.dtype | None = None):
        check_batch(batch)
        self.model = model.eval()
        self.sampling = sampling or SamplingConfig()
        self.batch = batch
        self.device, self.dtype, self.use_graph = placement(model, cuda_graph)
        cfg = model.cfg
        if cfg.condition == "class":
            self.cond = torch.zeros(batch, dtype=torch.long, device=self.device)
        else:
            self.cond = torch.zeros(batch, cfg.caption_len, cfg.caption_dim, device=self.device, dtype=self.dtype)
        rows = 2 * batch if self.sampling.guided else batch
        mask = cond_mask.to(self.device) if cond_mask is not None else None
        check_condition(model, self.cond, mask)  # the caption mask, fixed here: [batch, caption_len]
        _, mask = with_null(model, self.cond, mask, self.sampling)
        self.attention = attention = choose_attention(attention, self.device, self.dtype)
        self.state = model.start_inference(rows, cond_mask=mask, layout="decode", device=self.device,
                                           attention=attention, kv_dtype=kv_dtype)
        self.tokens = torch.zeros(batch, cfg.num_cells, dtype=torch.long, device=self.device)
        if compile:
            self.state.runners = compile_blocks(model.blocks(), compile)
        # On the GPU the sampling arithmetic compiles too; the model then hands back half-precision logits.
        self.draw = None
        if compile and self.device.type == "cuda" and CompiledDraw.applies(self.sampling):
            self.draw = CompiledDraw(self.sampling)
            self.state.upcast = False
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_generator: torch.Generator | None = None

    @property
    def num_passes(self) -> int:
        return len(self.state.plans)

    @torch.no_grad()
    def _run(self, generator: torch.Generator | None) -> None:
        cond, _ = with_null(self.model, self.cond, None, self.sampling)  # checked in __call__
        decode_into(self.model, self.state, cond, self.sampling, self.tokens, generator, draw=self.draw)

    def _capture(self, generator: torch.Generator | None) -> None:
        self._graph = capture_graph(lambda: self._run(generator), [generator], self.device)
        self._graph_generator = generator

    @torch.no_grad()
    def __call__(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``cond`` class ids ``[batch]`` or caption features ``[batch, L, D]`` → tokens ``[batch, *grid]``.

        The returned tensor is a fresh copy; the sampler's buffers are reused by the next call. The heads'
        weights are re-read on every call, so a ``load_state_dict`` into the model since is followed.
        """
        if cond.shape != self.cond.shape:  # copy_ would broadcast e.g. a [B, 1, D] caption into every slot
            raise ValueError(f"this sampler was built for conditions of shape {tuple(self.cond.shape)} (batch "
                             f"{self.batch}), got {tuple(cond.shape)}")
        check_condition(self.model, cond)
        self.model.refresh_inference(self.state)
        self.cond.copy_(cond)
        if not self.use_graph:
            self._run(generator)
        else:
            if self._graph is None or generator is not self._graph_generator:
                try:
                    self._capture(generator)
                except RuntimeError as err:  # e.g. an op that cannot be captured on this torch build
                    capture_failed(err)
                    self.use_graph = False
                    self._graph = None
                    return self(cond, generator)
            self._graph.replay()
        return self.tokens.view(self.batch, *self.model.cfg.grid).clone()
