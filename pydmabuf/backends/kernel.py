"""The real thing: dma-heaps, udmabuf and sync_file ioctls on kernel fds."""

from __future__ import annotations

import errno as E
import fcntl
import os
import select
from types import TracebackType
from typing import TYPE_CHECKING

from .. import _fdinfo, _ffi, _ops
from .._access import CpuAccess
from ..errors import (
    CMA_HINT,
    HEAP_PERMISSION_HINT,
    UDMABUF_EINVAL_HINT,
    UDMABUF_PERMISSION_HINT,
    error,
    invalid,
    unsupported,
)
from ..info import BufferInfo, FenceInfo
from .base import Backend, Range, TimelineSource

if TYPE_CHECKING:
    from ..buffer import Buffer

HEAP_DIR = "/dev/dma_heap"
UDMABUF_DEV = "/dev/udmabuf"
O_RDWR_CLOEXEC = os.O_RDWR | os.O_CLOEXEC  # O_CLOEXEC alone gives a read-only buffer

_UDMABUF_HINTS = {E.EINVAL: UDMABUF_EINVAL_HINT, E.EACCES: UDMABUF_PERMISSION_HINT,
                  E.EBADFD: "each range needs a memfd (shmem) fd"}


_fioctl = fcntl.ioctl
_SYNC = _ffi.DMA_BUF_IOCTL_SYNC
_ALLOC = _ffi.DMA_HEAP_IOCTL_ALLOC
_EXPORT = _ffi.DMA_BUF_IOCTL_EXPORT_SYNC_FILE
_END = 4
_pack_sync = _ops.SYNC_ARG.pack
_pack_alloc = _ops.ALLOC_ARG.pack
_unpack_alloc = _ops.ALLOC_ARG.unpack
_unpack_export = _ops.EXPORT_ARG.unpack
# EXPORT_SYNC_FILE's input is only the flags: one packed argument per flag value.
_EXPORT_ARGS = {flags: _ops.EXPORT_ARG.pack(flags, -1) for flags in (1, 2, 3)}


class KernelCpuAccess(CpuAccess):
    """The bracket with both ioctls inline: the hottest path in the library."""

    __slots__ = ("_start_arg", "_end_arg")

    def __init__(self, buffer: Buffer, flags: int, timeout: float | None) -> None:
        super().__init__(buffer, flags, timeout)
        self._start_arg = _pack_sync(flags)
        self._end_arg = _pack_sync(flags | _END)

    def __enter__(self) -> Buffer:
        buf = self._buffer
        fd = buf._fd
        if fd < 0 or self._timeout is not None:
            return super().__enter__()
        try:
            _fioctl(fd, _SYNC, self._start_arg)
        except OSError as exc:
            _ops.retry_or_raise(exc, "DMA_BUF_IOCTL_SYNC")
            _ops.dma_buf_sync(fd, self._flags)
        return buf

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd = self._buffer._fd
        if fd >= 0:
            try:
                _fioctl(fd, _SYNC, self._end_arg)
            except OSError as err:
                _ops.retry_or_raise(err, "DMA_BUF_IOCTL_SYNC")
                _ops.dma_buf_sync(fd, self._flags | _END)




def available() -> bool:
    return os.path.isdir(HEAP_DIR) or os.path.exists(UDMABUF_DEV)


