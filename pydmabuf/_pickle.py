"""Pickling Buffers and SyncFiles for multiprocessing.

The fd goes through ``multiprocessing.reduction.DupFd``: while a child is being
started (spawn, forkserver) it rides along with the process; otherwise (Queues,
Pool tasks and results) the sending process's resource sharer hands a duplicate
to the first process that unpickles it. So a pickle is meant to be loaded once,
by another process, while the sender is alive, as with sockets in multiprocessing.
"""

from __future__ import annotations

import os
from multiprocessing import reduction
from typing import TYPE_CHECKING, Any, Protocol

from ._fd import FdHolder
from .backends import buffer_backend, fence_backend
from .errors import invalid

if TYPE_CHECKING:
    from .buffer import Buffer
    from .syncfile import SyncFile


class _DupFd(Protocol):
    def detach(self) -> int: ...


def _take(dupfd: _DupFd) -> int:
    fd = dupfd.detach()
    os.set_inheritable(fd, False)  # arrives inheritable; every fd we own is close-on-exec
    return fd


def _rebuild_buffer(dupfd: _DupFd, size: int, backend: str, offset: int) -> Buffer:
    from .buffer import new_buffer

    fd = _take(dupfd)
    try:  # the fd's kind, not the pickle, says which semantics apply
        found, real_size = buffer_backend(fd)
        if not 0 <= offset <= offset + size <= real_size:
            raise invalid(f"pickled buffer of {size} bytes at {offset} does not fit its fd")
    except BaseException:
        os.close(fd)
        raise
    return new_buffer(fd, size, found, offset)


def _rebuild_sync_file(dupfd: _DupFd, backend: str) -> SyncFile:
    from .syncfile import new_sync_file

    fd = _take(dupfd)
    try:
        found = fence_backend(fd)
    except BaseException:
        os.close(fd)
        raise
    return new_sync_file(fd, found)


def _dup_held(obj: FdHolder) -> Any:
    fd = obj._hold()  # a close() in another thread can't swap the file under the dup
    try:
        return reduction.DupFd(fd)
    finally:
        obj._release()


def reduce_buffer(buf: Buffer) -> tuple[Any, ...]:
    return _rebuild_buffer, (_dup_held(buf), buf._size, buf._backend.name, buf._offset)


def reduce_sync_file(sync_file: SyncFile) -> tuple[Any, ...]:
    return _rebuild_sync_file, (_dup_held(sync_file), sync_file._backend.name)
