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
  the previous region's first cell). Between the two phases PAR feeds learnable *transition tokens*:
  the output of region ``j``'s first cell already predicts region ``j + 1``'s first cell, so region
  ``j``'s second cell (``j < k - 1``) is predicted by transition token ``j`` instead, fed together with
  the last region's first cell in the first parallel pass, at region ``j``'s first cell's position.

The sequence is the ``C`` condition tokens, the ``N`` grid cells (raster order), then the ``K`` transition
tokens (none outside ``par``): *token* ``t < N`` is cell ``t`` and token ``N + j`` transition token ``j``,
at sequence position ``C + t``.

Everything that needs a mask, an order, a parent map or a KV-cache layout asks this module: the
training pass, the samplers (plain and fast) and the tests.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import torch

from nar.errors import ConfigError

# Predictor index meaning "the last condition token" (sequence position C - 1).
FROM_CONDITION = -1
# Predictor index meaning "this axis does not predict this cell".
NO_PREDICTOR = -2

MODES = ("nar", "raster", "par")

# A validated decoding: the mode and, for ``par``, the number of regions along each axis.
Decoding = tuple[str, "tuple[int, ...] | None"]


class _Maps(NamedTuple):
    """The per-token maps of one decoding (tokens: the ``N`` cells, then the ``K`` transition tokens)."""

    levels: torch.Tensor  # [N + K] generation pass of a cell; a transition token's: one below the pass feeding it
    predictors: torch.Tensor  # [A, N] token whose output predicts each cell (or FROM_CONDITION / NO_PREDICTOR)
    cells: torch.Tensor  # [N + K] cell whose position each token takes


@dataclass(frozen=True)
class DecodeStep:
    """One forward pass of decoding.

    Attributes:
        inputs: raster indices of the cells fed in this pass (empty for the prefill, which feeds
            the condition tokens): the previous pass's outputs.
        outputs: raster indices of the cells whose logits come out, in raster order.
        sources: ``[n_axes, len(outputs)]`` index into the tokens this pass feeds (:attr:`inputs`, then
            :attr:`transition`) of the token whose output predicts each output cell for each axis;
            ``FROM_CONDITION`` (prefill: the last condition token) or ``NO_PREDICTOR``.
        transition: ``[K_p]`` indices ``j`` of the transition tokens fed after :attr:`inputs` (``par``'s
            first parallel pass); empty in every other pass and mode.
    """

    inputs: torch.Tensor
    outputs: torch.Tensor
    sources: torch.Tensor
    transition: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long, device="cpu"))


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

    @property
    def num_transition(self) -> int:
        """Transition tokens the schedule feeds (``K``; 0 but for ``par``)."""
        return sum(len(step.transition) for step in self.steps)

    @property
    def feed_order(self) -> torch.Tensor:
        """``[N + K]`` tokens in the order they enter the KV cache: each pass's fed tokens (cells, then
        transition tokens as ``N + j``), then the last pass's outputs, which are never fed; ``order`` when
        there are no transition tokens."""
        n = len(self.order)
        fed = [torch.cat([step.inputs, n + step.transition]) for step in self.steps[1:]]
        return torch.cat([*fed, self.steps[-1].outputs])


@dataclass(frozen=True)
class StepLayout:
    """Where one pass of a schedule reads and writes, in both KV-cache layouts (CPU tensors).

    ``T`` is the number of tokens the pass feeds, ``L = C + N + K`` the sequence length. In the *decode*
    layout the cache stores keys in feed order (condition slots ``0 … C-1``, then token ``t`` at slot
    ``C + rank(t)`` in :attr:`Schedule.feed_order`), so every pass writes contiguous slots right after
    the previous pass's and attends to a prefix of the cache. In the *sequence* layout keys sit at
    their sequence positions and every pass is masked over the whole cache.

    Attributes:
        positions: ``[T]`` int64 sequence positions fed: ``arange(C)`` for the prefill, else ``C + inputs``
            followed by ``C + N + transition``.
        start: first decode-layout slot the pass writes; it writes ``start … start + T - 1``.
        kv_limit: ``start + T``, the decode-layout slots the pass attends to: exactly the keys fed so far.
        mask: ``[T, kv_limit]`` bool, which of those slots each query may see (training-mask rows in
            slot order), or None when every query sees all of them (every pass of ``nar``, ``raster`` and
            ``par`` except a prefill over more than one condition token, which is causal).
        sequence_mask: ``[T, L]`` bool, the training-mask rows of ``positions`` (the sequence layout).
        sources: ``[A, n_out]`` the step's predictor table (:attr:`DecodeStep.sources`, an index into the
            tokens the pass feeds).
        source_offset: condition tokens fed ahead of the grid inputs: input ``j`` is fed token
            ``source_offset + j`` and ``FROM_CONDITION`` is fed token ``source_offset - 1``.
        outputs: ``[n_out]`` raster indices of the cells produced.
        transition: ``[K_p]`` transition tokens fed after the cells (:attr:`DecodeStep.transition`).
    """

    positions: torch.Tensor
    start: int
    kv_limit: int
    mask: torch.Tensor | None
    sequence_mask: torch.Tensor
    sources: torch.Tensor
    source_offset: int
    outputs: torch.Tensor
    transition: torch.Tensor


