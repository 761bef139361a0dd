"""udmabuf: dma-bufs backed by memfd pages (shared with the memfd, not copied)."""

from __future__ import annotations

import os

from . import _memfd
from ._fd import as_fd
from .backends import Backend, get_backend
from .buffer import Buffer
from .heap import check_size


def udmabuf(size: int, *, name: str | None = None, backend: str | Backend | None = None) -> Buffer:
    """A new udmabuf of ``size`` bytes (rounded up to pages) on a memfd made for it."""
    size = _memfd.page_round(check_size(size))
    memfd = _memfd.sealed_memfd(f"pydmabuf-udmabuf:{name or ''}", size, _memfd.F_SEAL_SHRINK)
    try:
        buf = udmabuf_from_ranges([(memfd, 0, size)], backend=backend)
    finally:
        os.close(memfd)  # the buffer pins the pages; the memfd is no longer needed
    return buf._named(name)


def udmabuf_from_memfd(memfd: object, offset: int = 0, size: int | None = None, *,
                       backend: str | Backend | None = None) -> Buffer:
    """A buffer sharing ``memfd``'s pages ``[offset, offset+size)`` (default: to its end).

    The memfd must be created with MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK;
    offset and size must be page-aligned.
    """
    fd = as_fd(memfd)
    if size is None:
        size = os.fstat(fd).st_size - offset
    return udmabuf_from_ranges([(fd, offset, size)], backend=backend)


def udmabuf_from_ranges(ranges: list[tuple[object, int, int]], *,
                        backend: str | Backend | None = None) -> Buffer:
    """One buffer joining several ``(memfd, offset, size)`` ranges (UDMABUF_CREATE_LIST)."""
    items = [(as_fd(memfd), int(offset), int(size)) for memfd, offset, size in ranges]
    b = get_backend(backend)
    fd, offset, total = b.udmabuf(items)
    return Buffer(fd, total, b, offset)
