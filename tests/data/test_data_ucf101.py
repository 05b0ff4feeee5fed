"""UCF-101 layout → clip shards decoded with PyAV; corrupt and missing videos are skipped."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from nar_data_testutil import UCF_CLASSES, run_data_cli

from nar.data.readers import ShardStream, VideoSample
from nar.data.shards import SplitIndex, iter_tar, read_meta
from nar.data.ucf101 import clip_starts, write_ucf101
from nar.errors import DataError


def test_clip_starts():
    assert clip_starts(20, 16, 1) == [2]
    assert clip_starts(40, 16, 0) == [0, 16]
    assert clip_starts(10, 16, 3) == [0]
    assert clip_starts(32, 16, 3) == [0, 8, 16]


def test_ucf101_clip_shards(mini_ucf101, tmp_path):
    out = tmp_path / "clips"
    meta = write_ucf101(mini_ucf101, out, frames=4, stride=3, size=16, clips_per_video=2, shard_size=2)
    assert meta["kind"] == "video" and meta["classes"] == list(UCF_CLASSES)
    assert meta["frames"] == 4 and meta["stride"] == 3 and meta["image_size"] == 16
    train, test = meta["splits"]["train"], meta["splits"]["test"]
    # train: videos of 12 and 16 frames per class; span 10 → 2 clips each
    assert train["samples"] == 8 and len(train["shards"]) == 2
    assert test["samples"] == 4  # two 20-frame videos, 2 clips each
    reasons = sorted(r.split(":")[0] for _, r in test["skipped"]["files"])
    assert reasons == ["cannot decode video", "missing file"]

    index = SplitIndex.load(out, "train")
    assert sorted(index.labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]  # stored shuffled, by video
    raw = next(iter_tar(index.shards[0]))
    info = json.loads(raw["json"])
    assert info["label"] == UCF_CLASSES[int(raw["cls"])] and info["start"] == 0 and not info["padded"]
    clips = list(ShardStream(index, VideoSample()))
    assert all(c["video"].shape == (3, 4, 16, 16) for c in clips)
    # frame i of a test video is grey level 8 i: the stride is visible in the pixels
    levels = (clips[0]["video"][0, :, 8, 8].numpy() + 1) * 127.5
    assert np.allclose(np.diff(levels), 24, atol=6)


def test_ucf101_pads_short_videos_and_cli(mini_ucf101, tmp_path, capsys):
    out = tmp_path / "clips"
    code = run_data_cli(["data", "ucf101", str(mini_ucf101), "--out", str(out), "--frames", "16", "--size", "8",
                         "--splits", "train", "--limit", "2"])
    assert code == 0 and "train" in capsys.readouterr().out
    clips = {c["video_frames"]: c for c in (json.loads(raw["json"]) for raw in iter_tar(out / "train" / "train-000000.tar"))}
    assert clips[12]["padded"] is True and clips[16]["padded"] is False  # 12 frames < 16
    assert run_data_cli(["data", "verify", str(out)]) == 0


def test_second_split_with_other_clips_is_refused(mini_ucf101, tmp_path):
    """A split written later with other frames / stride / size / clips per video / classes, or from another of the
    three official splits (its test videos are another's training videos), would overwrite meta.json's and make it
    describe the first split wrongly: refused before anything is written, naming the field, both values and the
    option."""
    out = tmp_path / "clips"
    lists = mini_ucf101.parent / "ucfTrainTestlist"
    (lists / "testlist02.txt").write_text((lists / "testlist01.txt").read_text())
    write_ucf101(mini_ucf101, out, splits=("train",), frames=4, size=8, limit=1)
    for changed, match in (({"frames": 2}, "frames: 4 recorded, 2 in this run \\(--frames\\)"),
                           ({"stride": 2}, "stride: 1 recorded, 2 in this run \\(--stride\\)"),
                           ({"size": 6}, "image_size: 8 recorded, 6 in this run \\(--size\\)"),
                           ({"clips_per_video": 0}, "clips_per_video: 1 recorded, 0 in this run \\(--clips-per-video\\)"),
                           ({"split_index": 2}, "split_index: 1 recorded, 2 in this run \\(--split-index\\)")):
        with pytest.raises(DataError, match=f"{re.escape(str(out / 'meta.json'))} records .*{match}.*written with them: "
                                            "train.*another --out"):
            write_ucf101(mini_ucf101, out, splits=("test",), **{"frames": 4, "size": 8, "limit": 1, **changed})
    class_ind = lists / "classInd.txt"
    class_ind.write_text(class_ind.read_text().replace(UCF_CLASSES[1], "Other"))
    with pytest.raises(DataError, match=f"classes: \\['{UCF_CLASSES[0]}', '{UCF_CLASSES[1]}'\\] recorded, "
                                        f"\\['{UCF_CLASSES[0]}', 'Other'\\] in this run \\(classInd.txt\\)"):
        write_ucf101(mini_ucf101, out, splits=("test",), frames=4, size=8, limit=1)
    assert not (out / "test").exists() and read_meta(out)["frames"] == 4
    class_ind.write_text(class_ind.read_text().replace("Other", UCF_CLASSES[1]))
    meta = write_ucf101(mini_ucf101, out, splits=("test",), frames=4, size=8, limit=1)  # the same clips: fine
    assert sorted(meta["splits"]) == ["test", "train"]


def test_a_splits_dir_without_class_index_is_named(tmp_path):
    """`nar data ucf101 --splits-dir` at a folder without classInd.txt ended in a FileNotFoundError traceback."""
    from nar.data.ucf101 import read_class_index
    from nar.errors import DataError

    with pytest.raises(DataError, match=f"{tmp_path / 'classInd.txt'}: cannot read the class index.*ucfTrainTestlist"):
        read_class_index(tmp_path / "classInd.txt")


def test_videos_with_a_damaged_tail_are_counted_in_the_split(mini_ucf101, tmp_path, monkeypatch, caplog):
    """A video whose decoding fails part-way keeps the frames that decoded (logged); the split's meta.json entry
    counts and names those videos, as it does the skipped ones, and their clips say so."""
    import av

    real_open = av.open
    damaged = f"{UCF_CLASSES[0]}/v_{UCF_CLASSES[0]}_g02_c01.avi"

    class TailDamaged:  # decodes 3 frames, then fails as a torn file does
        def __init__(self, path):
            self.inner = real_open(path)
            self.streams = self.inner.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def decode(self, stream):
            for i, frame in enumerate(self.inner.decode(stream)):
                if i == 3:
                    raise ValueError("invalid data found when processing input")
                yield frame

    monkeypatch.setattr(av, "open", lambda path, *a, **k: TailDamaged(path) if path.endswith(damaged)
                        else real_open(path, *a, **k))
    out = tmp_path / "clips"
    meta = write_ucf101(mini_ucf101, out, splits=("train",), frames=4, size=8, shard_size=2)
    train = meta["splits"]["train"]
    assert train["damaged_tail"] == {"count": 1, "files": [damaged]} and train["samples"] == 4
    assert read_meta(out)["splits"]["train"]["damaged_tail"] == train["damaged_tail"]
    assert "decoding stopped after 3 frames" in caplog.text
    clips = [json.loads(raw["json"]) for shard in SplitIndex.load(out, "train").shards for raw in iter_tar(shard)]
    assert [c["source"] for c in clips if c["damaged_tail"]] == [damaged]
    assert [c["video_frames"] for c in clips if c["damaged_tail"]] == [3]
    monkeypatch.setattr(av, "open", real_open)
    meta = write_ucf101(mini_ucf101, out, splits=("train",), frames=4, size=8, shard_size=2)  # resumed: all done
    assert meta["splits"]["train"]["damaged_tail"]["count"] == 1  # counted from the shards, not this run's decoding


def test_train_videos_are_written_shuffled_and_damaged_tails_still_counted(tmp_path, monkeypatch):
    """trainlist01.txt lists the videos class by class and training reads whole shards: ``train`` is written in a
    seeded random order of videos (each video's clips together, with its own class), the same for the same seed;
    ``test`` keeps the list order; a damaged tail is still counted once and named."""
    from nar.data import ucf101

    classes, per_class = [f"Class{c}" for c in range(6)], 5
    videos, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    names = [f"{c}/v_{c}_g{g:02d}_c01.avi" for c in classes for g in range(per_class)]
    for rel in names:
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        (videos / rel).write_bytes(b"")  # never opened: decoding is replaced below
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (lists / "trainlist01.txt").write_text("".join(f"{rel} {classes.index(rel.split('/')[0]) + 1}\n" for rel in names))
    (lists / "testlist01.txt").write_text("".join(f"{rel}\n" for rel in names))
    damaged = names[7]

    def decode(path):
        return np.zeros((6, 8, 8, 3), dtype=np.uint8), ("torn" if str(path).endswith(damaged) else None)

    monkeypatch.setattr(ucf101, "_decode", decode)

    def written(out, split):
        clips = [json.loads(raw["json"]) | {"cls": int(raw["cls"])}
                 for shard in SplitIndex.load(out, split).shards for raw in iter_tar(shard)]
        return clips, [c["source"] for c in clips[::2]]  # two clips per video, in a row

    meta = write_ucf101(videos, tmp_path / "a", frames=2, stride=2, size=8, clips_per_video=2, shard_size=4)
    clips, order = written(tmp_path / "a", "train")
    assert [c["source"] for c in clips] == [s for s in order for _ in range(2)]
    assert sorted(order) == sorted(names) and order != names
    labels = np.array([classes.index(s.split("/")[0]) for s in order])
    assert all(c["cls"] == classes.index(c["source"].split("/")[0]) for c in clips)
    assert np.mean(labels[1:] == labels[:-1]) < (per_class - 1) / per_class / 2  # sorted: 4 of 5 neighbours
    assert meta["splits"]["train"]["damaged_tail"] == {"count": 1, "files": [damaged]}
    assert written(tmp_path / "a", "test")[1] == names

    write_ucf101(videos, tmp_path / "b", splits=("train",), frames=2, stride=2, size=8, clips_per_video=2, shard_size=4)
    assert written(tmp_path / "b", "train")[1] == order


def test_list_lines_keep_names_and_paths_with_spaces(tmp_path):
    """A class name or a video path holding spaces is read whole (they were cut at the first space: the path
    `Juggling/clip 0.avi` became `Juggling/clip`, a class line `2 Rowing Boat` was dropped); a line that is not
    '<index> <class>' is named."""
    from nar.data.ucf101 import read_class_index, read_split_list
    from nar.errors import DataError

    index = tmp_path / "classInd.txt"
    index.write_text("\ufeff1 Juggling\r\n2 Rowing Boat\n\n", encoding="utf-8")
    classes = read_class_index(index)
    assert classes == ["Juggling", "Rowing Boat"]
    listed = tmp_path / "trainlist01.txt"
    listed.write_text("Juggling/clip 0.avi 1\nRowing Boat/v_1.avi\t2\nJuggling\\v_2.avi\nRowing Boat/v 3.avi\n")
    assert read_split_list(listed, classes) == [("Juggling/clip 0.avi", 0), ("Rowing Boat/v_1.avi", 1),
                                                ("Juggling/v_2.avi", 0), ("Rowing Boat/v 3.avi", 1)]
    index.write_text("1 Juggling\nRowing\n")
    with pytest.raises(DataError, match=r"classInd.txt:2: 'Rowing' is not an '<index> <class>' line"):
        read_class_index(index)
