"""Training splits are written shuffled (nar.data.order.write_order), and a run is warned at start-up when its
training split looks sorted by class (class_sorted_warning): training reads whole shards into a buffer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from nar.data.order import (
    check_order,
    class_sorted_warning,
    order_mismatch_hint,
    same_class_neighbours,
    write_order,
)
from nar.data.shards import SplitIndex, write_meta, write_split
from nar.errors import DataError

CLASSES, PER_CLASS, SHARD = 8, 12, 24


def _token(item) -> dict:
    return {"tokens.npy": np.zeros((1, 2, 2), dtype=np.int32), "cls": item // PER_CLASS}


def _clips(item) -> list[dict]:
    return [_token(item)] * 3  # three samples of one input (clips of a video), keys <item>_000 … _002


def _split(root, items, make_sample=_token):
    rec = write_split(root, "train", items, make_sample=make_sample, shard_size=SHARD)
    write_meta(root, "tokens", [rec], classes=[f"c{c}" for c in range(CLASSES)], grid=[2, 2], codebook_size=4)
    return root


def test_write_order_shuffles_the_training_split_only():
    items = list(range(CLASSES * PER_CLASS))
    train, params = write_order("train", items, 0)
    assert sorted(train) == items and train != items and params == {"order": "shuffled", "order_seed": 0}
    assert write_order("train", items, 0)[0] == train and write_order("train", items, 1)[0] != train
    assert write_order("val", items, 0) == (items, {}) and write_order("test", items, 5) == (items, {})
    labels = np.array(train) // PER_CLASS
    assert same_class_neighbours(labels) < same_class_neighbours(np.sort(labels)) / 2


def test_finishing_a_train_split_written_class_by_class_is_refused_with_the_likely_cause(tmp_path):
    """A half-written train split of an earlier version (class order) is refused, naming its folder and why;
    other splits, whose order never changed, get no hint."""
    items = list(range(CLASSES * PER_CLASS))
    write_split(tmp_path, "train", items, make_sample=_token, shard_size=SHARD)
    (tmp_path / "train" / "train-000003.tar").unlink()  # killed before its last shard
    shuffled, order = write_order("train", items)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "train")) + ".*shuffled order.*earlier version"):
        write_split(tmp_path, "train", shuffled, make_sample=_token, shard_size=SHARD, params=order,
                    mismatch_hint=order_mismatch_hint(order))
    assert order_mismatch_hint(write_order("val", items)[1]) is None


def test_a_class_sorted_training_split_is_warned_about(tmp_path):
    """Sorted: a warning naming the folder and both remedies; shuffled (whole inputs, their clips together):
    none; too few samples to tell: none."""
    items = list(range(CLASSES * PER_CLASS))
    root = _split(tmp_path / "sorted", items)
    message = class_sorted_warning(root, "train", CLASSES, shuffle_buffer=16)
    assert message is not None and f"data.root={root}" in message
    assert "data.shuffle_buffer=16" in message and "`nar data`" in message and "sorted by class" in message
    assert class_sorted_warning(_split(tmp_path / "shuffled", write_order("train", items)[0]), "train", CLASSES,
                                shuffle_buffer=16) is None
    clips = _split(tmp_path / "clips", write_order("train", items)[0], _clips)
    assert class_sorted_warning(clips, "train", CLASSES, shuffle_buffer=16) is None
    assert class_sorted_warning(_split(tmp_path / "sorted-clips", items, _clips), "train", CLASSES,
                                shuffle_buffer=16) is not None
    assert class_sorted_warning(_split(tmp_path / "tiny", items[:8]), "train", CLASSES, shuffle_buffer=16) is None
    assert class_sorted_warning(tmp_path / "missing", "train", CLASSES, shuffle_buffer=16) is None


def test_remote_shards_are_checked_on_their_labels_file(tmp_path):
    """Shards behind URLs are not downloaded at start-up: the split's labels.npy stands in for their classes."""
    items = list(range(CLASSES * PER_CLASS))
    for name, order in (("sorted", items), ("shuffled", write_order("train", items)[0])):
        local = SplitIndex.load(_split(tmp_path / name, order), "train")
        remote = SplitIndex(local.root, "train", tuple(f"https://example.invalid/{i}.tar" for i in range(len(local.shards))),
                            local.counts, local.labels)
        assert check_order(remote, CLASSES).looks_sorted is (name == "sorted")
    assert check_order(SplitIndex(local.root, "train", remote.shards, local.counts), CLASSES) is None


def test_remote_clips_are_not_judged_on_the_labels_file(tmp_path):
    """labels.npy holds one class per clip: the clips of one video lie side by side however the videos are
    shuffled, so remote clip shards are not checked (they would look sorted)."""
    items = write_order("train", list(range(CLASSES * PER_CLASS)))[0]
    local = SplitIndex.load(_split(tmp_path / "clips", items, _clips), "train")
    remote = SplitIndex(local.root, "train", tuple(f"https://example.invalid/{i}.tar" for i in range(len(local.shards))),
                        local.counts, local.labels)
    assert check_order(remote, CLASSES).looks_sorted  # what the labels file alone would say
    assert check_order(remote, CLASSES, one_sample_per_input=False) is None
    assert not check_order(local, CLASSES, one_sample_per_input=False).looks_sorted  # local: clips merged by key


def test_few_labels_need_more_than_chance_to_look_sorted():
    """With few neighbouring pairs a shuffled two-class split often shares classes by chance: the check asks for
    three standard deviations above a shuffled split as well as the halfway mark."""
    from nar.data.order import OrderCheck

    assert not OrderCheck(samples=17, observed=0.8, shuffled=0.5).looks_sorted  # 16 pairs: within chance
    assert OrderCheck(samples=1000, observed=0.8, shuffled=0.5).looks_sorted
    assert OrderCheck(samples=17, observed=1.0, shuffled=0.5).looks_sorted
    assert OrderCheck(samples=200, observed=0.2, shuffled=0.01).looks_sorted is False
    assert OrderCheck(samples=200, observed=0.9, shuffled=0.01).looks_sorted
