"""CpuAccess: the ``with buffer.cpu_access(...)`` bracket (DMA_BUF_IOCTL_SYNC START on
entry, END on exit, also when the block raises).

The bracket holds the buffer's fd from START to END (see :mod:`pydmabuf._fd`): a
``close()`` inside the block, from any thread, takes effect after END, which so
always reaches the file that START did. It refers to the buffer, never the other
way round, so a dropped buffer is closed at once, without the cycle collector.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from ._fd import hold_append, hold_remove
from .errors import closed

if TYPE_CHECKING:
    from .buffer import Buffer

WRITE, END = 2, 4  # DMA_BUF_SYNC_* bits


class CpuAccess:
    __slots__ = ("_buffer", "_flags", "_timeout", "_fd")

    def __init__(self, buffer: Buffer, flags: int, timeout: float | None) -> None:
        self._buffer = buffer
        self._flags = flags
        self._timeout = timeout
        self._fd = -1  # what START went to; a buffer's number never changes while held

    def __enter__(self) -> Buffer:
        buf = self._buffer
        hold_append(buf)
        fd = buf._fd
        if fd < 0:
            buf._release()
            raise closed("Buffer")
        try:
            if self._timeout is not None:
                # START waits for implicit fences with no limit: honour the timeout first.
                buf._backend.wait_idle(fd, bool(self._flags & WRITE), self._timeout, "cpu_access")
            buf._backend.sync(fd, self._flags)
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
        buf = self._buffer
        try:
            buf._backend.sync(self._fd, self._flags | END)
        finally:
            hold_remove(buf)  # buf._release(), inlined on the hottest path
            if buf._fd < 0:
                buf._finish()
