"""The fallback's Timeline source: socketpair fences (see fallback_fences) whose signal
ends stay with the process that made the Timeline.

A fence signals with an error when its owner dies because the kernel closes the
owner's signal ends and the fence end then reads end-of-file. A forked child holding
copies would keep them pending for as long as it lives, so it closes its copies at
once and its Timeline is *forked* (see _forked: fence() and signal() raise ClosedError).
"""

from __future__ import annotations

import contextlib
import os
import threading

from ..errors import closed
from . import fallback_fences as fences
from ._forked import forked_error, track
from .base import TimelineSource


class FallbackTimeline(TimelineSource):
    kind = "fallback"
    forked = False  # True in a forked child (see the module docstring)

    def __init__(self) -> None:
        self._value = 0
        self._pending: list[tuple[int, int]] = []  # (point, signal end)
        self._lock = threading.Lock()
        self._closed = False
        self._parent = 0  # in a forked child: the process that made this Timeline
        track(self)

    def _check(self) -> None:
        if self._closed:
            raise forked_error(self._parent) if self.forked else closed("Timeline")

    def fence(self, point: int) -> int:
        with self._lock:
            self._check()
            if point <= self._value:
                return fences.signaled_fence()
            fd, signal_end = fences.new_fence()
            self._pending.append((point, signal_end))
            return fd

    def signal(self, point: int) -> None:
        with self._lock:
            self._check()
            self._value = max(self._value, point)
            keep = []
            for entry in self._pending:
                if entry[0] <= self._value:
                    fences.signal(entry[1])
                else:
                    keep.append(entry)
            self._pending = keep

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _point, signal_end in self._pending:
                fences.signal(signal_end)
            self._pending = []

    def _after_fork_in_child(self, parent: int) -> None:
        """This process is a forked child: close its copies of the signal ends (the
        parent keeps its own, and signals with them) without signaling anything."""
        for _point, signal_end in self._pending:
            with contextlib.suppress(OSError):
                os.close(signal_end)
        self._pending = []
        if not self._closed:
            self._closed = True
            self.forked = True
            self._parent = parent
