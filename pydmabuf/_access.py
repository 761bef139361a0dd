"""CpuAccess: the ``with buffer.cpu_access(...)`` bracket (DMA_BUF_IOCTL_SYNC START on
entry, END on exit, also when the block raises).

The bracket holds the buffer's fd from START to END (see :mod:`pydmabuf._fd`): a
``close()`` inside the block, from any thread, takes effect after END, which so
always reaches the file that START did. It refers to its buffer through a weak
reference, so the buffer may cache its default bracket (the hot loop
``with buf.cpu_access():`` creates no object) without a reference cycle: a dropped
buffer is closed at once, not when the cycle collector runs.

The backend hands over its SYNC call as plain values (``Backend.sync_call``): a
callable with ``fcntl.ioctl``'s signature and the packed START/END arguments, so the
kernel's bracket is one ``fcntl.ioctl`` each way with no Python frame in between.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from ._fd import hold_append, hold_remove
from .errors import Error, closed

if TYPE_CHECKING:
    from .buffer import Buffer

WRITE, END = 2, 4  # DMA_BUF_SYNC_* bits


class CpuAccess:
    __slots__ = ("_ref", "_flags", "_timeout", "_fd", "_call", "_request", "_start", "_end")

    def __init__(self, buffer: Buffer, flags: int, timeout: float | None) -> None:
        self._ref = weakref.ref(buffer)
        self._flags = flags
        self._timeout = timeout
        self._fd = -1  # what START went to; a buffer's number never changes while held
        call: tuple[Callable[[int, int, object], object], int, object, object]
        call = buffer._backend.sync_call(flags)
        self._call, self._request, self._start, self._end = call

    @staticmethod
    def _sync(buf: Buffer, fd: int, flags: int, exc: OSError) -> None:
        """After the fast call failed: a library error stands; a raw OSError goes through
        the backend's checked call, which retries EINTR/EAGAIN and raises typed errors."""
        if isinstance(exc, Error):
            raise exc
        buf._backend.sync(fd, flags)

    def __enter__(self) -> Buffer:
        buf = self._ref()
        if buf is None:
            raise closed("Buffer")
        hold_append(buf)
        fd = buf._fd
        if fd < 0:
            buf._release()
            raise closed("Buffer")
        try:
            if self._timeout is not None:
                # START waits for implicit fences with no limit: honour the timeout first.
                buf._backend.wait_idle(fd, bool(self._flags & WRITE), self._timeout, "cpu_access")
            try:
                self._call(fd, self._request, self._start)
            except OSError as exc:
                self._sync(buf, fd, self._flags, exc)
        except BaseException:
            buf._release()
            raise
        self._fd = fd
        return buf

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buf = self._ref()
        if buf is None:  # unreachable while held: _held keeps the buffer alive
            return
        try:
            try:
                self._call(self._fd, self._request, self._end)
            except OSError as err:
                self._sync(buf, self._fd, self._flags | END, err)
        finally:
            hold_remove(buf)  # buf._release(), inlined on the hottest path
            if buf._fd < 0:
                buf._finish()