@dataclass(frozen=True)
class DecodeLayout:
    """Every pass of ``schedule(mode)`` laid out for a KV cache behind ``num_cond`` condition tokens.

    Attributes:
        slot_position: ``[L]`` int64 sequence position whose key the decode layout stores in each slot.
        regions: the ``par`` regions per axis (None for the other modes).
    """

    mode: str
    num_cond: int
    steps: tuple[StepLayout, ...]
    slot_position: torch.Tensor
    regions: tuple[int, ...] | None = None

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


def schedule_from_maps(mode: str, levels: torch.Tensor, predictors: torch.Tensor,
                       regions: tuple[int, ...] | None = None) -> Schedule:
    """The decode steps of any schedule given as two per-token maps.

    Args:
        levels: ``[N + K]`` int64. For cell ``t < N``: the pass that generates it (every pass ``0 … P-1``
            generates at least one); it is fed in pass ``level + 1``. For transition token ``N + j``: the
            pass *before* the one that feeds it (``0 … P-2``); it is never generated.
        predictors: ``[A, N]`` int64 token whose output predicts each cell per axis, ``FROM_CONDITION``
            (pass 0 only) or ``NO_PREDICTOR``; every cell has at least one, fed in the pass that outputs the
            cell (level one below the cell's pass).
    Returns:
        ``P`` steps: step ``p`` outputs the cells of pass ``p`` in raster order and feeds those of pass
        ``p - 1`` (raster order), then the transition tokens of level ``p - 1``; the order is by pass,
        raster order within a pass.
    Raises:
        ValueError: when the maps break the rules above.
    """
    n = predictors.shape[1]
    passes, extra = levels[:n], levels[n:]
    counts = torch.bincount(passes, minlength=1)
    if bool((counts == 0).any()):
        raise ValueError(f"schedule '{mode}': passes must be 0 … P-1 with none empty, got counts {counts.tolist()}")
    if bool(((extra < 0) | (extra > len(counts) - 2)).any()):
        raise ValueError(f"schedule '{mode}': a transition token's level {extra.tolist()} is not a pass before the last")
    valid = predictors >= 0
    fed_in_its_pass = levels[predictors.clamp(min=0)] == passes - 1  # [A, N]
    from_cond = (predictors == FROM_CONDITION) & (passes == 0)
    if not bool((valid & fed_in_its_pass | from_cond | (predictors == NO_PREDICTOR)).all()):
        raise ValueError(f"schedule '{mode}': a predictor is not fed in the pass that outputs its cell "
                         "(generated in the pass before, or a transition token of that level)")
    if not bool((predictors != NO_PREDICTOR).any(0).all()):
        raise ValueError(f"schedule '{mode}': a cell has no predictor")
    # Feed order: by level, a level's cells (raster order) before its transition tokens.
    token = torch.arange(levels.numel())
    feed = torch.sort(2 * levels + (token >= n), stable=True).indices  # [N + K]
    rank = torch.empty_like(feed)
    rank[feed] = token
    level_start = torch.cumsum(torch.bincount(levels), 0) - torch.bincount(levels)  # [P] first rank of each level
    local = rank - level_start[levels]  # [N + K] place among the tokens its pass feeds
    sources = torch.where(valid, local[predictors.clamp(min=0)], predictors)  # [A, N]
    order = torch.sort(passes, stable=True).indices  # [N] ties (one pass) in raster order
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    steps = []
    for p in range(len(counts)):
        outputs = order[bounds[p]:bounds[p + 1]]  # [n_out]
        if p == 0:
            steps.append(DecodeStep(order[:0], outputs, sources[:, outputs]))
            continue
        transition = (extra == p - 1).nonzero().flatten()  # [K_p]
        steps.append(DecodeStep(order[bounds[p - 1]:bounds[p]], outputs, sources[:, outputs], transition))
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
        self._maps: dict[Decoding, _Maps] = {}
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
    def decoding(self, mode: str, regions: Sequence[int] | None = None) -> Decoding:
        """``(mode, regions)`` validated, ``regions`` as a tuple (None but for ``par``); raises
        :class:`~nar.errors.ConfigError` naming what is wrong."""
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

    def _token_maps(self, mode: str, regions: Sequence[int] | None) -> _Maps:
        """The per-token maps of a decoding, cached; the shared tensors, not copies."""
        key = self.decoding(mode, regions)
        if key not in self._maps:
            with torch.device("cpu"):
                if key[0] == "par":
                    self._maps[key] = self._par_maps(key[1])
                else:
                    passes, pred = self._nar_maps() if key[0] == "nar" else self._raster_maps()
                    self._maps[key] = _Maps(passes, pred, torch.arange(self.num_cells))
        return self._maps[key]

    def _nar_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Pass = distance; every axis's parent predicts, the origin from the condition.
        pred = torch.where(self.parent_index >= 0, self.parent_index, torch.full_like(self.parent_index, NO_PREDICTOR))
        pred[:, 0] = FROM_CONDITION
        return self.distance, pred

    def _raster_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(self.num_cells)
        return idx, (idx - 1)[None]

    def _par_maps(self, regions: tuple[int, ...]) -> _Maps:
        n = self.num_cells
        size = torch.tensor(self.shape) // torch.tensor(regions)  # [k] cells of a region along each axis
        region = (self.coords // size * raster_strides(regions)).sum(-1)  # [N] region index, raster over regions
        rel = (self.coords % size * raster_strides(size.tolist())).sum(-1)  # [N] raster index inside the region
        k = math.prod(regions)
        # First cells one region a pass (0 … k-1), then relative position r >= 1 of every region in pass k + r - 1.
        passes = torch.where(rel == 0, region, k + rel - 1)
        cell_at = torch.empty(k, n // k, dtype=torch.long)  # [region, rel] → raster index
        cell_at[region, rel] = torch.arange(n)
        pred = torch.where(rel > 0, cell_at[region, (rel - 1).clamp(min=0)], cell_at[(region - 1).clamp(min=0), 0])
        pred = torch.where((rel == 0) & (region == 0), FROM_CONDITION, pred)
        # Transition token j (regions 0 … k-2, when there is a parallel phase) predicts region j's second cell:
        # the output of region j's first cell already predicts region j + 1's first cell. Fed with region
        # k-1's first cell (level k - 1), at region j's first cell's position.
        num_transition = k - 1 if n // k > 1 else 0
        pred = torch.where((rel == 1) & (region < num_transition), n + region, pred)
        levels = torch.cat([passes, torch.full((num_transition,), k - 1)])
        return _Maps(levels, pred[None], torch.cat([torch.arange(n), cell_at[:num_transition, 0]]))

    def generation_pass(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[N]`` int64 forward pass that generates each cell (0 = the prefill); the training mask's level.

        ``nar``: the distance; ``raster``: the raster index; ``par``: ``j`` for the first cell of region
        ``j`` (regions in raster order), ``k + r - 1`` for the cell at raster position ``r >= 1`` inside its
        region, ``k`` regions in all, so ``k + N/k - 1`` passes. ``par``'s transition tokens have level
        ``k - 1`` (:meth:`token_levels`).
        """
        return self._token_maps(mode, regions).levels[:self.num_cells].clone()

    def token_levels(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[N + K]`` int64 level of every token, the training mask's: a cell's :meth:`generation_pass`, then
        each transition token's, one below the pass that feeds it (``k - 1`` for ``par``; no tokens elsewhere)."""
        return self._token_maps(mode, regions).levels.clone()

    def token_cells(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[N + K]`` int64 cell whose position (rotary angles, absolute embedding) each token takes: cell ``t``
        its own, ``par``'s transition token ``j`` region ``j``'s first cell. ``K = len - N`` is the number of
        transition tokens: ``k - 1`` for ``par`` with ``k > 1`` regions of more than one cell, else 0."""
        return self._token_maps(mode, regions).cells.clone()

    def predictors(self, mode: str = "nar", *, regions: Sequence[int] | None = None) -> torch.Tensor:
        """``[n_axes, N]`` token (a raster index ``< N``, or ``N + j`` for transition token ``j``) whose output
        predicts each cell, per axis.

        ``nar``: one row per axis, the parent ``c - e_i``; the origin is predicted by every axis from
        the last condition token (``FROM_CONDITION``); missing parents are ``NO_PREDICTOR``.
        ``raster``: a single row, the previous cell in raster order (``FROM_CONDITION`` for cell 0).
        ``par``: a single row, the previous cell of the same region (raster order inside a region); the
        first cell of region ``j > 0`` from the first cell of region ``j - 1``, region 0's from the condition,
        and the second cell of region ``j < k - 1`` from transition token ``j``.
        Every predictor is fed in the pass that outputs its cell (:meth:`token_levels` one below the cell's).
        """
        return self._token_maps(mode, regions).predictors.clone()

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
        """``[L, L]`` bool mask (True = may attend), ``L = C + N + K``: condition tokens, the grid, then the
        transition tokens (``K = 0`` but for ``par``).

        Token query ``q`` sees token key ``k`` iff ``level(k) <= level(q)`` (:meth:`token_levels`): a token
        fed in a pass sees every token fed in the same or an earlier pass, and the output predicting a cell
        (at a predictor fed in the pass that outputs it) sees only cells generated before that cell's pass.
        ``nar``: ``dist(k) <= dist(q)``; ``raster``: causal; ``par``: the transition tokens and the last
        region's first cell see each other. Every token sees every condition token; condition tokens are
        causal among themselves. ``order='decode'`` (``'frontier'`` for ``nar``) returns the same relation
        with the tokens permuted into feed order (:attr:`Schedule.feed_order`). Caption padding is applied
        separately (:meth:`DecodeLayout.key_valid`).
        """
        level = self._token_maps(mode, regions).levels
        if order in ("decode", "frontier"):
            level = level[self.schedule(mode, regions=regions).feed_order]
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
        key = self.decoding(mode, regions)
        if key not in self._schedules:
            with torch.device("cpu"):
                maps = self._token_maps(*key)
                self._schedules[key] = schedule_from_maps(key[0], maps.levels, maps.predictors, key[1])
        return self._schedules[key]

    def decode_layout(self, num_cond: int, mode: str = "nar", *,
                      regions: Sequence[int] | None = None) -> DecodeLayout:
        """Sequence positions, cache slots and masks of every pass of ``schedule(mode)`` behind
        ``num_cond`` condition tokens (cached per ``(num_cond, mode, regions)``; CPU tensors).

        Built only from the schedule (its steps and ``order``) and :meth:`attention_mask`, so it holds for
        any schedule whose step inputs are the previous step's outputs, whose order is the concatenation of
        the step outputs and whose mask lets no pass see a token fed after it; others raise ``ConfigError``.
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
        mode, regions, steps = schedule.mode, schedule.regions, schedule.steps
        n, k = self.num_cells, schedule.num_transition
        for i in range(1, len(steps)):
            if not torch.equal(steps[i].inputs, steps[i - 1].outputs):
                raise ConfigError(
                    f"schedule '{mode}': step {i} does not feed step {i - 1}'s outputs; a prefix cache needs each "
                    "step's inputs to be the previous step's outputs")
        outputs = torch.cat([step.outputs for step in steps])
        feed = schedule.feed_order  # [N + K]
        if not (torch.equal(outputs, schedule.order) and torch.equal(feed.sort().values, torch.arange(n + k))):
            raise ConfigError(f"schedule '{mode}': its steps do not output each of the {n} cells of {self} once, in "
                              "its order, or do not feed each transition token once")
        slot_position = torch.cat([torch.arange(num_cond), num_cond + feed])  # [L]
        train = self.attention_mask(num_cond, mode, regions=regions)  # [L, L]
        layouts, written = [], 0
        for i, step in enumerate(steps):
            positions = torch.arange(num_cond) if i == 0 else num_cond + torch.cat([step.inputs, n + step.transition])
            start, kv_limit = written, written + len(positions)
            rows = train[positions]  # [T, L]
            if bool(rows[:, slot_position[kv_limit:]].any()):
                raise ConfigError(f"schedule '{mode}': step {i} attends to a token fed in a later pass")
            visible = rows[:, slot_position[:kv_limit]]  # [T, kv_limit]
            layouts.append(StepLayout(
                positions=positions, start=start, kv_limit=kv_limit,
                mask=None if bool(visible.all()) else visible, sequence_mask=rows, sources=step.sources,
                source_offset=num_cond if i == 0 else 0, outputs=step.outputs, transition=step.transition))
            written = kv_limit
        return DecodeLayout(mode, num_cond, tuple(layouts), slot_position, regions)
