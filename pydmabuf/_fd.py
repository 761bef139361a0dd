"""The fd-owning base class shared by Heap, Buffer and SyncFile.

Ownership rules (after trio's ``_FdHolder``): the object owns exactly one fd; ``close``
sets the attribute to -1 *before* calling ``os.close`` so that no path can close the
same number twice (it may already belong to someone else); every method of a closed
object raises :class:`~pydmabuf.errors.ClosedError` without touching the old number;
the finalizer only closes. A plain ``__del__`` is the cheapest finalizer CPython has,
which keeps object creation on hot paths (allocate, export) free of weakref churn.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType
from typing import TypeVar

from .errors import closed, invalid

_Self = TypeVar("_Self", bound="FdHolder")


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
            try:
                os.close(fd)
            except OSError:
                pass


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
