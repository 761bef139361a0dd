"""CpuAccess: the ``with buffer.cpu_access(...)`` bracket (DMA_BUF_IOCTL_SYNC START on
entry, END on exit, also when the block raises).

This generic version calls ``backend.sync``; a backend may return a subclass with a
leaner path (the kernel's issues the ioctl inline). Buffer caches the default
(read+write, no timeout) bracket, so the hot loop ``with buf.cpu_access():`` creates
no object.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from .errors import closed

if TYPE_CHECKING:
    from .buffer import Buffer

WRITE, END = 2, 4  # DMA_BUF_SYNC_* bits


class CpuAccess:
    __slots__ = ("_buffer", "_flags", "_timeout")

    def __init__(self, buffer: Buffer, flags: int, timeout: float | None) -> None:
        self._buffer = buffer
        self._flags = flags
        self._timeout = timeout

    def _wait_first(self) -> None:
        # START waits for implicit fences with no limit, so honour the timeout first.
        self._buffer.wait(write=bool(self._flags & WRITE), timeout=self._timeout)

    def __enter__(self) -> Buffer:
        buf = self._buffer
        fd = buf._fd
        if fd < 0:
            raise closed("Buffer")
        if self._timeout is not None:
            self._wait_first()
        buf._backend.sync(fd, self._flags)
        return buf

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buf = self._buffer
        if buf._fd >= 0:  # closed inside the block: the bracket died with the fd
            buf._backend.sync(buf._fd, self._flags | END)
