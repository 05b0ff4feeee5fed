"""Frontiers, parents, masks and decode schedules for token grids with any number of axes.

A grid of shape ``(d_1, ..., d_k)`` stores its ``N = prod(d)`` tokens in raster (row-major) order.
The distance of cell ``c`` is ``sum(c)``; frontier ``s`` holds every cell at distance ``s``, so there
are ``sum(d) - k + 1`` frontiers. Axis ``i``'s parent of ``c`` is ``c - e_i``.

Everything that needs a mask, an order, a parent map or a KV-cache layout asks this module: the
training pass, the samplers (plain and fast) and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from nar.errors import ConfigError

# Predictor index meaning "the last condition token" (sequence position C - 1).
FROM_CONDITION = -1
# Predictor index meaning "this axis does not predict this cell".
NO_PREDICTOR = -2


@dataclass(frozen=True)
class DecodeStep:
    """One forward pass of decoding.

    Attributes:
        inputs: raster indices of the cells fed in this pass (empty for the prefill, which feeds
            the condition tokens).
        outputs: raster indices of the cells whose logits come out, in raster order.
        sources: ``[n_axes, len(outputs)]`` index into ``inputs`` of the cell whose output predicts
            each output cell for each axis; ``FROM_CONDITION`` (prefill: the last condition token)
            or ``NO_PREDICTOR``.
    """

    inputs: torch.Tensor
    outputs: torch.Tensor
    sources: torch.Tensor


@dataclass(frozen=True)
class Schedule:
    """A decoding schedule: the prefill followed by one step per remaining forward pass."""

    mode: str
    steps: tuple[DecodeStep, ...]
    # Cells in the order they are produced: the concatenation of every step's outputs.
    order: torch.Tensor

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
            slot order), or None when every query sees all of them (every pass of ``nar`` and ``raster``
            except a prefill over more than one condition token, which is causal).
        sequence_mask: ``[T, L]`` bool, the training-mask rows of ``positions`` (the sequence layout).
        sources: ``[A, n_out]`` the step's predictor table (:attr:`DecodeStep.sources`).
        source_offset: condition tokens fed ahead of the grid inputs: input ``j`` is fed token
            ``source_offset + j`` and ``FROM_CONDITION`` is fed token ``source_offset - 1``.
        outputs: ``[n_out]`` raster indices of the cells produced.
    """

    positions: torch.Tensor
    start: int
    kv_limit: int
    mask: torch.Tensor | None
    sequence_mask: torch.Tensor
    sources: torch.Tensor
    source_offset: int
    outputs: torch.Tensor


@dataclass(frozen=True)
class DecodeLayout:
    """Every pass of ``schedule(mode)`` laid out for a KV cache behind ``num_cond`` condition tokens.

    Attributes:
        slot_position: ``[L]`` int64 sequence position whose key the decode layout stores in each slot.
    """

    mode: str
    num_cond: int
    steps: tuple[StepLayout, ...]
    slot_position: torch.Tensor

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


