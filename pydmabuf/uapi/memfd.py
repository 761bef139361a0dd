"""memfd helpers shared by udmabuf creation (both backends) and the fallback heaps."""

from __future__ import annotations

import fcntl
import mmap
import os

PAGE_SIZE = mmap.PAGESIZE
MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
F_SEAL_SEAL = 0x1
F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_WRITE = 0x8
F_SEAL_FUTURE_WRITE = 0x10  # not in Python 3.11's fcntl


def page_round(size: int) -> int:
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def sealed_memfd(name: str, size: int, seals: int) -> int:
    """A close-on-exec memfd of ``size`` bytes with ``seals`` applied.

    Python's default ``os.memfd_create`` flags lack MFD_ALLOW_SEALING, which udmabuf
    needs, so the flags are always explicit here.
    """
    fd = os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def seals(fd: int) -> int | None:
    """The memfd's seals, or None when the file cannot be sealed (not a memfd)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return None
