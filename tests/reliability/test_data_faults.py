"""Fault injection on the data side: concurrent writers, stale locks, bad samples, read-only folders,
full disks, truncated and missing evaluation shards. Every fault ends in a message naming the file,
shard or sample, and nothing already written is lost."""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nar.atomic import WriteError
from nar.data.datamodules import TokenDataConfig, TokenShardDataModule
from nar.data.readers import MissingSamples
from nar.data.shards import SplitIndex, iter_tar, write_meta, write_split
from nar.data.verify import verify
from nar.errors import DataError
from nar.locks import LOCK_NAME, LockError

GRID, VOCAB, CLASSES = (4, 4), 16, ["a", "b", "c"]


def _tokens(i: int) -> dict:
    return {"tokens.npy": np.full((1, *GRID), i % VOCAB, dtype=np.int32), "cls": i % len(CLASSES), "json": {"i": i}}


def _write_tokens(root: Path, n: int = 12, bad: dict[int, dict] | None = None, grid=GRID, shard_size: int = 4,
                  split: str = "train") -> Path:
    """A token dataset of ``n`` samples; ``bad[i]`` replaces fields of sample ``i``."""
    bad = bad or {}
    rec = write_split(root, split, list(range(n)), make_sample=lambda i: {**_tokens(i), **bad.get(i, {})},
                      shard_size=shard_size)
    write_meta(root, "tokens", [rec], classes=CLASSES, grid=list(grid), codebook_size=VOCAB)
    return root


def _run_python(code: str, **popen) -> subprocess.Popen:
    """``python -c code`` in a fresh process; the caller waits on it."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"helper process ended early: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"helper process did not reach {path.name}")
        time.sleep(0.05)


def _batches(loader, n: int | None = None) -> list:
    """The first ``n`` batches of ``loader`` (all: None); its workers are shut down here, also when it raises.
    Left to the reference cycle of the error it raised, the iterator is collected by gc in some later test, which
    closes its queues first: each worker then misses the stop message and waits out torch's two 5 s shutdown
    timeouts (once 40 s of the next module's set-up)."""
    batches = iter(loader)
    try:
        return list(itertools.islice(batches, n))
    finally:
        batches._shutdown_workers()


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------------
# One writer per folder
# --------------------------------------------------------------------------------------------------


def test_second_writer_is_refused_naming_the_first_and_nothing_of_the_first_is_lost(tmp_path):
    root, started, go = tmp_path / "ds", tmp_path / "started", tmp_path / "go"
    first = _run_python(f"""
        import time
        from pathlib import Path
        from nar.data.shards import write_meta, write_split

        def make(i):
            if i == 3:  # mid-split, lock held, a shard being written
                Path({str(started)!r}).touch()
                while not Path({str(go)!r}).exists():
                    time.sleep(0.02)
            return {{"txt": "first writer %d" % i, "cls": 0}}

        rec = write_split({str(root)!r}, "train", list(range(10)), make_sample=make, shard_size=4)
        write_meta({str(root)!r}, "pairs", [rec], classes=["x"])
    """)
    try:
        _wait_for(started, first)
        with pytest.raises(LockError, match=rf"locked by another process .*pid {first.pid}\b"):
            write_split(root, "train", list(range(5)), make_sample=lambda i: {"txt": "second"}, shard_size=4)

        # the command line: one line naming the holder, exit 2
        import argparse

        from nar.cli import data as data_cli
        from nar.errors import EXIT_USAGE

        (tmp_path / "pairs").mkdir()
        parser = argparse.ArgumentParser(prog="nar")
        data_cli.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["data", "pairs", str(tmp_path / "pairs"), "--out", str(root), "--overwrite"])
        with pytest.raises(LockError) as refused:
            args.func(args)
        assert refused.value.exit_code == EXIT_USAGE and f"pid {first.pid}" in str(refused.value)
        assert "\n" not in str(refused.value)
        assert [p for p in _temporaries(root) if str(first.pid) in p.name]  # its shard in progress: untouched
        assert any(f"being written (locked by pid {first.pid}" in p for p in verify(root).problems)
    finally:
        go.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    report = verify(root)
    assert report.ok and report.samples == 10, report.problems
    texts = [s["txt"].decode() for shard in SplitIndex.load(root, "train").shards for s in iter_tar(shard)]
    assert texts == [f"first writer {i}" for i in range(10)]
    assert not (root / LOCK_NAME).exists() and not _temporaries(root)


