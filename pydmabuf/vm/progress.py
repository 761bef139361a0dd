"""A download's progress for people: bytes, rate and time left.

On a terminal the line is redrawn in place; in a log (CI, a pipe) a line is
written every :data:`LOG_EVERY` seconds and at the end, so the log shows the
download moving without thousands of lines.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["LOG_EVERY", "Meter", "describe"]

LOG_EVERY = 5.0  # seconds between lines when not on a terminal
_WIDTH = 24  # the bar's characters


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def describe(done: int, total: int | None, seconds: float) -> str:
    """One progress line: ``41.9 MB of 104.8 MB  40% [#########...]  8.4 MB/s, 7 s left``."""
    rate = done / seconds if seconds > 0 else 0.0
    speed = f"{_mb(rate)}/s" if seconds > 0 else "-"
    if not total:
        return f"{_mb(done)}  {speed}"
    share = min(done / total, 1.0)
    filled = int(share * _WIDTH)
    bar = "#" * filled + "." * (_WIDTH - filled)
    left = f"{(total - done) / rate:.0f} s left" if rate > 0 and done < total else ("done" if done >= total else "")
    return f"{_mb(done)} of {_mb(total)} {share:4.0%} [{bar}]  {speed}, {left}".rstrip(", ")


class Meter:
    """Reports ``update(done)`` calls on ``stream`` for a download of ``total`` bytes."""

    def __init__(self, stream: TextIO, label: str, total: int | None) -> None:
        self.stream, self.label, self.total = stream, label, total
        self.started = self._last = time.monotonic()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r{self.label} {describe(done, self.total, now - self.started)}\x1b[K")
            self.stream.flush()
        elif now - self._last >= LOG_EVERY:
            self._last = now
            self.stream.write(f"{self.label} {describe(done, self.total, now - self.started)}\n")
            self.stream.flush()

    def finish(self) -> None:
        line = f"{self.label} {describe(self.done, self.total, time.monotonic() - self.started)}"
        self.stream.write(f"\r{line}\x1b[K\n" if self.tty else f"{line}\n")
        self.stream.flush()
