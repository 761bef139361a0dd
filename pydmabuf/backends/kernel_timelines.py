"""Kernel fence sources for Timeline: sw_sync (debugfs) or vgem, whichever exists.

When the process that made the Timeline dies, its fences signal as the kernel
releases the source's file: vgem signals each pending fence without an error (status
1, its postclose), sw_sync with -ENOENT. That needs every copy of the fd closed, so
a forked child closes its copy at once (see _forked): otherwise a child that lives on
keeps the file, and the fences stay pending (vgem: until its own ~10 s timer signals
them, also with status 1; sw_sync: for as long as the child lives). In the child the
Timeline is forked: fence() and signal() raise ClosedError.
"""

from __future__ import annotations

import errno as E
import glob
import os
import threading

from ..errors import closed, unsupported
from ..uapi import ops as _ops
from ..uapi.ffi import lib
from ._forked import forked_error, track
from .base import TimelineSource

SW_SYNC = "/sys/kernel/debug/sync/sw_sync"
DRM_EXPORT_FLAGS = lib.DRM_CLOEXEC | lib.DRM_RDWR


class _KernelSource(TimelineSource):
    """What both kernel sources share: one fd, a lock around every use of it (so a
    close() from another thread can never let an ioctl land on a file that reused the
    number), and the fork rule (see the module docstring)."""

    forked = False  # True in a forked child

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._value = 0
        self._lock = threading.Lock()
        self._parent = 0  # in a forked child: the process that made this Timeline
        track(self)

    def _open_fd(self) -> int:
        """The fd (lock held); ClosedError if closed, or forked away."""
        fd = self._fd
        if fd < 0:
            raise forked_error(self._parent) if self.forked else closed("Timeline")
        return fd

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # vgem: closing the DRM fd signals every outstanding fence

    def _after_fork_in_child(self, parent: int) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # the parent's copy keeps the file (and the fences) alive
            self.forked = True
            self._parent = parent


class SwSyncTimeline(_KernelSource):
    kind = "sw_sync"

    def __init__(self) -> None:
        super().__init__(os.open(SW_SYNC, os.O_RDWR | os.O_CLOEXEC))

    def fence(self, point: int) -> int:
        with self._lock:
            return _ops.sw_sync_create_fence(self._open_fd(), point)

    def signal(self, point: int) -> None:
        with self._lock:
            fd = self._open_fd()
            if point > self._value:
                _ops.sw_sync_inc(fd, point - self._value)
                self._value = point


def find_vgem_card() -> str | None:
    """The primary node of vgem (dumb buffers are refused on render nodes)."""
    for path in sorted(glob.glob("/sys/devices/platform/vgem/drm/card*")):
        return "/dev/dri/" + os.path.basename(path)
    return None


class VgemTimeline(_KernelSource):
    """One vgem dumb buffer per fence: vgem allows a single pending write fence per
    buffer. The fence outlives the buffer (the sync_file holds it), so the buffer is
    released right after the export."""

    kind = "vgem"

    def __init__(self, card: str) -> None:
        fd = os.open(card, os.O_RDWR | os.O_CLOEXEC)
        try:
            driver = _ops.drm_driver_name(fd)
            if driver != "vgem":  # driver ioctl numbers collide across drivers
                raise unsupported(f"{card} is driver {driver!r}, not vgem")
        except BaseException:
            os.close(fd)
            raise
        self._pending: list[tuple[int, int]] = []  # (point, vgem fence id)
        super().__init__(fd)

    def fence(self, point: int) -> int:
        with self._lock:
            self._open_fd()
            handle, _size = _ops.drm_create_dumb(self._fd, 1, 1, 8)
            try:
                fence_id = None
                if point > self._value:
                    fence_id = _ops.vgem_fence_attach(self._fd, handle, lib.VGEM_FENCE_WRITE)
                dmabuf = _ops.drm_prime_handle_to_fd(self._fd, handle, DRM_EXPORT_FLAGS)
                try:
                    sync_fd = _ops.dma_buf_export_sync_file(dmabuf, lib.DMA_BUF_SYNC_READ)
                finally:
                    os.close(dmabuf)
            finally:
                _ops.drm_gem_close(self._fd, handle)
            if fence_id is not None:
                self._pending.append((point, fence_id))
            return sync_fd

    def signal(self, point: int) -> None:
        with self._lock:
            self._open_fd()
            self._value = max(self._value, point)
            due = [f for f in self._pending if f[0] <= self._value]
            self._pending = [f for f in self._pending if f[0] > self._value]
            for _point, fence_id in due:
                try:
                    _ops.vgem_fence_signal(self._fd, fence_id)
                except OSError as exc:
                    if exc.errno != E.ETIMEDOUT:  # vgem's own ~10 s expiry already fired
                        raise

    def _after_fork_in_child(self, parent: int) -> None:
        super()._after_fork_in_child(parent)
        self._pending = []


def open_timeline() -> TimelineSource:
    if os.path.exists(SW_SYNC):
        return SwSyncTimeline()
    card = find_vgem_card()
    if card is not None:
        return VgemTimeline(card)
    raise unsupported(
        "no kernel fence source: needs sw_sync (CONFIG_SW_SYNC + debugfs) or vgem "
        "(modprobe vgem)"
    )
