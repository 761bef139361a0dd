"""The fd-owning base class shared by Heap, Buffer and SyncFile.

Ownership rules (after trio's ``_FdHolder``): the object owns exactly one fd; ``close``
sets the attribute to -1 *before* calling ``os.close`` so that no path can close the
same number twice (it may already belong to someone else); every method of a closed
object raises :class:`~pydmabuf.errors.ClosedError` without touching the old number;
the finalizer only closes. A plain ``__del__`` is the cheapest finalizer CPython has,
which keeps object creation on hot paths (allocate, export) free of weakref churn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from .errors import closed, invalid

_Self = TypeVar("_Self", bound="FdHolder")

# Hooks that close() runs before closing, for the (rare) objects an asyncio waiter is
# watching. Kept outside the objects so creation costs nothing and close() pays one
# global truth test while nothing waits anywhere.
_close_hooks: dict[FdHolder, list[Callable[[], None]]] = {}


class FdHolder:
    __slots__ = ("_fd", "__weakref__")
    _kind = "fd"

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        """The fd number (for poll/select/asyncio); raises if closed."""
        fd = self._fd
        if fd < 0:
            raise closed(self._kind)
        return fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd; calling it again does nothing."""
        fd = self._fd
        if fd >= 0:
            self._fd = -1
            if _close_hooks:
                _run_close_hooks(self)
            os.close(fd)

    def detach(self) -> int:
        """Give up ownership: return the fd and leave this object closed."""
        fd = self.fileno()
        self._fd = -1
        return fd

    def __enter__(self: _Self) -> _Self:
        self.fileno()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            try:  # noqa: SIM105 - plain try: contextlib may be gone at interpreter exit
                os.close(fd)
            except OSError:
                pass


def add_close_hook(holder: FdHolder, hook: Callable[[], None]) -> None:
    """Run ``hook`` when ``holder`` is closed (before its fd is). Hooks must not raise."""
    _close_hooks.setdefault(holder, []).append(hook)


def remove_close_hook(holder: FdHolder, hook: Callable[[], None]) -> None:
    hooks = _close_hooks.get(holder)
    if hooks is not None:
        with contextlib.suppress(ValueError):
            hooks.remove(hook)
        if not hooks:
            _close_hooks.pop(holder, None)


def _run_close_hooks(holder: FdHolder) -> None:
    for hook in _close_hooks.pop(holder, ()):
        hook()


def dup_cloexec(fd: int) -> int:
    """A new fd for the same open file, close-on-exec like every fd we create."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)


def as_fd(obj: object) -> int:
    """Accept an int fd or anything with ``fileno()`` (the linuxpy convention)."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        fd = obj
    else:
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            raise invalid(f"expected an fd or an object with fileno(), got {type(obj).__name__}")
        fd = fileno()
    if fd < 0:
        raise invalid(f"invalid fd {fd}")
    return fd