def test_a_stale_lock_of_a_dead_writer_is_taken_over(tmp_path, caplog):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "earlier",
                                              "command": "nar data embedded", "purpose": "writing a dataset"}))
    (root / "train" / f".train-000000.tar.{dead.pid}.tmp").write_bytes(b"half a shard of the dead writer")
    _write_tokens(root, n=6)
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    assert verify(root).ok and not _temporaries(root) and not (root / LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------------
# Bad samples: skipped and named by readers, reported by verify
# --------------------------------------------------------------------------------------------------

BAD = {
    2: {"tokens.npy": np.full((1, *GRID), VOCAB, dtype=np.int32)},  # token id = vocabulary size
    5: {"cls": 7},  # class ≥ num_classes
    9: {"tokens.npy": np.zeros((1, 4, 5), dtype=np.int32)},  # wrong shape
}


def _key(i: int) -> str:
    return f"{i:09d}"


def test_bad_token_class_and_shape_are_skipped_by_name_and_reported_by_verify(tmp_path):
    root = _write_tokens(tmp_path / "tok", n=12, bad=BAD)
    dm = TokenShardDataModule(TokenDataConfig(root=str(root), batch_size=4, num_workers=0, samples_per_epoch=24,
                                              shuffle_buffer=4, pin_memory=False))
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 6
    for batch in batches:  # clean: shapes, ids and classes all in range
        assert batch["tokens"].shape == (4, *GRID) and int(batch["tokens"].max()) < VOCAB
        assert int(batch["label"].max()) < len(CLASSES)
        assert not {_key(i) for i in BAD} & set(batch["__key__"])
    skipped = dict(loader.dataset.bad.files)
    for i, why in ((2, "token id 16 outside [0, 16)"), (5, "class 7 outside [0, 3)"), (9, "shape [1, 4, 5]")):
        name = next(n for n in skipped if n.endswith(f".tar:{_key(i)}"))
        assert why in skipped[name] and skipped[name].startswith("invalid sample")

    report = verify(root)
    assert not report.ok and report.bad.counts["invalid sample"] == 3
    named = {path.rsplit(":", 1)[-1] for path, _ in report.bad.files}
    assert named == {_key(i) for i in BAD}
    assert report.splits["train"].bad_samples == 3


def test_meta_grid_that_does_not_match_the_arrays(tmp_path, capsys):
    root = _write_tokens(tmp_path / "tok", n=6, grid=(2, 8))  # same cell count as the stored 4×4
    report = verify(root)
    assert report.bad.counts["invalid sample"] == 6
    assert "meta.json's grid [2, 8] needs [A, 2, 8]" in report.bad.files[0][1]
    from nar.cli.data import run_verify

    assert run_verify(type("Args", (), {"path": str(root), "decode": True, "limit": None})()) == 1
    assert "PROBLEMS FOUND" in capsys.readouterr().out
    dm = TokenShardDataModule(TokenDataConfig(root=str(root), batch_size=2, num_workers=1, pin_memory=False))
    with pytest.raises(DataError, match=r"all skipped .*grid \[2, 8\]") as err:  # not a silent run, not a hang
        _batches(dm.train_dataloader(), 1)
    assert "Traceback" not in str(err.value)  # one line, also from a DataLoader worker


# --------------------------------------------------------------------------------------------------
# Evaluation that would report on fewer samples than asked
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_short_evaluation_pass_names_the_shard(tmp_path, damage, caplog):
    root = _write_tokens(tmp_path / "tok", n=12, split="val")
    shard = SplitIndex.load(root, "val").shards[1]
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:1500])
    else:
        shard.unlink()
    common = dict(root=str(root), batch_size=5, num_workers=2, pin_memory=False)
    dm = TokenShardDataModule(TokenDataConfig(**common))
    assert dm.eval_dataset("val").expected == 12
    with pytest.raises(MissingSamples, match=rf"worker 0 of 2\): 4 of 6 selected samples read; .*{shard.name} ended after") as err:
        _batches(dm.val_dataloader())
    assert "Traceback" not in str(err.value) and err.value.exit_code == 1
    allowed = TokenShardDataModule(TokenDataConfig(**common, allow_missing=True))
    seen = sum(len(b["label"]) for b in allowed.val_dataloader())
    assert 8 <= seen < 12


LEAK_WORKERS = """
    import sys
    sys.path.insert(0, {here!r})
    from test_data_faults import _write_tokens
    from pathlib import Path
    from nar.data.datamodules import TokenDataConfig, TokenShardDataModule
    root = _write_tokens(Path({root!r}), n=12, split="val")
    dm = TokenShardDataModule(TokenDataConfig(root=str(root), batch_size=2, num_workers=2, pin_memory=False))
    it = iter(dm.val_dataloader())
    next(it)
    print("started", flush=True)
    # exit with the iterator (and its workers, which ignore SIGTERM) still alive
"""


