"""The wavefront sampler: two generations in flight, half a schedule apart, decoded as one stream.

A frontier's width runs 1, 2, …, w, …, 2, 1 over a generation (16x16 tokens: 31 passes feeding 1 to 16
cells per sample), so the passes at either end feed a handful of rows and leave the matrix units idle
while every kernel still pays its fixed cost. Here two cohorts of ``batch`` samples share every pass:
slot A decodes a cohort from its first pass to its last, while slot B finishes the cohort it began in
the previous period and begins the next one ``offset = P // 2`` passes in. Each pass then feeds the cells
of both (1 + 16, 2 + 15, … on a 16x16 grid), every block runs once over the tokens of both
(:meth:`nar.model.NARModel.decode_steps`), and a steady stream completes two cohorts per period of ``P``
passes where the one-batch sampler completes one. As with an LLM server's continuous batching, the gain
needs a stream: the first period's slot B and the last period's idle slot decode nothing that is kept,
about one cohort's passes over a whole stream.

Reproducibility: a cohort draws its first ``split = P - offset`` passes from a generator seeded with its
seed and the rest from one seeded with :func:`second_seed` of it, in either slot. So a cohort's tokens
depend on its conditions and seed alone (a resumed run regenerates a chunk exactly), and they equal those
of :func:`nar.sampling.generate.decode_into` run on that cohort alone with the same two generators
(tested token for token in float32). They differ from the one-batch sampler's tokens for the same seed,
which come from a single generator; the distribution is the same.

The plain path stays the reference: the same ``decode_steps`` with one pass is the one-batch sampler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from nar.errors import ConfigError
from nar.model import NARModel
from nar.sampling.fast import (
    CompiledDraw,
    capture_failed,
    capture_graph,
    check_batch,
    choose_attention,
    compile_blocks,
    placement,
)
from nar.sampling.logits import (
    SamplingConfig,
    apply_guidance,
    check_condition,
    guidance_on,
    sample_tokens,
    with_null,
)

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive seeds far apart


def second_seed(seed: int) -> int:
    """The seed of a cohort's second-half generator, a fixed function of its own seed."""
    return ((seed + 1) * _GOLDEN) % 2**63


def split_generators(seed: int, passes: int, device: torch.device | str) -> list[torch.Generator]:
    """One generator per pass as a wavefront cohort draws them: the first ``passes - passes // 2`` from a
    generator seeded ``seed``, the rest from one seeded :func:`second_seed` (for ``decode_into``)."""
    first = torch.Generator(device=device).manual_seed(seed)
    second = torch.Generator(device=device).manual_seed(second_seed(seed))
    split = passes - passes // 2
    return [first] * split + [second] * (passes - split)


class _Slot:
    """One cohort position of the stream: its conditions, KV caches, tokens and two generators."""

    def __init__(self, model: NARModel, batch: int, sampling: SamplingConfig, device: torch.device,
                 attention: str, kv_dtype: torch.dtype | None = None):
        self.cond = torch.zeros(batch, dtype=torch.long, device=device)
        rows = 2 * batch if sampling.guided else batch
        self.state = model.start_inference(rows, layout="decode", device=device, attention=attention,
                                           kv_dtype=kv_dtype)
        self.tokens = torch.zeros(batch, model.cfg.num_cells, dtype=torch.long, device=device)
        self.generators = (torch.Generator(device=device), torch.Generator(device=device))

    def load(self, cond: torch.Tensor, seed: int, both: bool) -> None:
        self.cond.copy_(cond)
        self.generators[0].manual_seed(seed)
        if both:
            self.generators[1].manual_seed(second_seed(seed))


