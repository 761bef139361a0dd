"""memfd helpers shared by udmabuf creation (both backends) and the fallback heaps."""

from __future__ import annotations

import errno
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


UDMABUF_SIZE_LIMIT_FILE = "/sys/module/udmabuf/parameters/size_limit_mb"
UDMABUF_DEFAULT_LIMIT = 64 << 20  # udmabuf's default size_limit_mb, in bytes


def udmabuf_size_limit() -> int:
    """udmabuf's limit on one buffer in bytes (its ``size_limit_mb`` parameter, read
    where the kernel shows it; the default 64 MiB otherwise)."""
    try:
        with open(UDMABUF_SIZE_LIMIT_FILE) as f:
            return int(f.read().strip()) << 20
    except (OSError, ValueError):
        return UDMABUF_DEFAULT_LIMIT


def udmabuf_problem(memfd: int, offset: int, size: int) -> tuple[int, str] | None:
    """What udmabuf refuses in the range ``(memfd, offset, size)``, as (errno, the
    condition named), in the kernel's order; None if it would pass these checks. F_GET_SEALS
    first: shmem's own answer (EINVAL elsewhere), where fstat of another file system's
    file (FUSE) could wait for its server."""
    found = seals(memfd)
    if found is None:
        try:
            fcntl.fcntl(memfd, fcntl.F_GETFD)
        except (OSError, OverflowError, ValueError):
            return errno.EBADFD, "not an open memfd"
        return errno.EBADFD, "each range needs a memfd (shmem) fd"
    if not found & F_SEAL_SHRINK or found & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
        return errno.EINVAL, ("the memfd needs MFD_ALLOW_SEALING + F_SEAL_SHRINK and no write seal "
                              f"(its seals: 0x{found:x})")
    if offset % PAGE_SIZE or size % PAGE_SIZE or size <= 0 or offset < 0:
        return errno.EINVAL, f"offset {offset} and size {size} must be page-aligned ({PAGE_SIZE}), size > 0"
    if offset + size > os.fstat(memfd).st_size:
        return errno.EINVAL, f"the range ends at {offset + size}, past the end of the memfd ({os.fstat(memfd).st_size})"
    return None
