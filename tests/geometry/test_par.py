"""Property tests of the PAR schedule (Wang et al., "Parallelized Autoregressive Visual Generation")
over 1-, 2- and 3-axis grids, square or not, with every valid region split: the first cell of every
region one region a pass, then the cells at each relative position of all regions in one pass, with
k - 1 transition tokens fed between the two phases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nar.errors import ConfigError
from nar.geometry import GridGeometry
from nar.geometry.grid import FROM_CONDITION, schedule_from_maps


def divisors(d: int) -> list[int]:
    return [r for r in range(1, d + 1) if d % r == 0]


@st.composite
def par_grids(draw, min_axes: int = 1, max_axes: int = 3):
    """``(shape, regions)`` with a region count dividing every axis."""
    shape = tuple(draw(st.lists(st.integers(1, 8), min_size=min_axes, max_size=max_axes)))
    return shape, tuple(draw(st.sampled_from(divisors(d))) for d in shape)


def every_split(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*[divisors(d) for d in shape]))


def loop_reference(shape, regions):
    """Generation pass and predictor of every cell, cell by cell from the published description: the
    second cell of region j < k - 1 is predicted by transition token j (token N + j) when regions have
    more than one cell."""
    size = [d // r for d, r in zip(shape, regions)]
    region_ids = {c: j for j, c in enumerate(itertools.product(*[range(r) for r in regions]))}  # raster over regions
    rel_ids = {c: q for q, c in enumerate(itertools.product(*[range(s) for s in size]))}  # raster in a region
    k = math.prod(regions)
    cell_of = {}
    where = []
    for cell, c in enumerate(itertools.product(*[range(d) for d in shape])):
        j = region_ids[tuple(ci // si for ci, si in zip(c, size))]
        q = rel_ids[tuple(ci % si for ci, si in zip(c, size))]
        cell_of[j, q] = cell
        where.append((j, q))
    n = len(where)
    passes = [j if q == 0 else k + q - 1 for j, q in where]
    pred = [n + j if q == 1 and j < k - 1 else cell_of[j, q - 1] if q else (cell_of[j - 1, 0] if j else FROM_CONDITION)
            for j, q in where]
    return torch.tensor(passes), torch.tensor([pred])


def check_par(shape: tuple[int, ...], regions: tuple[int, ...], num_cond: int = 2) -> None:
    geo = GridGeometry(shape)
    n, k = geo.num_cells, math.prod(regions)
    sched = geo.schedule("par", regions=regions)
    passes = geo.generation_pass("par", regions=regions)
    pred = geo.predictors("par", regions=regions)  # [1, N]
    ref_passes, ref_pred = loop_reference(shape, regions)
    # Region order raster, raster order within a region, one head.
    assert torch.equal(passes, ref_passes) and torch.equal(pred, ref_pred)
    # k - 1 transition tokens when there is a parallel phase, at the positions of regions 0 … k-2's first cells,
    # one level with the last region's first cell (they are fed with it).
    t = k - 1 if n // k > 1 else 0
    firsts = torch.cat([s.outputs for s in sched.steps[:k]])  # [k] first cells, region order
    assert sched.num_transition == t
    assert torch.equal(geo.token_cells("par", regions=regions), torch.cat([torch.arange(n), firsts[:t]]))
    levels = geo.token_levels("par", regions=regions)
    assert torch.equal(levels, torch.cat([passes, torch.full((t,), k - 1)]))

    # k first cells one at a time, then N/k - 1 parallel passes of k cells.
    assert sched.num_passes == k + n // k - 1
    sizes = [len(s.outputs) for s in sched.steps]
    assert sizes == [1] * k + [k] * (n // k - 1)
    produced = torch.cat([s.outputs for s in sched.steps])
    assert sorted(produced.tolist()) == list(range(n)) and torch.equal(produced, sched.order)
    for p, step in enumerate(sched.steps):
        assert bool((passes[step.outputs] == p).all())
        assert bool((step.outputs[1:] > step.outputs[:-1]).all())  # raster order = region order
        # Each step feeds the previous step's outputs, the first parallel pass then every transition token.
        assert torch.equal(step.inputs, sched.steps[p - 1].outputs if p else torch.zeros(0, dtype=torch.long))
        assert step.transition.tolist() == (list(range(t)) if p == k else [])
        # Its sources name each output's predictor among the tokens it feeds.
        fed = torch.cat([step.inputs, n + step.transition])
        src = step.sources[0]
        from_cond = src == FROM_CONDITION
        assert bool(from_cond.any()) == (p == 0)
        assert torch.equal(fed[src[~from_cond]], pred[0, step.outputs[~from_cond]])
    # Every token but the last pass's outputs is fed exactly once.
    assert sorted(sched.feed_order.tolist()) == list(range(n + t))

    # A cell's predictor is fed in the pass that outputs the cell; only the very first cell uses the condition.
    has = pred[0] >= 0
    assert bool((levels[pred[0][has]] == passes[has] - 1).all())
    assert (~has).nonzero().flatten().tolist() == [0]
    # With one head, a token's output predicts at most one cell.
    assert len(set(pred[0][has].tolist())) == int(has.sum())

    # Training mask: a fed token sees exactly the tokens fed in the same or an earlier pass...
    mask = geo.attention_mask(num_cond, "par", regions=regions)
    assert mask.shape == (num_cond + n + t,) * 2
    tokens = mask[num_cond:, num_cond:]
    assert torch.equal(tokens, levels[:, None] >= levels[None, :])
    assert torch.equal(tokens[:n, :n], passes[:, None] >= passes[None, :])
    assert bool(mask[num_cond:, :num_cond].all())
    assert torch.equal(mask[:num_cond, :num_cond], torch.ones(num_cond, num_cond, dtype=torch.bool).tril())
    assert not bool(mask[:num_cond, num_cond:].any())
    # ... so the output predicting a cell depends only on cells produced before that cell's pass.
    seen = tokens[pred[0].clamp(min=0), :n]  # [N, N] cells visible at each cell's predictor
    produced_before = passes[None, :] < passes[:, None]  # [N, N]
    assert not bool((seen & ~produced_before)[has].any())
    # The transition tokens see every region's first cell; no cell of the sequential phase sees them.
    if t:
        assert bool(tokens[n:, firsts].all()) and not bool(tokens[firsts[:-1]][:, n:].any())
    # In decode order the mask is block-causal by pass.
    perm = torch.cat([torch.arange(num_cond), num_cond + sched.feed_order])
    assert torch.equal(geo.attention_mask(num_cond, "par", "decode", regions=regions), mask[perm][:, perm])


@settings(max_examples=80, deadline=None)
@given(par_grids(min_axes=2, max_axes=3))
def test_par_schedule_properties(grid):
    check_par(*grid)


@settings(max_examples=20, deadline=None)
@given(par_grids(min_axes=1, max_axes=1), st.integers(1, 3))
def test_par_on_one_axis(grid, num_cond):
    check_par(*grid, num_cond=num_cond)


@pytest.mark.parametrize("shape", [(4, 6), (6, 6), (2, 4, 6), (3, 2, 4)])
def test_every_region_split(shape):
    for regions in every_split(shape):
        check_par(shape, regions)


@pytest.mark.parametrize("shape, regions, passes", [
    ((16, 16), (2, 2), 4 + 63),  # PAR-4x on 256 tokens: 67, the paper's count
    ((16, 16), (4, 4), 16 + 15),  # PAR-16x: 31
    ((4, 16, 16), (1, 2, 2), 4 + 255),  # 259
    ((4, 16, 16), (1, 4, 4), 16 + 63),  # 79
    ((5, 16, 16), (1, 2, 2), 4 + 319),  # UCF-101 PAR-XL-4x: 323 steps
    ((5, 16, 16), (1, 4, 4), 16 + 79),  # UCF-101 PAR-XL-16x: 95 steps
])
def test_known_pass_counts(shape, regions, passes):
    geo = GridGeometry(shape)
    k = math.prod(regions)
    assert passes == k + geo.num_cells // k - 1
    assert geo.schedule("par", regions=regions).num_passes == passes
    assert passes in (67, 31, 259, 79, 323, 95)


def test_par_4x_on_4x4_by_hand():
    geo = GridGeometry((4, 4))
    sched = geo.schedule("par", regions=(2, 2))
    # Regions: top-left {0,1,4,5}, top-right {2,3,6,7}, bottom-left {8,9,12,13}, bottom-right {10,11,14,15}.
    assert [s.outputs.tolist() for s in sched.steps] == [[0], [2], [8], [10], [1, 3, 9, 11], [4, 6, 12, 14],
                                                          [5, 7, 13, 15]]
    # Second cells 1, 3, 9 from transition tokens 16, 17, 18; cell 11 from the last region's first cell 10.
    assert geo.predictors("par", regions=(2, 2))[0].tolist() == [
        FROM_CONDITION, 16, 0, 17, 1, 4, 3, 6, 2, 18, 8, 10, 9, 12, 11, 14]
    step = sched.steps[4]  # the first parallel pass feeds cell 10, then transition tokens 0, 1, 2
    assert step.inputs.tolist() == [10] and step.transition.tolist() == [0, 1, 2]
    assert step.sources.tolist() == [[1, 2, 3, 0]]
    assert sched.steps[5].sources.tolist() == [[0, 1, 2, 3]]  # cell r - 1 of each region, fed in raster order
    assert geo.token_cells("par", regions=(2, 2))[16:].tolist() == [0, 2, 8]  # regions 0 … 2's first cells
    layout = geo.decode_layout(1, "par", regions=(2, 2))
    assert layout.steps[4].positions.tolist() == [11, 17, 18, 19] and (layout.steps[4].start, layout.steps[4].kv_limit) == (4, 8)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple))
def test_one_region_and_one_cell_regions_are_raster(shape):
    geo = GridGeometry(shape)
    raster = geo.schedule("raster")
    for regions in ((1,) * len(shape), shape):
        par = geo.schedule("par", regions=regions)
        assert torch.equal(par.order, raster.order)
        assert torch.equal(geo.predictors("par", regions=regions), geo.predictors("raster"))
        assert torch.equal(geo.attention_mask(1, "par", regions=regions), geo.attention_mask(1, "raster"))
        assert par.num_transition == 0


def test_schedules_are_cached_per_regions():
    geo = GridGeometry((4, 4))
    assert geo.schedule("par", regions=(2, 2)) is geo.schedule("par", regions=[2, 2])
    assert geo.schedule("par", regions=(2, 2)) is not geo.schedule("par", regions=(4, 4))
    assert geo.schedule("par", regions=(2, 2)).regions == (2, 2) and geo.schedule("nar").regions is None
    # The returned maps are copies: editing them leaves the geometry alone.
    geo.predictors("par", regions=(2, 2))[0, 2] = 7
    assert geo.predictors("par", regions=(2, 2))[0, 2] == 0
    geo.token_cells("par", regions=(2, 2))[16] = 7
    geo.token_levels("par", regions=(2, 2))[16] = 7
    assert geo.token_cells("par", regions=(2, 2))[16] == 0 and geo.token_levels("par", regions=(2, 2))[16] == 3


@pytest.mark.parametrize("call", ["schedule", "predictors", "generation_pass", "attention_mask", "decode_layout"])
@pytest.mark.parametrize("mode, regions, message", [
    ("par", None, "needs regions"),
    ("par", (2,), "one count per axis"),
    ("par", (2, 3), "axis 1 has 4 cells"),
    ("par", (0, 2), "axis 0 has 4 cells"),
    ("par", (2.5, 2), "sequence of integers"),
    ("par", 4, "sequence of integers"),
    ("nar", (2, 2), "regions=.*mode 'par' only"),
    ("raster", (1, 1), "regions=.*mode 'par' only"),
    ("chunks", None, "unknown decoding mode 'chunks'"),
])
def test_bad_decodings_name_the_key(call, mode, regions, message):
    geo = GridGeometry((4, 4))
    args = (1, mode) if call in ("attention_mask", "decode_layout") else (mode,)
    with pytest.raises(ConfigError, match=message):
        getattr(geo, call)(*args, regions=regions)


def test_modes_without_regions_still_work_positionally():
    geo = GridGeometry((3, 4))
    assert geo.schedule().mode == "nar" and geo.schedule("raster").num_passes == 12
    assert geo.attention_mask(1, "nar", "frontier").shape == (13, 13)
    assert geo.decode_layout(1).regions is None
    # nar and raster feed no transition tokens: the sequence is the condition and the grid.
    for mode in ("nar", "raster"):
        assert geo.schedule(mode).num_transition == 0 and torch.equal(geo.schedule(mode).feed_order, geo.schedule(mode).order)
        assert torch.equal(geo.token_cells(mode), torch.arange(12)) and geo.attention_mask(2, mode).shape == (14, 14)


def test_schedule_from_maps_rejects_broken_maps():
    passes = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="not fed in the pass"):  # cell 2 predicted from a cell of its own pass
        schedule_from_maps("x", passes, torch.tensor([[FROM_CONDITION, 0, 1]]))
    with pytest.raises(ValueError, match="not fed in the pass"):  # the condition predicts only the first pass
        schedule_from_maps("x", passes, torch.tensor([[FROM_CONDITION, 0, FROM_CONDITION]]))
    with pytest.raises(ValueError, match="not fed in the pass"):  # cell 3's predictor was fed two passes before
        schedule_from_maps("x", torch.tensor([0, 1, 2, 2]), torch.tensor([[FROM_CONDITION, 0, 1, 0]]))
    with pytest.raises(ValueError, match="transition token"):  # level 1 would be fed in pass 2, which is not there
        schedule_from_maps("x", torch.tensor([0, 1, 1, 1]), torch.tensor([[FROM_CONDITION, 0, 0]]))
    with pytest.raises(ValueError, match="none empty"):
        schedule_from_maps("x", torch.tensor([0, 2, 2]), torch.tensor([[FROM_CONDITION, 0, 0]]))
    with pytest.raises(ValueError, match="no predictor"):
        schedule_from_maps("x", passes, torch.tensor([[FROM_CONDITION, 0, -2]]))
