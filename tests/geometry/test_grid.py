"""Property tests of the geometry over random 1-, 2- and 3-axis grids, square or not."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nar.errors import ConfigError
from nar.geometry import GridGeometry
from nar.geometry.grid import FROM_CONDITION, NO_PREDICTOR

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)


def loop_mask(shape, num_cond):
    """Reference proximity mask built cell by cell."""
    cells = list(itertools.product(*[range(d) for d in shape]))
    L = num_cond + len(cells)
    mask = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            if q < num_cond:
                mask[q, k] = k <= q
            elif k < num_cond:
                mask[q, k] = True
            else:
                mask[q, k] = sum(cells[k - num_cond]) <= sum(cells[q - num_cond])
    return mask


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_schedule_decodes_every_cell_once_in_distance_order(shape):
    geo = GridGeometry(shape)
    sched = geo.schedule("nar")
    assert sched.num_passes == geo.num_frontiers == sum(shape) - len(shape) + 1
    produced = torch.cat([s.outputs for s in sched.steps])
    assert sorted(produced.tolist()) == list(range(geo.num_cells))
    dist = geo.distance[produced]
    assert bool((dist[1:] >= dist[:-1]).all())
    assert geo.frontier_sizes[0] == 1 and sum(geo.frontier_sizes) == geo.num_cells


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_every_parent_is_decoded_at_an_earlier_step(shape):
    geo = GridGeometry(shape)
    step_of = torch.empty(geo.num_cells, dtype=torch.long)
    for i, s in enumerate(geo.schedule("nar").steps):
        step_of[s.outputs] = i
    for axis in range(geo.ndim):
        has = geo.parent_index[axis] >= 0
        assert bool((step_of[geo.parent_index[axis][has]] < step_of[has]).all())
        # parent and child maps are inverse to each other
        kids = geo.child_index[axis]
        ok = kids >= 0
        assert torch.equal(geo.parent_index[axis][kids[ok]], torch.arange(geo.num_cells)[ok])


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 3))
def test_mask_equals_loop_reference(shape, num_cond):
    geo = GridGeometry(shape)
    assert torch.equal(geo.attention_mask(num_cond, "nar"), loop_mask(shape, num_cond))


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_step_sources_point_at_parents(shape):
    geo = GridGeometry(shape)
    for step in geo.schedule("nar").steps[1:]:
        for axis in range(geo.ndim):
            src = step.sources[axis]
            ok = src != NO_PREDICTOR
            assert torch.equal(step.inputs[src[ok]], geo.parent_index[axis][step.outputs[ok]])
            assert torch.equal(ok, geo.parent_index[axis][step.outputs] >= 0)


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(1, 3))
def test_frontier_order_mask_is_block_causal(shape, num_cond):
    geo = GridGeometry(shape)
    perm = torch.cat([torch.arange(num_cond), num_cond + geo.frontier_order])
    raster = geo.attention_mask(num_cond, "nar")
    assert torch.equal(geo.attention_mask(num_cond, "nar", order="frontier"), raster[perm][:, perm])


def test_raster_schedule_and_causal_mask():
    geo = GridGeometry((3, 5))
    sched = geo.schedule("raster")
    assert sched.num_passes == 15
    assert torch.equal(geo.attention_mask(2, "raster"), torch.ones(17, 17, dtype=torch.bool).tril())
    pred = geo.predictors("raster")
    assert pred.shape == (1, 15) and pred[0, 0] == FROM_CONDITION and pred[0, 7] == 6


def test_known_counts():
    assert GridGeometry((16, 16)).num_frontiers == 31
    assert GridGeometry((4, 16, 16)).num_frontiers == 34
    assert GridGeometry((16, 16)).frontier_sizes[:3] == (1, 2, 3)


def test_bad_shape_is_rejected():
    with pytest.raises(ConfigError, match="grid shape"):
        GridGeometry((0, 4))


@settings(max_examples=40, deadline=None)
@given(shapes, st.data())
def test_keep_axis_leaves_one_parent_where_the_axis_has_one(shape, data):
    geo = GridGeometry(shape)
    axis = data.draw(st.integers(0, geo.ndim - 1))
    pred = geo.predictors()
    kept = geo.keep_axis(pred, axis)
    has = pred[axis] != NO_PREDICTOR
    valid = kept != NO_PREDICTOR
    # Along the axis nothing changes; where the axis predicts, it is the only predictor.
    assert torch.equal(kept[axis], pred[axis])
    assert torch.all(valid[:, has].sum(0) == 1)
    # Elsewhere every other parent stays, and every cell keeps at least one predictor.
    assert torch.equal(kept[:, ~has], pred[:, ~has])
    assert torch.all(valid.sum(0) >= 1)
    assert geo.keep_axis(pred, None) is pred
