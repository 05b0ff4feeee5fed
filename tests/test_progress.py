"""Progress lines of a resumed piece of work: the rate, the time left and the final line count what this process
did, not what an earlier one left behind."""

from __future__ import annotations

import logging

import pytest
import torch

from nar.progress import Progress


class Clock:
    """A fake ``time.perf_counter`` that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("nar.progress.time.perf_counter", fake)
    return fake


def lines(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_the_last_line_of_a_resumed_run_counts_this_process_s_work(clock, caplog) -> None:
    """A run resumed at step 6 of 10 (as LogProgressCallback sets it up) ends with the 4 steps it made in its own
    time, and says how many were done before; a fresh run's line is as it was."""
    caplog.set_level(logging.INFO, logger="nar")
    total, before, seconds = 10, 6, 2.0
    p = Progress(total, "train", unit="step", every_s=1e9, tty=False)
    p.done = p.start_done = before
    clock.now += seconds
    p.update(total - before)
    p.close()
    (line,) = lines(caplog, "train:")
    assert line.startswith(f"train: {total - before} step in 0:0{seconds:.0f} ({(total - before) / seconds:.3g} step/s)")
    assert f"{total}/{total}" in line and f"{before} done before" in line

    caplog.clear()
    fresh = Progress(total, "fresh", unit="step", every_s=1e9, tty=False)
    clock.now += seconds
    fresh.update(total)
    fresh.close()
    assert lines(caplog, "fresh:") == [f"fresh: {total} step in 0:0{seconds:.0f} ({total / seconds:.3g} step/s)"]


def test_chunks_read_back_are_not_in_the_rate_or_the_time_left(clock, caplog, tmp_path) -> None:
    """A resumed evaluation: stored chunks (0-2, and 4 after the missing 3) count as done before this process;
    the rate and the time left are those of the chunks generated (one per fake second)."""
    from nar.lightning.generation import chunk_path, save_chunk, stream_chunks

    caplog.set_level(logging.INFO, logger="nar")
    bs, num_chunks, stored, per_chunk_s = 2, 6, (0, 1, 2, 4), 1.0
    for c in stored:
        save_chunk(chunk_path(tmp_path, c), torch.zeros(bs, 3, 2, 2, dtype=torch.uint8), None)

    class FakeGenerator:
        device = torch.device("cpu")

        def tokens_stream(self, batches, batch_size=None):
            for cond, _, _ in batches:
                clock.now += per_chunk_s
                yield torch.zeros(cond.shape[0], 1, dtype=torch.long)

        def decode(self, tokens):
            return torch.zeros(tokens.shape[0], 3, 2, 2, dtype=torch.uint8)

    total = bs * num_chunks
    with Progress(total, "sampling", unit="img", every_s=0, tty=False) as p:
        reused = stream_chunks(FakeGenerator(), torch.zeros(total, dtype=torch.long), None, list(range(num_chunks)),
                               bs, 0, [lambda *a: None], folder=tmp_path, progress=p)
        assert reused == len(stored) and p.start_done == bs * len(stored) and p.done == total
    # the line after the first generated chunk (3): its images in its own time; what is left, at that rate
    first = bs * (stored.index(4) + 1)
    (line,) = lines(caplog, f"sampling: {first}/{total} ")
    rate = bs / per_chunk_s
    assert f"{rate:.3g} img/s" in line and f"0:0{(total - first) / rate:.0f} left" in line
    (last,) = lines(caplog, "sampling: ")[-1:]
    assert last.startswith(f"sampling: {total - bs * len(stored)} img in ")


def test_skipped_work_moves_the_terminal_bar_without_entering_its_rate() -> None:
    p = Progress(10, "bar", tty=True)
    p.skip(6)
    p.update(1)
    assert p._bar.n == p.done == 7 and p._bar.format_dict["initial"] == 6 and p.start_done == 6
    p.close()


def test_work_stopped_by_an_error_says_so_in_its_last_line(clock, caplog) -> None:
    """A split that fails half-way ended its log with a line that read like a finished one."""
    caplog.set_level(logging.INFO, logger="nar")
    with pytest.raises(OSError), Progress(10, "write train", unit="sample", every_s=1e9, tty=False) as p:
        p.update(4)
        raise OSError("disk full")
    (line,) = lines(caplog, "write train:")
    assert line.startswith("write train: stopped by an error at 4/10 sample: 4 sample in")
