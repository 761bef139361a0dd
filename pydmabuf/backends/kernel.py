"""The real thing: dma-heaps, udmabuf and sync_file ioctls on kernel fds."""

from __future__ import annotations

import errno as E
import os
import select
import threading
from collections.abc import Callable

from ..errors import (
    CMA_HINT,
    HEAP_PERMISSION_HINT,
    UDMABUF_EINVAL_HINT,
    UDMABUF_PERMISSION_HINT,
    error,
    unsupported,
)
from ..uapi import fdinfo as _fdinfo
from ..uapi import ops as _ops
from ..uapi import wait as _wait
from .base import Backend, BufferFacts, FenceFacts, Range, TimelineSource

HEAP_DIR = "/dev/dma_heap"
UDMABUF_DEV = "/dev/udmabuf"
O_RDWR_CLOEXEC = os.O_RDWR | os.O_CLOEXEC  # O_CLOEXEC alone gives a read-only buffer

_CMA_HINTS = {E.ENOMEM: CMA_HINT}
_ALLOC_HINTS: dict[str, dict[int, str] | None] = {"system": None}
_UDMABUF_HINTS = {E.EINVAL: UDMABUF_EINVAL_HINT, E.EACCES: UDMABUF_PERMISSION_HINT,
                  E.EBADFD: "each range needs a memfd (shmem) fd"}


def available() -> bool:
    """Whether this kernel can make new buffers here (a dma-heap or udmabuf node)."""
    return os.path.isdir(HEAP_DIR) or os.path.exists(UDMABUF_DEV)


def has_dma_buf() -> bool:
    """Whether this kernel has dma-buf at all (CONFIG_DMA_SHARED_BUFFER, always built in
    when present): then drivers' exports work even with no allocator node."""
    if available() or os.path.exists("/dev/dri") or os.path.exists("/sys/kernel/dmabuf"):
        return True
    try:  # a GPU server or camera board may have no node we know: ask the symbol table
        with open("/proc/kallsyms", "rb") as f:
            return b" dma_buf_export\n" in f.read()
    except OSError:
        return False


class KernelBackend(Backend):
    name = "kernel"
    exporter = ""  # the kernel names its exporters ("system", "udmabuf", "drm")
    sync = staticmethod(_ops.dma_buf_sync)

    def sync_call(self, flags: int) -> tuple[Callable[[int, int, object], object], int, object, object]:
        return _ops.dma_buf_sync_call(flags)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._udmabuf_fd = -1

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
            if not os.path.isdir(HEAP_DIR):  # not this heap: no heap at all, the kernel can't
                raise unsupported(f"this kernel has no dma-heaps: {HEAP_DIR} does not exist (CONFIG_DMABUF_HEAPS "
                                  "is off, or no heap driver is loaded); udmabuf, or drivers' exports wrapped "
                                  "with Buffer.from_fd, may still work") from None
            raise error(E.ENOENT, f"no dma-heap {name!r}",
                        f"available: {', '.join(self.heaps()) or 'none'}") from None
        except PermissionError as exc:
            raise error(exc.errno or E.EACCES, f"opening {path}", HEAP_PERMISSION_HINT) from None

    def allocate(self, heap_fd: int, heap_name: str, size: int) -> int:
        return _ops.heap_allocator(O_RDWR_CLOEXEC, _ALLOC_HINTS.get(heap_name, _CMA_HINTS))(heap_fd, size)

    def allocator(self, heap_name: str) -> Callable[[int, int], int]:
        # The compiled path's call has no frame at all; -1 sends the caller to ``allocate``.
        return _ops.heap_alloc_call(O_RDWR_CLOEXEC) or _ops.heap_allocator(
            O_RDWR_CLOEXEC, _ALLOC_HINTS.get(heap_name, _CMA_HINTS))

    export_sync_file = staticmethod(_ops.dma_buf_export_sync_file)
    export_call = _ops.dma_buf_export_sync_file_call()

    def _udmabuf_dev(self) -> int:
        """/dev/udmabuf, opened once and kept: opening it per buffer cost more than the
        ioctl itself."""
        dev = self._udmabuf_fd
        if dev >= 0:
            return dev
        with self._lock:
            if self._udmabuf_fd < 0:
                try:
                    self._udmabuf_fd = os.open(UDMABUF_DEV, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise unsupported(f"{UDMABUF_DEV} does not exist (kernel without CONFIG_UDMABUF)") from None
                except PermissionError as exc:
                    raise error(exc.errno or E.EACCES, f"opening {UDMABUF_DEV}", UDMABUF_PERMISSION_HINT) from None
            return self._udmabuf_fd

    def udmabuf(self, ranges: list[Range]) -> tuple[int, int, int]:
        if len(ranges) == 1:  # UDMABUF_CREATE, checked (udmabuf_one's -1 comes here)
            memfd, offset, size = ranges[0]
            return _ops.udmabuf_create(self._udmabuf_dev(), memfd, offset, size, 1, _UDMABUF_HINTS), 0, size
        fd = _ops.udmabuf_create_list(self._udmabuf_dev(), ranges, 1, _UDMABUF_HINTS)  # 1: CLOEXEC
        return fd, 0, sum(size for _memfd, _offset, size in ranges)

    def udmabuf_one(self, memfd: int, offset: int, size: int) -> int:
        # The first call binds UDMABUF_CREATE to the device fd and puts it in this
        # method's place: later calls are the ioctl's own frame and nothing else (the
        # compiled path's: no frame at all, and -1 sends the caller to ``udmabuf``).
        dev = self._udmabuf_dev()
        create = _ops.udmabuf_create_call(dev, 1) or _ops.udmabuf_creator(dev, 1, _UDMABUF_HINTS)  # 1: CLOEXEC
        self.udmabuf_one = create  # type: ignore[method-assign,assignment]
        return create(memfd, offset, size)

    def buffer_name(self, fd: int) -> str | None:
        return _fdinfo.read(fd).get("name")

    set_name = staticmethod(_ops.dma_buf_set_name)

    def buffer_info(self, fd: int, size: int) -> BufferFacts:
        fields = _fdinfo.read(fd)
        return (int(fields.get("size", size)), fields.get("exp_name", ""), fields.get("name"),
                int(fields.get("ino") or os.fstat(fd).st_ino), int(fields.get("count", 0)))

    import_sync_file = staticmethod(_ops.dma_buf_import_sync_file)

    def wait_idle(self, fd: int, write: bool, timeout: float | None, what: str) -> None:
        _wait.wait_fd(fd, select.POLLOUT if write else select.POLLIN, timeout, what)

    def implicit_fence(self, fd: int, write: bool) -> tuple[int, int, bool]:
        # POLLIN: writers done. POLLOUT: everyone done.
        return fd, select.POLLOUT if write else select.POLLIN, False

    def merge(self, fd: int, other_fd: int, name: str) -> int:
        return _ops.sync_merge(fd, other_fd, name.encode())

    def sync_file_info(self, fd: int) -> tuple[str, int, list[FenceFacts]]:
        return _ops.sync_file_info(fd)

    set_deadline = staticmethod(_ops.sync_set_deadline)

    def timeline(self) -> TimelineSource:
        from .kernel_timelines import open_timeline

        return open_timeline()