class WavefrontSampler:
    """A stream of class-conditional cohorts of ``batch`` samples, two in flight.

    Example::

        sampler = WavefrontSampler(model.to(torch.bfloat16).cuda(), batch=64, sampling=SamplingConfig(cfg_scale=2.0))
        for tokens in sampler.stream((labels[i:i + 64], seed + i) for i in range(0, 50_000, 64)):
            ...  # tokens [64, 16, 16], cohort by cohort in order
    """

    def __init__(self, model: NARModel, batch: int, sampling: SamplingConfig | None = None,
                 cuda_graph: bool | None = None, compile: bool | str = False, attention: str = "auto",
                 kv_dtype: torch.dtype | None = None):
        if model.cfg.condition != "class":
            raise ConfigError("the wavefront sampler takes class conditions; caption models keep the one-batch "
                              "sampler (their caption masks differ per batch)", key="wavefront")
        check_batch(batch)
        self.model = model.eval()
        self.sampling = sampling or SamplingConfig()
        self.batch = batch
        self.device, self.dtype, self.use_graph = placement(model, cuda_graph)
        self.attention = choose_attention(attention, self.device, self.dtype)
        self.slots = (_Slot(model, batch, self.sampling, self.device, self.attention, kv_dtype),
                      _Slot(model, batch, self.sampling, self.device, self.attention, kv_dtype))
        plans = self.slots[0].state.plans
        self.passes = len(plans)
        if self.passes < 2:
            raise ConfigError(f"a wavefront needs at least 2 passes per generation, this schedule has {self.passes}",
                              key="wavefront")
        self.offset = self.passes // 2
        self.split = self.passes - self.offset  # passes a cohort makes in the period it starts in
        generated, self.generated_before = 0, []
        for plan in plans:
            self.generated_before.append(generated)
            generated += len(plan.outputs)
        self.finished = torch.zeros_like(self.slots[1].tokens)  # slot B's cohort, saved before B restarts
        self.runners = compile_blocks([b.forward_segments for b in model.blocks()], compile) if compile else None
        self.draw = None
        if compile and self.device.type == "cuda" and CompiledDraw.applies(self.sampling):
            self.draw = CompiledDraw(self.sampling)
            for slot in self.slots:
                slot.state.upcast = False
        self._graph: torch.cuda.CUDAGraph | None = None

    @property
    def num_passes(self) -> int:
        """Passes per period; a period completes two cohorts in a steady stream."""
        return self.passes

    def _input(self, slot: _Slot, step: int, cond: torch.Tensor) -> torch.Tensor:
        if step == 0:
            return self.model.step_input(0, slot.state, cond=cond)
        prev = slot.tokens[:, slot.state.plans[step - 1].outputs]
        return self.model.step_input(step, slot.state, tokens=torch.cat([prev, prev]) if self.sampling.guided else prev)

    def _sample(self, slot: _Slot, step: int, logits: torch.Tensor) -> None:
        on = guidance_on(self.sampling, self.generated_before[step])
        generator = slot.generators[0 if step < self.split else 1]
        if self.draw is not None:
            tokens = self.draw(logits, on, generator)
        else:
            tokens = sample_tokens(apply_guidance(logits.float(), self.sampling, on), self.sampling, generator)
        slot.tokens[:, slot.state.plans[step].outputs] = tokens

    @torch.no_grad()
    def _period(self) -> None:
        a, b = self.slots
        cond_a = with_null(self.model, a.cond, None, self.sampling)[0]  # checked in stream / __call__
        cond_b = with_null(self.model, b.cond, None, self.sampling)[0]
        for k in range(self.passes):
            step_a, step_b = k, (k - self.offset) % self.passes
            if step_b == 0:  # B's cohort is complete: keep it before the next one overwrites the tokens
                self.finished.copy_(b.tokens)
            passes = [(self._input(a, step_a, cond_a), step_a, a.state), (self._input(b, step_b, cond_b), step_b, b.state)]
            for slot, step, logits in zip(self.slots, (step_a, step_b), self.model.decode_steps(passes, self.runners)):
                self._sample(slot, step, logits)

    def run_period(self) -> None:
        """One period of ``num_passes`` passes with whatever the slots hold (two cohorts' worth in a steady
        stream; what the benchmark times). Replays the CUDA graph on a GPU, recording it the first time."""
        if not self.use_graph:
            self._period()
            return
        if self._graph is None:
            try:
                self._graph = capture_graph(self._period, [g for s in self.slots for g in s.generators], self.device)
            except RuntimeError as err:  # e.g. an op that cannot be captured on this torch build
                capture_failed(err)
                self.use_graph = False
                self._period()
                return
        self._graph.replay()

    def stream(self, cohorts: Iterable[tuple[torch.Tensor, int]]) -> Iterator[torch.Tensor]:
        """``(class ids [batch], seed)`` per cohort → tokens ``[batch, *grid]`` per cohort, in the same order.

        Each period loads the next two cohorts: slot A's decodes whole, slot B's begins and is finished in
        the next period. The tensors handed back are fresh copies. The heads' weights are re-read when the
        stream starts, so a ``load_state_dict`` into the model since is followed. Each cohort's ids are
        checked as it arrives, a host sync for ids on the GPU (none for ids on the host, copied in by the slot).
        """
        return self._stream(self._checked(cohorts))

    def _checked(self, cohorts: Iterable[tuple[torch.Tensor, int]]) -> Iterator[tuple[torch.Tensor, int]]:
        for cond, seed in cohorts:
            if cond.shape != (self.batch,):
                raise ValueError(f"this sampler takes cohorts of {self.batch} class ids, got shape "
                                 f"{tuple(cond.shape)}")
            check_condition(self.model, cond)
            yield cond, seed

    @torch.no_grad()
    def _stream(self, cohorts: Iterable[tuple[torch.Tensor, int]]) -> Iterator[torch.Tensor]:
        """:meth:`stream` for cohorts already checked."""
        a, b = self.slots
        for slot in self.slots:
            self.model.refresh_inference(slot.state)
        grid = self.model.cfg.grid
        cohorts = iter(cohorts)
        pending: int | None = None  # the seed of the cohort slot B began in the previous period
        while True:
            first = next(cohorts, None)
            second = next(cohorts, None) if first is not None else None
            if first is None and pending is None:
                return
            if first is not None:
                a.load(first[0], first[1], both=True)
            if second is not None:
                b.load(second[0], second[1], both=False)
            if pending is not None:
                b.generators[1].manual_seed(second_seed(pending))
            self.run_period()
            if pending is not None:
                yield self.finished.view(self.batch, *grid).clone()
            if first is not None:
                yield a.tokens.view(self.batch, *grid).clone()
            pending = second[1] if second is not None else None

    def __call__(self, cond: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Every sample of ``cond [N]`` (any ``N``): cohorts of ``batch`` seeded ``seed``, ``seed + 1``, …; the
        last one padded by repeating its conditions. Returns tokens ``[N, *grid]``."""
        check_condition(self.model, cond)  # once per request (a host sync for ids on the GPU), not per period
        n = cond.shape[0]
        cond = cond.to(self.device)
        if n % self.batch:
            cond = torch.cat([cond, cond[-1:].expand(self.batch - n % self.batch)])
        cohorts = ((cond[i:i + self.batch], seed + i // self.batch) for i in range(0, cond.shape[0], self.batch))
        return torch.cat(list(self._stream(cohorts)))[:n]
