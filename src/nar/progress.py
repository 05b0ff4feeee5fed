"""Progress of long work that shows in a terminal and in a log file alike.

On a terminal it is a tqdm bar; otherwise (a cluster job's log, ``nohup``) one log line every
``every_s`` seconds with the count, the rate and the time left, and one at the end, so a log file shows
progress as it goes instead of a carriage-return bar flushed at exit. Work ended by an exception says so in its
last line: "interrupted" when a stop was asked (Ctrl-C, SIGTERM: :func:`stop_was_asked`), "stopped by an error"
otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from nar.errors import RunInterrupted, StopAsked

log = logging.getLogger("nar")

# How a stop asked by SIGINT/SIGTERM reaches a `with Progress(...)` block: Python's KeyboardInterrupt, Lightning's
# SIGTERMException (a SystemExit), nar's RunInterrupted, and StopAsked (a validation ended after a batch or chunk).
STOP_EXCEPTIONS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, RunInterrupted, StopAsked)


def stop_was_asked(exc_type: type[BaseException] | None) -> bool:
    """Whether an exception of ``exc_type`` means that a stop was asked (a signal), not that the work failed."""
    if exc_type is None:
        return False
    return issubclass(exc_type, STOP_EXCEPTIONS)


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``with Progress(total, "sampling", unit="img") as p: ... p.update(n)``; ``enabled=False`` is silent."""

    def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = 30.0, enabled: bool = True,
                 tty: bool | None = None) -> None:
        self.total, self.desc, self.unit, self.every_s = max(0, int(total)), desc, unit, every_s
        self.enabled = enabled and self.total > 0
        self.done = 0
        self.start_done = 0  # work done before this process (a resumed run, or :meth:`skip`): not in the rate
        self.start = self.last = time.perf_counter()
        self._bar = None
        if self.enabled and (tty if tty is not None else sys.stderr.isatty() and not os.environ.get("NAR_LOG_PROGRESS")):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        left = fmt_seconds(eta) if eta == eta else "?"
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %), "
                f"{rate:.3g} {self.unit}/s, {left} left")

    def skip(self, n: int) -> None:
        """Count ``n`` as done before this process (work read back, not redone): in the count and the time left,
        not in the rate. Before any work of this process the clock starts again, so reading back is not timed."""
        if not self.enabled or n <= 0:
            return
        if self.done == self.start_done:
            self.start = time.perf_counter()
        self.done += n
        self.start_done += n
        if self._bar is not None:  # tqdm's own rate leaves out its `initial`
            self._bar.initial += n
            self._bar.n += n
            self._bar.last_print_n += n
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            log.info("%s", self.line())

    def close(self, failed: bool = False, interrupted: bool = False) -> None:
        """End the display with a summary line; ``failed``: the work stopped on an error, ``interrupted``: it
        stopped because a stop was asked (a signal); the line says which (a line that read like a finished job, or
        an error where Ctrl-C or a scheduler's SIGTERM stopped it, would mislead a reader of the log)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        # this process's work in its own time; a resumed run adds where the count stands now
        where = f"at {self.done}/{self.total} {self.unit}: "
        stopped = f"interrupted {where}" if interrupted else f"stopped by an error {where}" if failed else ""
        mine = (f"{self.desc}: {stopped}{self.done - self.start_done} {self.unit} in "
                f"{fmt_seconds(time.perf_counter() - self.start)} ({self.rate:.3g} {self.unit}/s)")
        if self.start_done:
            mine += f"; {self.done}/{self.total} {self.unit} counting the {self.start_done} done before"
        log.info("%s", mine)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None, interrupted=stop_was_asked(exc_type))