def test_a_process_exits_with_dataloader_workers_left_open(tmp_path):
    """An iterator never closed (its frame kept by an exception, say) leaves workers that ignore SIGTERM; the
    process still exits at once (the suite once hung at exit in CI on exactly this)."""
    code = textwrap.dedent(LEAK_WORKERS).format(here=str(Path(__file__).parent), root=str(tmp_path / "tok"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "started" in done.stdout, done.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# Read-only folders and full disks
# --------------------------------------------------------------------------------------------------

WRITE_AND_REPORT = """
    import sys
    from nar.data.shards import write_split
    from nar.errors import NarError
    try:
        write_split({root!r}, {split!r}, list(range(6)), make_sample={make}, shard_size=2)
    except NarError as err:  # what `nar` prints: one line, the error's exit code
        print(err, file=sys.stderr)
        sys.exit(err.exit_code)
"""


def test_full_disk_during_a_shard_names_the_file_and_leaves_no_temporary(tmp_path):
    root = tmp_path / "ds"
    code = textwrap.dedent("""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    """) + textwrap.dedent(WRITE_AND_REPORT).format(root=str(root), split="train",
                                  make='lambda i: {"txt": "x" * (100 if i < 2 else 40_000)}')
    try:
        resource.getrlimit(resource.RLIMIT_FSIZE)
    except (AttributeError, ValueError):  # pragma: no cover
        pytest.skip("RLIMIT_FSIZE is not available on this platform")
    proc = _run_python(code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert "train-000001.tar" in line and "no space left" in line
    assert [p.name for p in (root / "train").glob("*.tar")] == ["train-000000.tar"]
    assert [s["txt"] for s in iter_tar(root / "train" / "train-000000.tar")] == [b"x" * 100] * 2
    assert not _temporaries(root) and not (root / LOCK_NAME).exists()
    assert list(json.loads((root / "train" / "_progress.json").read_text())["done"]) == ["train-000000.tar"]


def _without_permission_override() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the bounding set, so that
    root too is held to permission bits (``prctl(PR_CAPBSET_DROP)``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_folder_names_the_file(tmp_path):
    root = _write_tokens(tmp_path / "ds", n=6)
    (root / "val").mkdir()
    os.chmod(root / "val", 0o555)
    code = textwrap.dedent(WRITE_AND_REPORT).format(root=str(root), split="val", make='lambda i: {"txt": "v"}')
    try:
        proc = _run_python(code, preexec_fn=_without_permission_override if os.geteuid() == 0 else None)
    except (OSError, subprocess.SubprocessError) as err:
        os.chmod(root / "val", 0o755)
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE to honour permission bits: {err}")
    out, err = proc.communicate(timeout=60)
    os.chmod(root / "val", 0o755)
    assert proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert "val/val-000000.tar" in line and "not writable" in line
    assert not _temporaries(root) and not (root / LOCK_NAME).exists()
    assert verify(root).ok  # the finished train split is intact


def test_shard_writer_error_in_process_is_a_write_error(tmp_path, monkeypatch):
    """In-process: an OSError while adding members (e.g. ENOSPC) comes out as WriteError naming the shard."""
    import errno
    import tarfile

    def full(self, tarinfo, fileobj=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    with pytest.raises(WriteError, match=r"train-000000.tar: no space left"):
        write_split(tmp_path, "train", list(range(3)), make_sample=lambda i: {"txt": "x"}, shard_size=3)
    assert not _temporaries(tmp_path) and not (tmp_path / LOCK_NAME).exists()



def test_stale_temporaries_are_judged_on_their_own_host_only(tmp_path):
    """A folder on a shared file system is written from several nodes: a temporary file of another host, whose pid
    means nothing here, is left alone; this host's dead writers' files (either name form) are removed."""
    import socket

    from nar.atomic import atomic_path, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname().replace(".", "-")
    mine_dead = tmp_path / f".a.tar.{dead.pid}@{here}.tmp"
    old_form = tmp_path / f".b.tar.{dead.pid}.tmp"
    other_node = tmp_path / f".c.tar.{dead.pid}@another-node.tmp"
    for path in (mine_dead, old_form, other_node):
        path.write_bytes(b"part of a shard")
    with atomic_path(tmp_path / "d.tar") as live:  # this process's own, still being written
        live.write_bytes(b"being written")
        assert live.name == f".d.tar.{os.getpid()}@{here}.tmp"
        assert sorted(remove_stale_temporaries(tmp_path)) == sorted([mine_dead, old_form])
        assert live.exists() and other_node.exists()