class GridGeometry:
    """Geometry of one token grid. Cheap to build; tensors are computed once and cached (CPU, int64)."""

    def __init__(self, shape: Sequence[int]):
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= 8 or any(d < 1 for d in shape):
            raise ConfigError(f"grid shape must have 1..8 positive axes, got {shape}")
        self.shape = shape
        self._layouts: dict[tuple[int, str], DecodeLayout] = {}

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
        return torch.tensor([math.prod(self.shape[i + 1:]) for i in range(self.ndim)])

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
    # Predictors: which position's output predicts which cell, for the training pass
    # ----------------------------------------------------------------------------------------
    def predictors(self, mode: str = "nar") -> torch.Tensor:
        """``[n_axes, N]`` raster index of the cell whose output predicts each cell, per axis.

        ``nar``: one row per axis, the parent ``c - e_i``; the origin is predicted by every axis from
        the last condition token (``FROM_CONDITION``); missing parents are ``NO_PREDICTOR``.
        ``raster``: a single row, the previous cell in raster order (``FROM_CONDITION`` for cell 0).
        """
        if mode == "raster":
            return (torch.arange(self.num_cells) - 1)[None]
        if mode != "nar":
            raise ConfigError(f"unknown decoding mode '{mode}' (expected 'nar' or 'raster')")
        pred = torch.where(self.parent_index >= 0, self.parent_index, torch.full_like(self.parent_index, NO_PREDICTOR))
        pred[:, 0] = FROM_CONDITION
        return pred

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
    def attention_mask(self, num_cond: int, mode: str = "nar", order: str = "raster") -> torch.Tensor:
        """``[C+N, C+N]`` bool mask (True = may attend) for condition tokens followed by the grid.

        ``nar``: grid query ``q`` sees grid key ``k`` iff ``dist(k) <= dist(q)``; ``raster``: causal.
        Every grid token sees every condition token; condition tokens are causal among themselves.
        ``order='frontier'`` returns the same relation with the grid permuted into decode order.
        Caption padding is applied separately (:meth:`DecodeLayout.key_valid`).
        """
        n = self.num_cells
        if mode == "nar":
            level = self.distance if order == "raster" else self.distance[self.frontier_order]
        elif mode == "raster":
            if order != "raster":
                raise ConfigError("the raster baseline has only the raster order")
            level = torch.arange(n)
        else:
            raise ConfigError(f"unknown decoding mode '{mode}' (expected 'nar' or 'raster')")
        # Condition tokens get levels below every grid level and strictly increasing (causal).
        level = torch.cat([torch.arange(num_cond) - num_cond, level])
        return level[:, None] >= level[None, :]

    # ----------------------------------------------------------------------------------------
    # Schedules
    # ----------------------------------------------------------------------------------------
    def schedule(self, mode: str = "nar") -> Schedule:
        """The decoding schedule: prefill, then one pass per frontier (``nar``) or per token (``raster``)."""
        if mode == "nar":
            return self._nar_schedule
        if mode == "raster":
            return self._raster_schedule
        raise ConfigError(f"unknown decoding mode '{mode}' (expected 'nar' or 'raster')")

    def decode_layout(self, num_cond: int, mode: str = "nar") -> DecodeLayout:
        """Sequence positions, cache slots and masks of every pass of ``schedule(mode)`` behind
        ``num_cond`` condition tokens (cached per ``(num_cond, mode)``; CPU tensors).

        Built only from the schedule (its steps and ``order``) and :meth:`attention_mask`, so it holds for
        any schedule whose step inputs are the previous step's outputs and whose order is the
        concatenation of the step outputs; other schedules raise ``ConfigError``.
        """
        key = (int(num_cond), mode)
        if key not in self._layouts:
            with torch.device("cpu"):  # also when called under another default device
                self._layouts[key] = self._build_decode_layout(*key)
        return self._layouts[key]

    def _build_decode_layout(self, num_cond: int, mode: str) -> DecodeLayout:
        if num_cond < 1:
            raise ConfigError(f"decoding needs at least one condition token (it predicts the first cell), got {num_cond}")
        schedule = self.schedule(mode)
        n = self.num_cells
        rank = torch.full((n,), -1, dtype=torch.long)
        rank[schedule.order] = torch.arange(len(schedule.order))
        if len(schedule.order) != n or bool((rank < 0).any()):
            raise ConfigError(f"schedule '{mode}': its order is not a permutation of the {n} cells of {self}")
        cond = torch.arange(num_cond)
        slot_position = torch.cat([cond, num_cond + schedule.order])  # [L]
        position_slot = torch.cat([cond, num_cond + rank])  # [L], its inverse
        train = self.attention_mask(num_cond, mode)  # [L, L]
        steps, written = [], 0
        for i, step in enumerate(schedule.steps):
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
                source_offset=int((positions < num_cond).sum()), outputs=step.outputs))
            written = kv_limit
        return DecodeLayout(mode, num_cond, tuple(steps), slot_position)

    @cached_property
    def _nar_schedule(self) -> Schedule:
        k = self.ndim
        empty = torch.zeros(0, dtype=torch.long)
        origin = torch.zeros(1, dtype=torch.long)
        steps = [DecodeStep(empty, origin, torch.full((k, 1), FROM_CONDITION, dtype=torch.long))]
        for s in range(self.num_frontiers - 1):
            inputs, outputs = self.frontier(s), self.frontier(s + 1)
            # Slot of each raster cell inside this step's inputs (or -1).
            slot = torch.full((self.num_cells,), -1, dtype=torch.long)
            slot[inputs] = torch.arange(len(inputs))
            parents = self.parent_index[:, outputs]  # [k, n_out]
            sources = torch.where(parents >= 0, slot[parents.clamp(min=0)], torch.full_like(parents, NO_PREDICTOR))
            steps.append(DecodeStep(inputs, outputs, sources))
        return Schedule("nar", tuple(steps), self.frontier_order)

    @cached_property
    def _raster_schedule(self) -> Schedule:
        empty = torch.zeros(0, dtype=torch.long)
        steps = [DecodeStep(empty, torch.zeros(1, dtype=torch.long), torch.full((1, 1), FROM_CONDITION))]
        for n in range(self.num_cells - 1):
            steps.append(DecodeStep(torch.tensor([n]), torch.tensor([n + 1]), torch.zeros((1, 1), dtype=torch.long)))
        return Schedule("raster", tuple(steps), torch.arange(self.num_cells))
