"""Frontiers, parents, masks and decode schedules for token grids with any number of axes.

A grid of shape ``(d_1, ..., d_k)`` stores its ``N = prod(d)`` tokens in raster (row-major) order.
The distance of cell ``c`` is ``sum(c)``; frontier ``s`` holds every cell at distance ``s``, so there
are ``sum(d) - k + 1`` frontiers. Axis ``i``'s parent of ``c`` is ``c - e_i``.

Every decoding mode is two per-cell maps (:meth:`GridGeometry.generation_pass` and
:meth:`GridGeometry.predictors`), and one generic function (:func:`schedule_from_maps`) turns them into
the decode steps; the training mask compares generation passes. The modes:

* ``nar``: pass = distance from the origin, one predictor per axis (the parent ``c - e_i``);
* ``raster``: pass = raster index, one predictor (the previous cell);
* ``par`` (Wang et al., "Parallelized Autoregressive Visual Generation"), with ``regions`` per axis:
  the first cell of each region one region at a time, then the cells at the same relative position of
  all regions together; one predictor (the previous cell of the same region; a region's first cell:
  the previous region's first cell).

Everything that needs a mask, an order, a parent map or a KV-cache layout asks this module: the
training pass, the samplers (plain and fast) and the tests.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from nar.errors import ConfigError

# Predictor index meaning "the last condition token" (sequence position C - 1).
FROM_CONDITION = -1
# Predictor index meaning "this axis does not predict this cell".
NO_PREDICTOR = -2

MODES = ("nar", "raster", "par")

# A validated decoding: the mode and, for ``par``, the number of regions along each axis.
Decoding = tuple[str, "tuple[int, ...] | None"]


@dataclass(frozen=True)
class DecodeStep:
    """One forward pass of decoding.

    Attributes:
        inputs: raster indices of the cells fed in this pass (empty for the prefill, which feeds
            the condition tokens): the previous pass's outputs.
        outputs: raster indices of the cells whose logits come out, in raster order.
        sources: ``[n_axes, len(outputs)]`` index into :attr:`reads` of the cell whose output predicts
            each output cell for each axis; ``FROM_CONDITION`` (prefill: the last condition token)
            or ``NO_PREDICTOR``.
        reads: ``[R]`` raster indices of the cells whose outputs this pass reads: the predictors fed in
            an *earlier* pass (in the order they were fed), then :attr:`inputs`. It is ``inputs`` itself
            (so ``sources`` index the fed cells) in every pass of ``nar`` and ``raster`` and every pass of
            ``par`` but its first parallel one, which reads the outputs of every region's first cell.
            Defaults to ``inputs``.
    """

    inputs: torch.Tensor
    outputs: torch.Tensor
    sources: torch.Tensor
    reads: torch.Tensor = None  # type: ignore[assignment]  # None → inputs (see __post_init__)

    def __post_init__(self) -> None:
        if self.reads is None:
            object.__setattr__(self, "reads", self.inputs)


@dataclass(frozen=True)
class Schedule:
    """A decoding schedule: the prefill followed by one step per remaining forward pass."""

    mode: str
    steps: tuple[DecodeStep, ...]
    # Cells in the order they are produced: the concatenation of every step's outputs.
    order: torch.Tensor
    # ``par``: regions along each axis; None for the other modes.
    regions: tuple[int, ...] | None = None

    @property
    def num_passes(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class StepLayout:
    """Where one pass of a schedule reads and writes, in both KV-cache layouts (CPU tensors).

    ``T`` is the number of tokens the pass feeds, ``L = C + N`` the sequence length. In the *decode*
    layout the cache stores keys in decode order (condition slots ``0 … C-1``, then grid cell ``c`` at
    slot ``C + rank(c)`` in :attr:`Schedule.order`), so every pass writes contiguous slots right after
    the previous pass's and attends to a prefix of the cache. In the *sequence* layout keys sit at
    their sequence positions and every pass is masked over the whole cache.

    Attributes:
        positions: ``[T]`` int64 sequence positions fed: ``arange(C)`` for the prefill, else ``C + inputs``.
        start: first decode-layout slot the pass writes; it writes ``start … start + T - 1``.
        kv_limit: ``start + T``, the decode-layout slots the pass attends to: exactly the keys fed so far.
        mask: ``[T, kv_limit]`` bool, which of those slots each query may see (training-mask rows in
            slot order), or None when every query sees all of them (every pass of ``nar``, ``raster`` and
            ``par`` except a prefill over more than one condition token, which is causal).
        sequence_mask: ``[T, L]`` bool, the training-mask rows of ``positions`` (the sequence layout).
        sources: ``[A, n_out]`` the step's predictor table (:attr:`DecodeStep.sources`, an index into
            :attr:`DecodeStep.reads`, which are the fed tokens unless the pass reads outputs back).
        source_offset: condition tokens fed ahead of the grid inputs: input ``j`` is fed token
            ``source_offset + j`` and ``FROM_CONDITION`` is fed token ``source_offset - 1``.
        outputs: ``[n_out]`` raster indices of the cells produced.
        source_slots: ``[A, n_out]`` int64 decode-layout slot of the token whose output predicts each
            output cell per axis (``C - 1`` for ``FROM_CONDITION``), or ``NO_PREDICTOR``. Inside
            ``[start, kv_limit)`` (the prefill: ``C - 1``) except where the pass reads back the output of
            an earlier pass (:attr:`DecodeLayout.kept_slots`).
    """

    positions: torch.Tensor
    start: int
    kv_limit: int
    mask: torch.Tensor | None
    sequence_mask: torch.Tensor
    sources: torch.Tensor
    source_offset: int
    outputs: torch.Tensor
    source_slots: torch.Tensor


@dataclass(frozen=True)
class DecodeLayout:
    """Every pass of ``schedule(mode)`` laid out for a KV cache behind ``num_cond`` condition tokens.

    Attributes:
        slot_position: ``[L]`` int64 sequence position whose key the decode layout stores in each slot.
        regions: the ``par`` regions per axis (None for the other modes).
        kept_slots: ``[K]`` sorted decode-layout slots whose output (the features a head reads) a *later*
            pass reads back through its :attr:`StepLayout.source_slots`: a decoder keeps those outputs.
            Empty for ``nar`` and ``raster``; for ``par`` the first cells of regions ``0 … k-2``, which the
            first parallel pass reads.
    """

    mode: str
    num_cond: int
    steps: tuple[StepLayout, ...]
    slot_position: torch.Tensor
    regions: tuple[int, ...] | None = None
    kept_slots: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def key_valid(self, cond_mask: torch.Tensor, order: str = "sequence") -> torch.Tensor:
        """``[B, L]`` bool validity of every key given ``cond_mask [B, C]`` (1 = token, 0 = caption
        padding); grid keys are always valid. ``order='sequence'``: keys at their sequence positions
        (training pass, sequence layout); ``'decode'``: keys at their decode-layout slots."""
        if cond_mask.shape[-1] != self.num_cond:
            raise ValueError(f"condition mask has {cond_mask.shape[-1]} slots, the layout {self.num_cond}")
        grid = torch.ones(cond_mask.shape[0], len(self.slot_position) - self.num_cond, dtype=torch.bool,
                          device=cond_mask.device)
        valid = torch.cat([cond_mask.bool(), grid], dim=1)
        if order == "sequence":
            return valid
        if order == "decode":
            return valid[:, self.slot_position.to(valid.device)]
        raise ValueError(f"order must be 'sequence' or 'decode', got {order!r}")


def raster_strides(shape: Sequence[int]) -> torch.Tensor:
    """``[k]`` int64 raster (row-major) strides of a grid of ``shape``."""
    return torch.tensor([math.prod(shape[i + 1:]) for i in range(len(shape))], dtype=torch.long)


def schedule_from_maps(mode: str, passes: torch.Tensor, predictors: torch.Tensor,
                       regions: tuple[int, ...] | None = None) -> Schedule:
    """The decode steps of any schedule given as two per-cell maps.

    Args:
        passes: ``[N]`` int64 pass that generates each cell; every pass ``0 … P-1`` generates at least one.
        predictors: ``[A, N]`` int64 raster index of the cell whose output predicts each cell per axis,
            ``FROM_CONDITION`` (pass 0 only) or ``NO_PREDICTOR``; every cell has at least one, generated
            in a strictly earlier pass.
    Returns:
        ``P`` steps: step ``p`` outputs the cells of pass ``p`` in raster order and feeds those of pass
        ``p - 1``; the order is by pass, raster order within a pass.
    Raises:
        ValueError: when the maps break the rules above.
    """
    n = passes.numel()
    counts = torch.bincount(passes, minlength=1)
    if bool((counts == 0).any()):
        raise ValueError(f"schedule '{mode}': passes must be 0 … P-1 with none empty, got counts {counts.tolist()}")
    valid = predictors >= 0
    earlier = passes[predictors.clamp(min=0)] < passes  # [A, N]
    from_cond = (predictors == FROM_CONDITION) & (passes == 0)
    if not bool((valid & earlier | from_cond | (predictors == NO_PREDICTOR)).all()):
        raise ValueError(f"schedule '{mode}': a predictor is not generated in an earlier pass")
    if not bool((predictors != NO_PREDICTOR).any(0).all()):
        raise ValueError(f"schedule '{mode}': a cell has no predictor")
    order = torch.sort(passes, stable=True).indices  # [N] ties (one pass) in raster order
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    # Where a predictor is fed in the pass right before its cell's (always, but for PAR's first
    # parallel pass), its source is its place among that pass's cells: no per-step search needed.
    pred_cell = predictors.clamp(min=0)
    fed_before = valid & (passes[pred_cell] < passes - 1)  # [A, N] predictors fed in an earlier pass
    local = rank[pred_cell] - torch.tensor(bounds)[passes[pred_cell]]  # [A, N] index among its pass's cells
    direct = torch.where(valid, local, predictors)
    reading_back = set(passes[fed_before.any(0)].tolist())
    steps = []
    for p in range(len(counts)):
        outputs = order[bounds[p]:bounds[p + 1]]  # [n_out]
        inputs = order[bounds[p - 1]:bounds[p]] if p else order[:0]  # [T]
        if p not in reading_back:
            steps.append(DecodeStep(inputs, outputs, direct[:, outputs]))
            continue
        pred = predictors[:, outputs]  # [A, n_out]
        back = torch.unique(pred[fed_before[:, outputs]])
        reads = torch.cat([back[torch.argsort(rank[back])], inputs])  # [R] earlier-fed predictors, then inputs
        slot = torch.full((n,), -1, dtype=torch.long)
        slot[reads] = torch.arange(len(reads))
        steps.append(DecodeStep(inputs, outputs, torch.where(pred >= 0, slot[pred.clamp(min=0)], pred), reads))
    return Schedule(mode, tuple(steps), order, regions)


class GridGeometry:
    """Geometry of one token grid. Cheap to build; tensors are computed once and cached (CPU, int64).

    Decoding modes are ``nar``, ``raster`` and ``par``; ``par`` needs ``regions``, the number of regions
    along each axis (each dividing its axis: ``(2, 2)`` is PAR-4×, ``(1, 4, 4)`` a 16× split of every
    video frame), and the other modes reject it. Every mode-taking method validates both and raises
    :class:`~nar.errors.ConfigError` naming ``mode`` or ``regions``.
    """

    def __init__(self, shape: Sequence[int]):
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= 8 or any(d < 1 for d in shape):
            raise ConfigError(f"grid shape must have 1..8 positive axes, got {shape}")
        self.shape = shape
        self._maps: dict[Decoding, tuple[torch.Tensor, torch.Tensor]] = {}
        self._schedules: dict[Decoding, Schedule] = {}
        self._layouts: dict[tuple[int, str, tuple[int, ...] | None], DecodeLayout] = {}

    def __repr__(self) -> str:
        return f"GridGeometry{self.shape}"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_cells(self) -> int:
        return math.prod(self.shape)

    @property
    def num_frontiers(self) -> int:
        """Number of NAR forward passes: ``sum(d) - k + 1``."""
        return sum(self.shape) - self.ndim + 1

    # ----------------------------------------------------------------------------------------
    # Per-cell maps
    # ----------------------------------------------------------------------------------------
    @cached_property
    def coords(self) -> torch.Tensor:
        """``[N, k]`` coordinates of every cell, raster order."""
        axes = [torch.arange(d) for d in self.shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.ndim)

    @cached_property
    def distance(self) -> torch.Tensor:
        """``[N]`` Manhattan distance of every cell from the origin."""
        return self.coords.sum(-1)

    @cached_property
    def strides(self) -> torch.Tensor:
        """``[k]`` raster strides."""
        return raster_strides(self.shape)

    @cached_property
    def parent_index(self) -> torch.Tensor:
        """``[k, N]`` raster index of ``c - e_i``, or -1 where ``c_i == 0``."""
        idx = torch.arange(self.num_cells)
        has = self.coords.T > 0  # [k, N]
        return torch.where(has, idx[None] - self.strides[:, None], torch.full_like(has, -1, dtype=torch.long))

    @cached_property
    def child_index(self) -> torch.Tensor:
        """``[k, N]`` raster index of ``c + e_i``, or -1 past the edge."""
        idx = torch.arange(self.num_cells)
        limit = torch.tensor(self.shape)[:, None] - 1
        has = self.coords.T < limit
        return torch.where(has, idx[None] + self.strides[:, None], torch.full_like(has, -1, dtype=torch.long))

    @cached_property
    def num_parents(self) -> torch.Tensor:
        """``[N]`` number of axes with a parent (0 only at the origin)."""
        return (self.parent_index >= 0).sum(0)

    # ----------------------------------------------------------------------------------------
    # Frontiers
    # ----------------------------------------------------------------------------------------
    @cached_property
    def frontier_order(self) -> torch.Tensor:
        """``[N]`` raster indices sorted by distance, ties in raster order (the decode order)."""
        # Stable sort keeps raster order inside a frontier.
        return torch.sort(self.distance, stable=True).indices

    @cached_property
    def frontier_sizes(self) -> tuple[int, ...]:
        return tuple(torch.bincount(self.distance, minlength=self.num_frontiers).tolist())

    @cached_property
    def frontier_offsets(self) -> tuple[int, ...]:
        """Start of each frontier in :attr:`frontier_order`, plus the total at the end."""
        out = [0]
        for n in self.frontier_sizes:
            out.append(out[-1] + n)
        return tuple(out)

    def frontier(self, s: int) -> torch.Tensor:
        """Raster indices of frontier ``s`` in raster order."""
        if not 0 <= s < self.num_frontiers:
            raise IndexError(f"frontier {s} out of range for {self} ({self.num_frontiers} frontiers)")
        return self.frontier_order[self.frontier_offsets[s]: self.frontier_offsets[s + 1]]

    # ----------------------------------------------------------------------------------------
    # Decoding modes: the generation pass and the predictors of every cell
    # ----------------------------------------------------------------------------------------
    def _decoding(self, mode: str, regions: Sequence[int] | None) -> Decoding:
        """Validate ``mode`` and ``regions``; ``regions`` normalised to a tuple (the cache key)."""
        if mode not in MODES:
            raise ConfigError(f"unknown decoding mode {mode!r} (expected 'nar', 'raster' or 'par')")
        if mode != "par":
            if regions is not None:
                raise ConfigError(f"regions={regions!r} applies to mode 'par' only, not {mode!r}; leave it unset")
            return mode, None
        if regions is None:
            raise ConfigError("mode 'par' needs regions: the number of regions along each axis, e.g. "
                              f"regions={(2,) * self.ndim} for PAR-{2 ** self.ndim}x on {self}")
        try:
            counts = tuple(operator.index(r) for r in regions)
        except TypeError:
            raise ConfigError(f"regions must be a sequence of integers, one per axis, got {regions!r}") from None
        if len(counts) != self.ndim:
            raise ConfigError(f"regions {counts} must give one count per axis of the grid {self.shape}")
        for axis, (r, d) in enumerate(zip(counts, self.shape)):
            if r < 1 or d % r:
                raise ConfigError(f"regions {counts}: axis {axis} has {d} cells, which {r} regions do not divide")
        return mode, counts

    def _cell_maps(self, mode: str, regions: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(passes [N], predictors [A, N])`` of a decoding, cached; the shared tensors, not copies."""
        key = self._decoding(mode, regions)
        if key not in self._maps:
            with torch.device("cpu"):
                if key[0] == "par":
                    self._maps[key] = self._par_maps(key[1])
                else:
                    self._maps[key] = self._nar_maps() if key[0] == "nar" else self._raster_maps()
        return self._maps[key]

    def _nar_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Pass = distance; every axis's parent predicts, the origin from the condition.
        pred = torch.where(self.parent_index >= 0, self.parent_index, torch.full_like(self.parent_index, NO_PREDICTOR))
        pred[:, 0] = FROM_CONDITION
        return self.distance, pred

    def _raster_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(self.num_cells)
        return idx, (idx - 1)[None]

    def _par_maps(self, regions: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        size = torch.tensor(self.shape) // torch.tensor(regions)  # [k] cells of a region along each axis
        region = (self.coords // size * raster_strides(regions)).sum(-1)  # [N] region index, raster over regions
        rel = (self.coords % size * raster_strides(size.tolist())).sum(-1)  # [N] raster index inside the region
        k = math.prod(regions)
        # First cells one region a pass (0 … k-1), then relative position r >= 1 of every region in pass k + r - 1.
        passes = torch.where(rel == 0, region, k + rel - 1)
        cell_at = torch.empty(k, self.num_cells // k, dtype=torch.long)  # [region, rel] → raster index
        cell_at[region, rel] = torch.arange(self.num_cells)
        pred = torch.where(rel > 0, cell_at[region, (rel - 1).clamp(min=0)], cell_at[(region - 1).clamp(min=0), 0])
        pred = torch.where((rel == 0) & (region == 0), FROM_CONDITION, pred)
        return passes, pred[None]

    def generation_pass(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[N]`` int64 forward pass that generates each cell (0 = the prefill); the training mask's level.

        ``nar``: the distance; ``raster``: the raster index; ``par``: ``j`` for the first cell of region
        ``j`` (regions in raster order), ``k + r - 1`` for the cell at raster position ``r >= 1`` inside its
        region, ``k`` regions in all, so ``k + N/k - 1`` passes.
        """
        return self._cell_maps(mode, regions)[0].clone()

    def predictors(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[n_axes, N]`` raster index of the cell whose output predicts each cell, per axis.

        ``nar``: one row per axis, the parent ``c - e_i``; the origin is predicted by every axis from
        the last condition token (``FROM_CONDITION``); missing parents are ``NO_PREDICTOR``.
        ``raster``: a single row, the previous cell in raster order (``FROM_CONDITION`` for cell 0).
        ``par``: a single row, the previous cell of the same region (raster order inside a region); the
        first cell of region ``j > 0`` from the first cell of region ``j - 1``, region 0's from the condition.
        Every predictor is generated in a strictly earlier pass (:meth:`generation_pass`).
        """
        return self._cell_maps(mode, regions)[1].clone()

    @staticmethod
    def keep_axis(predictors: torch.Tensor, axis: int | None) -> torch.Tensor:
        """Restrict a ``[n_axes, n]`` predictor table (training predictors or a step's sources) so a
        cell is predicted only along ``axis`` whenever it has a parent there; cells without one (the
        first row of a row-only table, say) keep their other parents. ``axis=None``: unchanged.

        This is the single-direction ablation: one direction's neighbour predicts each cell, instead
        of the mean over every parent.
        """
        if axis is None:
            return predictors
        has_primary = predictors[axis] != NO_PREDICTOR  # [n]
        out = torch.where(has_primary[None], torch.full_like(predictors, NO_PREDICTOR), predictors)
        out[axis] = predictors[axis]
        return out

    # ----------------------------------------------------------------------------------------
    # Masks
    # ----------------------------------------------------------------------------------------
    def attention_mask(self, num_cond: int, mode: str = "nar", order: str = "raster", *,
                       regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[C+N, C+N]`` bool mask (True = may attend) for condition tokens followed by the grid.

        Grid query ``q`` sees grid key ``k`` iff ``pass(k) <= pass(q)`` (:meth:`generation_pass`): a token
        fed in a pass sees every token fed in the same or an earlier pass, and the output predicting a cell
        (at a predictor generated earlier) sees only cells generated before that cell's pass. ``nar``:
        ``dist(k) <= dist(q)``; ``raster``: causal. Every grid token sees every condition token; condition
        tokens are causal among themselves. ``order='decode'`` (``'frontier'`` for ``nar``) returns the same
        relation with the grid permuted into decode order. Caption padding is applied separately
        (:meth:`DecodeLayout.key_valid`).
        """
        level = self._cell_maps(mode, regions)[0]
        if order in ("decode", "frontier"):
            level = level[self.schedule(mode, regions=regions).order]
        elif order != "raster":
            raise ConfigError(f"order must be 'raster' or 'decode', got {order!r}")
        # Condition tokens get levels below every grid level and strictly increasing (causal).
        level = torch.cat([torch.arange(num_cond) - num_cond, level])
        return level[:, None] >= level[None, :]

    # ----------------------------------------------------------------------------------------
    # Schedules
    # ----------------------------------------------------------------------------------------
    def schedule(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> Schedule:
        """The decoding schedule: prefill, then one pass per frontier (``nar``), per token (``raster``)
        or per relative position after the regions' first cells (``par``); cached per decoding."""
        key = self._decoding(mode, regions)
        if key not in self._schedules:
            with torch.device("cpu"):
                passes, predictors = self._cell_maps(*key)
                self._schedules[key] = schedule_from_maps(key[0], passes, predictors, key[1])
        return self._schedules[key]

    def decode_layout(self, num_cond: int, mode: str = "nar", *,
                      regions: Sequence[int] | None = None) -> DecodeLayout:
        """Sequence positions, cache slots and masks of every pass of ``schedule(mode)`` behind
        ``num_cond`` condition tokens (cached per ``(num_cond, mode, regions)``; CPU tensors).

        Built only from the schedule (its steps and ``order``) and :meth:`attention_mask`, so it holds for
        any schedule whose step inputs are the previous step's outputs and whose order is the
        concatenation of the step outputs; other schedules raise ``ConfigError``.
        """
        schedule = self.schedule(mode, regions=regions)  # validates mode and regions
        key = (int(num_cond), schedule.mode, schedule.regions)
        if key not in self._layouts:
            with torch.device("cpu"):  # also when called under another default device
                self._layouts[key] = self._build_decode_layout(int(num_cond), schedule)
        return self._layouts[key]

    def _build_decode_layout(self, num_cond: int, schedule: Schedule) -> DecodeLayout:
        if num_cond < 1:
            raise ConfigError(f"decoding needs at least one condition token (it predicts the first cell), got {num_cond}")
        mode, regions = schedule.mode, schedule.regions
        n = self.num_cells
        rank = torch.full((n,), -1, dtype=torch.long)
        rank[schedule.order] = torch.arange(len(schedule.order))
        if len(schedule.order) != n or bool((rank < 0).any()):
            raise ConfigError(f"schedule '{mode}': its order is not a permutation of the {n} cells of {self}")
        cond = torch.arange(num_cond)
        slot_position = torch.cat([cond, num_cond + schedule.order])  # [L]
        position_slot = torch.cat([cond, num_cond + rank])  # [L], its inverse
        train = self.attention_mask(num_cond, mode, regions=regions)  # [L, L]
        # Slot of the token whose output predicts each cell, all steps in one gather: a read's slot, C - 1 for
        # FROM_CONDITION, NO_PREDICTOR kept (the sentinels -1, -2 index two entries appended after the reads).
        n_out = [len(step.outputs) for step in schedule.steps]
        reads = torch.cat([step.reads for step in schedule.steps])
        read_start = torch.tensor([0] + [len(step.reads) for step in schedule.steps]).cumsum(0)[:-1]
        sources = torch.cat([step.sources for step in schedule.steps], dim=1)  # [A, N] in decode order
        offset = torch.repeat_interleave(read_start, torch.tensor(n_out))  # [N]
        lookup = torch.cat([position_slot[num_cond + reads], torch.tensor([num_cond - 1, NO_PREDICTOR])])
        source_slots = lookup[torch.where(sources >= 0, sources + offset, len(reads) - 1 - sources)]  # [A, N]
        steps, written = [], 0
        for i, (step, slots) in enumerate(zip(schedule.steps, torch.split(source_slots, n_out, dim=1))):
            positions = cond if i == 0 else num_cond + step.inputs  # [T]
            start, kv_limit = written, written + len(positions)
            if not torch.equal(position_slot[positions], torch.arange(start, kv_limit)):
                raise ConfigError(
                    f"schedule '{mode}': step {i} does not feed the cells that follow step {i - 1}'s in its "
                    "order; a prefix cache needs each step's inputs to be the previous step's outputs and "
                    "the order to be the concatenation of the outputs")
            rows = train[positions]  # [T, L]
            visible = rows[:, slot_position[:kv_limit]]  # [T, kv_limit]
            steps.append(StepLayout(
                positions=positions, start=start, kv_limit=kv_limit,
                mask=None if bool(visible.all()) else visible, sequence_mask=rows, sources=step.sources,
                source_offset=int((positions < num_cond).sum()), outputs=step.outputs, source_slots=slots))
            written = kv_limit
        # A pass reads the outputs of tokens fed so far (below its kv_limit); those below its start are kept.
        start, limit = (torch.repeat_interleave(torch.tensor([[s.start, s.kv_limit] for s in steps]),
                                                torch.tensor(n_out), dim=0).T)  # [N] each
        fed = source_slots >= 0
        late = (fed & (source_slots >= limit)).any(0)
        if bool(late.any()):
            step = int(torch.bucketize(late.nonzero()[0], torch.tensor(n_out).cumsum(0), right=True))
            raise ConfigError(f"schedule '{mode}': step {step} reads the output of a cell it has not fed yet")
        kept = torch.unique(source_slots[fed & (source_slots < start)])
        return DecodeLayout(mode, num_cond, tuple(steps), slot_position, regions, kept)
