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

from .backends import get_backend

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
    from .buffer import Buffer

    return Buffer(_take(dupfd), size, get_backend(backend), offset)


def _rebuild_sync_file(dupfd: _DupFd, backend: str) -> SyncFile:
    from .syncfile import SyncFile

    return SyncFile(_take(dupfd), get_backend(backend))


def reduce_buffer(buf: Buffer) -> tuple[Any, ...]:
    return _rebuild_buffer, (reduction.DupFd(buf.fileno()), buf._size, buf._backend.name, buf._offset)


def reduce_sync_file(sync_file: SyncFile) -> tuple[Any, ...]:
    return _rebuild_sync_file, (reduction.DupFd(sync_file.fileno()), sync_file._backend.name)
