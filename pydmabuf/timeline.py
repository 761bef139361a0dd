"""Timeline: fences you signal yourself, for tests and producer/consumer code."""

from __future__ import annotations

import contextlib
import errno as E
from types import TracebackType

from .backends import Backend, TimelineSource, get_backend
from .errors import Error, closed, error, invalid
from .syncfile import SyncFile, new_sync_file


class Timeline:
    """``fence(point)`` is unsignaled until ``signal(point)`` (or a later point).

    Fallback backend: socketpair ends (a dead owner signals them with -ENOENT). Kernel
    backend: sw_sync where debugfs has it, otherwise vgem (real DRM fences; vgem signals
    them itself after ~10 s, so signal well before). ``kind`` says which. Closing
    signals every pending fence.

    Only the process that made a Timeline signals its fences: when it dies, they
    signal (fallback and sw_sync with -ENOENT, vgem with status 1), also in processes
    it forked. A forked child closes its copies of the Timeline's fds at once (they
    would keep the fences pending while it lives) and its copy is closed: ``closed``
    is True, ``fence()`` and ``signal()`` raise ClosedError saying so, ``close()`` does
    nothing. A child that should signal fences makes its own Timeline and sends them.
    """

    __slots__ = ("_source", "_backend", "_value")

    def __init__(self, *, backend: str | Backend | None = None) -> None:
        self._source = None
        self._backend = get_backend(backend)
        self._source = self._backend.timeline()
        self._value = 0

    @property
    def kind(self) -> str:
        """The fence source: ``"fallback"``, ``"sw_sync"`` or ``"vgem"``. ClosedError once closed."""
        return self._src().kind

    @property
    def value(self) -> int:
        """The highest point signaled so far (0 before the first ``signal``)."""
        return self._value

    def _src(self) -> TimelineSource:
        if self._source is None:
            raise closed("Timeline")
        return self._source

    def fence(self, point: int) -> SyncFile:
        """A new SyncFile that signals once the timeline reaches ``point`` (at once if it has);
        points are ints in 1..2**31-1 (InvalidArgumentError). ClosedError once closed or forked."""
        _check_point(point)
        source = self._src()
        try:
            fd = source.fence(point)
        except OSError as exc:  # e.g. EMFILE from the fallback's socketpair: the library's error
            if isinstance(exc, Error):
                raise
            raise error(exc.errno or E.EIO, f"Timeline.fence({point})") from None
        return new_sync_file(fd, self._backend)

    def signal(self, point: int | None = None) -> None:
        """Advance to ``point`` (default: value + 1); never moves backwards."""
        point = self._value + 1 if point is None else point
        _check_point(point)
        self._src().signal(point)
        self._value = max(self._value, point)

    def close(self) -> None:
        """Close the source: pending fences signal (sw_sync's with an error status). Calling it
        again, or in a forked child, does nothing."""
        source, self._source = self._source, None
        if source is not None:
            source.close()

    @property
    def closed(self) -> bool:
        """True once closed, and in a forked child (see the class docstring)."""
        return self._source is None or getattr(self._source, "forked", False)

    def __enter__(self) -> Timeline:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_source", None) is not None:
            with contextlib.suppress(OSError):
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed or self._source is None else f"kind={self._source.kind}"
        return f"<Timeline value={self._value} {state}>"


def _check_point(point: int) -> None:
    if not isinstance(point, int) or isinstance(point, bool) or not 0 < point < 2**31:
        raise invalid(f"timeline points are ints in 1..2**31-1, got {point!r}")
