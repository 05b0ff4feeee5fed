"""Property tests of the decode layout (cache slots, prefixes and masks of every pass) against the
training mask, over 1-, 2- and 3-axis grids, square or not, for every schedule (nar, raster, par with
every region split, and arbitrary chunked orders)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nar.errors import ConfigError
from nar.geometry import DecodeStep, GridGeometry, Schedule
from nar.geometry.grid import FROM_CONDITION, NO_PREDICTOR

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
num_conds = st.sampled_from([1, 2, 4])


@st.composite
def decodings(draw, shape: tuple[int, ...]):
    """``(mode, regions)``: nar, raster, or par with a valid region count (a divisor) per axis."""
    mode = draw(st.sampled_from(["nar", "raster", "par"]))
    if mode != "par":
        return mode, None
    return mode, tuple(draw(st.sampled_from([r for r in range(1, d + 1) if d % r == 0])) for d in shape)


def check_layout(geo: GridGeometry, num_cond: int, mode: str, regions: tuple[int, ...] | None = None) -> None:
    """Every property the KV cache relies on, checked against ``attention_mask(num_cond, mode)``."""
    layout = geo.decode_layout(num_cond, mode, regions=regions)
    schedule = geo.schedule(mode, regions=regions)
    train = geo.attention_mask(num_cond, mode, regions=regions)  # [L, L]
    n, k = geo.num_cells, schedule.num_transition
    L = num_cond + n + k
    assert train.shape == (L, L)
    slot_position = layout.slot_position
    # Every grid cell and transition token occupies exactly one decode slot; the condition keeps its own.
    assert sorted(slot_position.tolist()) == list(range(L))
    assert torch.equal(slot_position[:num_cond], torch.arange(num_cond))
    fed = torch.cat([s.positions for s in layout.steps] + [num_cond + layout.steps[-1].outputs])
    assert torch.equal(fed, slot_position) and torch.equal(slot_position[num_cond:], num_cond + schedule.feed_order)
    assert len(layout.steps) == schedule.num_passes

    end = 0
    for i, (step, sched_step) in enumerate(zip(layout.steps, schedule.steps)):
        # A step's slots are contiguous and start where the previous step's end.
        assert step.start == end and step.kv_limit == step.start + len(step.positions)
        assert torch.equal(slot_position[step.start:step.kv_limit], step.positions)
        end = step.kv_limit
        rows = train[step.positions]  # [T, L]
        prefix, later = slot_position[:step.kv_limit], slot_position[step.kv_limit:]
        # No query sees a key that is not written yet, so the limit is the number of keys visible.
        assert not bool(rows[:, later].any())
        assert int(rows.any(0).sum()) == step.kv_limit
        if i == 0:  # the prefill: condition tokens, causal among themselves
            assert torch.equal(step.positions, torch.arange(num_cond)) and step.source_offset == num_cond
            causal = torch.ones(num_cond, num_cond, dtype=torch.bool).tril()
            assert (step.mask is None) == (num_cond == 1)
            assert step.mask is None or torch.equal(step.mask, causal)
        else:  # every key of the prefix is visible to every query: no mask
            tokens = torch.cat([sched_step.inputs, n + sched_step.transition])
            assert torch.equal(step.positions, num_cond + tokens) and step.source_offset == 0
            assert bool(rows[:, prefix].all()) and step.mask is None
        # The sequence layout masks each pass with the training rows of the positions it feeds.
        assert torch.equal(step.sequence_mask, rows)
        assert torch.equal(step.sources, sched_step.sources) and torch.equal(step.outputs, sched_step.outputs)
        assert torch.equal(step.transition, sched_step.transition)
        check_sources(step, num_cond)
    assert layout.regions == regions and schedule.regions == regions


def check_sources(step, num_cond: int) -> None:
    """Each cell is predicted by a token this pass feeds (the prefill: the last condition token), whose
    output sees no cell this pass outputs."""
    src = step.sources
    assert bool(((src >= 0) | (src == FROM_CONDITION) | (src == NO_PREDICTOR)).all())
    assert bool((src < len(step.positions)).all())
    assert bool((src == FROM_CONDITION).any()) == (step.source_offset > 0)
    positions = torch.where(src == FROM_CONDITION, step.source_offset - 1, step.source_offset + src.clamp(min=0))
    rows = step.sequence_mask[positions[src != NO_PREDICTOR]]  # [n, L]
    assert not bool(rows[:, num_cond + step.outputs].any())


@settings(max_examples=80, deadline=None)
@given(shapes.flatmap(lambda s: st.tuples(st.just(s), decodings(s))), num_conds)
def test_decode_layout_is_a_prefix_cache_of_the_training_mask(shape_decoding, num_cond):
    shape, (mode, regions) = shape_decoding
    check_layout(GridGeometry(shape), num_cond, mode, regions)


@pytest.mark.parametrize("shape", [(4, 6), (2, 4, 6), (6,)])
def test_decode_layout_of_every_par_region_split(shape):
    geo = GridGeometry(shape)
    for regions in itertools.product(*[[r for r in range(1, d + 1) if d % r == 0] for d in shape]):
        check_layout(geo, 2, "par", regions)


@settings(max_examples=30, deadline=None)
@given(shapes.flatmap(lambda s: st.tuples(st.just(s), decodings(s))), num_conds, st.data())
def test_key_valid_in_decode_slots_permutes_the_sequence_order(shape_decoding, num_cond, data):
    shape, (mode, regions) = shape_decoding
    geo = GridGeometry(shape)
    layout = geo.decode_layout(num_cond, mode, regions=regions)
    cond_mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=2 * num_cond, max_size=2 * num_cond)))
    cond_mask = cond_mask.view(2, num_cond)
    seq = layout.key_valid(cond_mask.float())  # [2, L]
    assert torch.equal(seq[:, :num_cond], cond_mask) and bool(seq[:, num_cond:].all())
    assert torch.equal(layout.key_valid(cond_mask, "decode"), seq[:, layout.slot_position])


class ChunkedGeometry(GridGeometry):
    """A geometry with one more schedule, ``chunks``: the cells in any order, several per pass (as
    PAR decodes), one head fed by the first input; a cell sees every cell of its pass or earlier."""

    def __init__(self, shape, order: list[int], cuts: list[int]):
        super().__init__(shape)
        bounds = [0, *cuts, len(order)]
        self.chunks = [torch.tensor(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def schedule(self, mode: str = "nar", *, regions=None) -> Schedule:
        if mode != "chunks":
            return super().schedule(mode, regions=regions)
        steps = [DecodeStep(torch.zeros(0, dtype=torch.long), self.chunks[0],
                            torch.full((1, len(self.chunks[0])), FROM_CONDITION))]
        for inputs, outputs in zip(self.chunks[:-1], self.chunks[1:]):
            steps.append(DecodeStep(inputs, outputs, torch.zeros(1, len(outputs), dtype=torch.long)))
        return Schedule("chunks", tuple(steps), torch.cat(self.chunks))

    def attention_mask(self, num_cond: int, mode: str = "nar", order: str = "raster", *, regions=None) -> torch.Tensor:
        if mode != "chunks":
            return super().attention_mask(num_cond, mode, order, regions=regions)
        level = torch.empty(self.num_cells, dtype=torch.long)
        for i, chunk in enumerate(self.chunks):
            level[chunk] = i
        level = torch.cat([torch.arange(num_cond) - num_cond, level])
        return level[:, None] >= level[None, :]


@st.composite
def chunked(draw):
    shape = draw(shapes)
    n = GridGeometry(shape).num_cells
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    return ChunkedGeometry(shape, order, cuts)


@settings(max_examples=40, deadline=None)
@given(chunked(), num_conds)
def test_any_schedule_feeding_the_previous_outputs_gets_a_prefix_cache(geo, num_cond):
    check_layout(geo, num_cond, "chunks")


def test_schedule_that_skips_cells_is_rejected():
    geo = ChunkedGeometry((2, 3), [0, 1, 2, 3, 4, 5], [2, 4])
    good = geo.schedule("chunks")
    steps = list(good.steps)
    steps[2] = DecodeStep(torch.tensor([0, 1]), steps[2].outputs, steps[2].sources)  # not step 1's outputs
    geo.schedule = lambda mode="nar", regions=None: Schedule("chunks", tuple(steps), good.order)
    with pytest.raises(ConfigError, match="step 2"):
        geo.decode_layout(1, "chunks")


def test_mask_seeing_a_later_pass_is_rejected():
    geo = ChunkedGeometry((2, 3), [0, 1, 2, 3, 4, 5], [2, 4])
    mask = geo.attention_mask(1, "chunks")
    mask[1 + 2, 1 + 4] = True  # cell 2 (fed in pass 2) sees cell 4 (fed in pass 3)
    geo.attention_mask = lambda num_cond, mode="nar", order="raster", regions=None: mask
    with pytest.raises(ConfigError, match="step 2 attends to a token fed in a later pass"):
        geo.decode_layout(1, "chunks")


def test_layout_is_cached_per_condition_length_mode_and_regions():
    geo = GridGeometry((4, 4))
    assert geo.decode_layout(2, "nar") is geo.decode_layout(2, "nar")
    assert geo.decode_layout(2, "nar") is not geo.decode_layout(1, "nar")
    assert geo.decode_layout(2, "nar") is not geo.decode_layout(2, "raster")
    par = geo.decode_layout(2, "par", regions=(2, 2))
    assert geo.decode_layout(2, "par", regions=[2, 2]) is par  # a YAML list is the same decoding
    assert geo.decode_layout(2, "par", regions=(1, 2)) is not par
    assert geo.decode_layout(1, "par", regions=(2, 2)) is not par
    with pytest.raises(ConfigError, match="condition token"):
        geo.decode_layout(0, "nar")
    with pytest.raises(ConfigError, match="regions"):
        geo.decode_layout(1, "par")
    with pytest.raises(ConfigError, match="regions"):
        geo.decode_layout(1, "nar", regions=(2, 2))


def test_par_feeds_its_transition_tokens_with_the_last_first_cell():
    geo = GridGeometry((4, 6))
    for mode in ("nar", "raster"):
        layout = geo.decode_layout(3, mode)
        assert len(layout.slot_position) == 3 + 24 and all(len(s.transition) == 0 for s in layout.steps)
    # PAR-4x: passes 1 … 3 feed the first cells of regions 0 … 2 at slots 3 … 5; pass 4 (the first parallel
    # one) feeds region 3's first cell and transition tokens 0 … 2 (sequence positions C + 24 …) at slots 6 … 9.
    layout = geo.decode_layout(3, "par", regions=(2, 2))
    assert len(layout.slot_position) == 3 + 24 + 3
    step = layout.steps[4]
    assert (step.start, step.kv_limit) == (6, 10) and step.transition.tolist() == [0, 1, 2]
    assert step.positions.tolist() == [3 + 15, 3 + 24, 3 + 25, 3 + 26]
    assert step.sources.tolist() == [[1, 2, 3, 0]]  # region j's second cell from transition token j, region 3's from its first
    assert [len(s.transition) for s in layout.steps] == [0, 0, 0, 0, 3] + [0] * 4  # 4 + 6 - 1 passes
