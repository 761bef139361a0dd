"""udmabuf: dma-bufs backed by memfd pages (shared with the memfd, not copied)."""

from __future__ import annotations

import errno as E
import os

from ._fd import FD_MAX, as_fd
from .backends import Backend, get_backend
from .buffer import Buffer, encode_name, named, new_buffer
from .errors import Error, check_index, error, invalid
from .heap import check_size
from .uapi import memfd as _memfd
from .uapi.ops import cached_stat

_U63 = 2**63  # offsets and sizes must fit the kernel's u64 fields as non-negative off_t


def udmabuf(size: int, *, name: str | None = None, backend: str | Backend | None = None) -> Buffer:
    """A new udmabuf of ``size`` bytes (rounded up to pages) on a memfd made for it."""
    size = _memfd.page_round(check_size(size))
    if size >= _U63:
        raise invalid(f"size {size} is too large")
    if name is not None:
        encode_name(name)  # TypeError / InvalidArgumentError before anything is made
    try:
        memfd = _memfd.sealed_memfd(f"pydmabuf-udmabuf:{name or ''}", size, _memfd.F_SEAL_SHRINK)
    except OSError as exc:  # EMFILE, ENOMEM...: the library's error
        if isinstance(exc, Error):
            raise
        raise error(exc.errno or E.EIO, f"udmabuf({size}): a memfd for it") from None
    try:
        buf = udmabuf_from_ranges([(memfd, 0, size)], backend=backend)
    finally:
        os.close(memfd)  # the buffer pins the pages; the memfd is no longer needed
    return named(buf, name)


def udmabuf_from_memfd(memfd: object, offset: int = 0, size: int | None = None, *,
                       backend: str | Backend | None = None) -> Buffer:
    """A buffer sharing ``memfd``'s pages ``[offset, offset+size)`` (default: to its end).

    The memfd must be created with MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK;
    offset and size must be page-aligned.
    """
    fd = memfd if type(memfd) is int and 0 <= memfd <= FD_MAX else as_fd(memfd)
    if type(offset) is not int or not 0 <= offset < _U63:
        offset = _int(offset, "offset")
    if size is None:
        try:
            size = cached_stat(fd)[1] - offset  # asks no FUSE server (see uapi.ops)
        except (OSError, OverflowError) as exc:
            raise error(getattr(exc, "errno", None) or E.EBADF, f"statx of memfd {fd}") from None
    if type(size) is not int or not 0 <= size < _U63:
        size = _int(size, "size")
    b = _default[0] if backend is None and _default else _backend(backend)
    try:
        new = b.udmabuf_one(fd, offset, size)
        if new < 0:  # the compiled call failed: the checked one raises the typed error
            new = b.udmabuf([(fd, offset, size)])[0]
    except OSError as exc:  # EMFILE from a dup on the fallback...: the library's error
        raise _diagnosed(exc, [(fd, offset, size)]) from None
    return new_buffer(new, size, b, offset if b.udmabuf_keeps_offset else 0)


def _diagnosed(exc: OSError, ranges: list[tuple[int, int, int]]) -> Error:
    """The library's error for a refused UDMABUF_CREATE(_LIST), naming the one condition
    that failed where it can be found (the kernel says only EINVAL or EBADFD)."""
    code = exc.errno or E.EIO
    if code in (E.EINVAL, E.EBADFD):
        for memfd, offset, size in ranges:
            problem = _memfd.udmabuf_problem(memfd, offset, size)
            if problem is not None:
                return error(problem[0], "UDMABUF_CREATE", problem[1])
        total, limit = sum(size for _memfd, _offset, size in ranges), _memfd.udmabuf_size_limit()
        if total > limit:
            return error(code, "UDMABUF_CREATE", f"{total} bytes exceed udmabuf's limit of {limit} bytes "
                         f"({_memfd.UDMABUF_SIZE_LIMIT_FILE})")
    if isinstance(exc, Error):
        return exc
    return error(code, "UDMABUF_CREATE")


_default: list[Backend] = []  # the default backend once known: no get_backend frame per call


def _backend(name: str | Backend | None) -> Backend:
    found = get_backend(name)
    if name is None:
        _default[:] = [found]
    return found


def udmabuf_from_ranges(ranges: list[tuple[object, int, int]], *,
                        backend: str | Backend | None = None) -> Buffer:
    """One buffer joining several ``(memfd, offset, size)`` ranges (UDMABUF_CREATE_LIST)."""
    items = []
    for item in ranges:
        if not isinstance(item, tuple) or len(item) != 3:
            raise invalid(f"each range is a (memfd, offset, size) tuple, got {item!r}")
        memfd, offset, size = item
        items.append((as_fd(memfd), _int(offset, "offset"), _int(size, "size")))
    b = get_backend(backend)
    try:
        fd, offset, total = b.udmabuf(items)
    except OSError as exc:
        raise _diagnosed(exc, items) from None
    return new_buffer(fd, total, b, offset)


def _int(value: object, what: str) -> int:
    """An offset or size: an int or integer with ``__index__`` (numpy's) in 0..2**63-1;
    InvalidArgumentError otherwise (also for a non-integer, as always here)."""
    if type(value) is not int:
        try:
            value = check_index(value, what)
        except TypeError:
            raise invalid(f"{what} must be an int, got {type(value).__name__}") from None
    if not 0 <= value < _U63:
        raise invalid(f"{what} must be in 0..2**63-1, got {value}")
    return value

