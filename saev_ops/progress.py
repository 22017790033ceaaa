"""Progress of a long loop (record, train, infer): a rich bar on an interactive terminal, else an INFO log line at a
steady interval, so ``tail -f`` on a Slurm log shows a live job."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

INTERVAL_S = 10.0
MIN_RATE_S = 1.0
"""A rate over less wall time than this says nothing (16 images in a millisecond are not 16,000 images/s)."""


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``update(done, detail)`` as the loop goes; ``close()`` at the end (or use it as a context manager).

    Args:
        what: a few words for the bar and the lines ("training runs [3, 4]").
        total: the count ``done`` runs to.
        unit: what is counted ("steps", "images", "rows").
        logger: where the lines go when there is no terminal.
        rate_unit / rate_per_item: also show a rate in another unit (e.g. patches/s = steps/s x batch size).
        start: where the count starts (a resumed loop: its step), so the rate counts this process's work only.
        interactive: force the bar (True) or the lines (False); default: whether stderr is a terminal.
        started: when the work began (``time.monotonic()``), if before this Progress was made; rates are over the wall
            time since then.
    """

    def __init__(self, what: str, total: int, unit: str, logger: logging.Logger, *, rate_unit: str | None = None,
                 rate_per_item: float = 1.0, start: int = 0, interactive: bool | None = None,
                 interval_s: float = INTERVAL_S, started: float | None = None) -> None:
        self.what, self.total, self.unit, self.log = what, max(1, total), unit, logger
        self.rate_unit, self.rate_per_item = rate_unit or unit, rate_per_item
        self.interval_s = interval_s
        self.t0 = time.monotonic() if started is None else started
        self.last_line = time.monotonic()
        self.start_done = self.done = start
        self._bar: Any = None
        if sys.stderr.isatty() if interactive is None else interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(f"{unit}"), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"),
                            console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task(what, total=self.total, completed=start, detail="")
            self._bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def rate(self) -> float | None:
        """Items per second of wall time since the work began; None until :data:`MIN_RATE_S` have passed."""
        elapsed = time.monotonic() - self.t0
        return None if elapsed < MIN_RATE_S else (self.done - self.start_done) / elapsed

    def line(self, detail: str = "") -> str:
        rate = self.rate()
        pct = 100.0 * self.done / self.total
        text = f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
        if rate is None:
            text += f"in {duration(time.monotonic() - self.t0)} (too short for a rate)"
        else:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            text += (f"{rate * self.rate_per_item:,.0f} {self.rate_unit}/s, ETA "
                     f"{duration(eta) if eta == eta else '?'}")
        return f"{text} | {detail}" if detail else text

    def update(self, done: int, detail: str = "") -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, detail=detail)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval_s or done >= self.total:
            self.last_line = now
            self.log.info(self.line(detail))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