class KernelBackend(Backend):
    name = "kernel"
    exporter = ""  # the kernel names its exporters ("system", "udmabuf", "drm")
    sync = staticmethod(_ops.dma_buf_sync)

    def heaps(self) -> list[str]:
        try:
            return sorted(os.listdir(HEAP_DIR))
        except FileNotFoundError:
            return []

    def open_heap(self, name: str) -> int:
        path = os.path.join(HEAP_DIR, name)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise error(E.ENOENT, f"no dma-heap {name!r}",
                        f"available: {', '.join(self.heaps()) or 'none'}") from None
        except PermissionError as exc:
            raise error(exc.errno or E.EACCES, f"opening {path}", HEAP_PERMISSION_HINT) from None

    def cpu_access(self, buffer: Buffer, flags: int, timeout: float | None) -> CpuAccess:
        return KernelCpuAccess(buffer, flags, timeout)

    def allocate(self, heap_fd: int, heap_name: str, size: int) -> int:
        # A fresh packed struct each call: the kernel rejects a non-zero input fd field.
        arg = _pack_alloc(size, 0, O_RDWR_CLOEXEC, 0)
        while True:
            try:
                return _unpack_alloc(_fioctl(heap_fd, _ALLOC, arg))[1]  # type: ignore[no-any-return]
            except OSError as exc:
                hints = {E.ENOMEM: CMA_HINT} if heap_name != "system" else None
                _ops.retry_or_raise(exc, "DMA_HEAP_IOCTL_ALLOC", hints)

    def export_sync_file(self, fd: int, flags: int) -> int:
        arg = _EXPORT_ARGS.get(flags)
        if arg is None:
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_EXPORT_SYNC_FILE flags {flags:#x}")
        while True:
            try:
                return _unpack_export(_fioctl(fd, _EXPORT, arg))[1]  # type: ignore[no-any-return]
            except OSError as exc:
                _ops.retry_or_raise(exc, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE")

    def udmabuf(self, ranges: list[Range]) -> tuple[int, int, int]:
        try:
            dev = os.open(UDMABUF_DEV, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise unsupported(f"{UDMABUF_DEV} does not exist (kernel without CONFIG_UDMABUF)") from None
        except PermissionError as exc:
            raise error(exc.errno or E.EACCES, f"opening {UDMABUF_DEV}", UDMABUF_PERMISSION_HINT) from None
        try:
            fd = _ops.udmabuf_create_list(dev, ranges, 1, _UDMABUF_HINTS)  # UDMABUF_FLAGS_CLOEXEC
        finally:
            os.close(dev)
        return fd, 0, sum(size for _memfd, _offset, size in ranges)

    def check_buffer(self, fd: int) -> tuple[int, int]:
        if _ops.fs_magic(fd) != _ops.DMA_BUF_MAGIC:
            raise invalid(f"fd {fd} is not a dma-buf")
        return _ops.buffer_size(fd), 0

    def buffer_name(self, fd: int) -> str | None:
        return _fdinfo.read(fd).get("name")

    set_name = staticmethod(_ops.dma_buf_set_name)

    def buffer_info(self, fd: int, size: int) -> BufferInfo:
        fields = _fdinfo.read(fd)
        return BufferInfo(
            size=int(fields.get("size", size)),
            exporter=fields.get("exp_name", ""),
            name=fields.get("name"),
            inode=int(fields.get("ino") or os.fstat(fd).st_ino),
            count=int(fields.get("count", 0)),
        )

    import_sync_file = staticmethod(_ops.dma_buf_import_sync_file)

    def implicit_fence(self, fd: int, write: bool) -> tuple[int, int, bool]:
        # POLLIN: writers done. POLLOUT: everyone done.
        return fd, select.POLLOUT if write else select.POLLIN, False

    def check_sync_file(self, fd: int) -> None:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            raise error(E.EBADF, f"fd {fd}") from None
        if link != "anon_inode:sync_file":
            raise invalid(f"fd {fd} is not a sync_file ({link})")

    def merge(self, fd: int, other_fd: int, name: str) -> int:
        return _ops.sync_merge(fd, other_fd, name.encode())

    def sync_file_info(self, fd: int) -> tuple[str, int, list[FenceInfo]]:
        name, status, fences = _ops.sync_file_info(fd)
        return name, status, [FenceInfo(*f) for f in fences]

    set_deadline = staticmethod(_ops.sync_set_deadline)

    def timeline(self) -> TimelineSource:
        from .kernel_timelines import open_timeline

        return open_timeline()
