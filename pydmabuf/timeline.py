"""Timeline: fences you signal yourself, for tests and producer/consumer code."""

from __future__ import annotations

import contextlib
from types import TracebackType

from .backends import Backend, TimelineSource, get_backend
from .errors import closed, invalid
from .syncfile import SyncFile, new_sync_file


class Timeline:
    """``fence(point)`` is unsignaled until ``signal(point)`` (or a later point).

    Fallback backend: socketpair ends (a dead owner signals them with -ENOENT). Kernel
    backend: sw_sync where debugfs has it, otherwise vgem (real DRM fences; vgem signals
    them itself after ~10 s, so signal well before). ``kind`` says which. Closing
    signals every pending fence.
    """

    __slots__ = ("_source", "_backend", "_value")

    def __init__(self, *, backend: str | Backend | None = None) -> None:
        self._source = None
        self._backend = get_backend(backend)
        self._source = self._backend.timeline()
        self._value = 0

    @property
    def kind(self) -> str:
        return self._src().kind

    @property
    def value(self) -> int:
        return self._value

    def _src(self) -> TimelineSource:
        if self._source is None:
            raise closed("Timeline")
        return self._source

    def fence(self, point: int) -> SyncFile:
        _check_point(point)
        return new_sync_file(self._src().fence(point), self._backend)

    def signal(self, point: int | None = None) -> None:
        """Advance to ``point`` (default: value + 1); never moves backwards."""
        point = self._value + 1 if point is None else point
        _check_point(point)
        self._src().signal(point)
        self._value = max(self._value, point)

    def close(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()

    @property
    def closed(self) -> bool:
        return self._source is None

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
        state = "closed" if self._source is None else f"kind={self._source.kind}"
        return f"<Timeline value={self._value} {state}>"


def _check_point(point: int) -> None:
    if not isinstance(point, int) or isinstance(point, bool) or not 0 < point < 2**31:
        raise invalid(f"timeline points are ints in 1..2**31-1, got {point!r}")
