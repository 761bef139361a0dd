"""Kernel fence sources for Timeline: sw_sync (debugfs) or vgem, whichever exists."""

from __future__ import annotations

import errno as E
import glob
import os
import threading

from ..errors import closed, unsupported
from ..uapi import ops as _ops
from ..uapi.ffi import lib
from .base import TimelineSource

SW_SYNC = "/sys/kernel/debug/sync/sw_sync"
DRM_EXPORT_FLAGS = lib.DRM_CLOEXEC | lib.DRM_RDWR


class SwSyncTimeline(TimelineSource):
    kind = "sw_sync"

    def __init__(self) -> None:
        self._fd = os.open(SW_SYNC, os.O_RDWR | os.O_CLOEXEC)
        self._value = 0
        self._lock = threading.Lock()

    # Every use of the fd and close() take the lock, so a close() from another thread
    # can never let an ioctl land on a file that reused the number.
    def fence(self, point: int) -> int:
        with self._lock:
            return _ops.sw_sync_create_fence(_open_fd(self._fd), point)

    def signal(self, point: int) -> None:
        with self._lock:
            if point > self._value:
                _ops.sw_sync_inc(_open_fd(self._fd), point - self._value)
                self._value = point

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _open_fd(fd: int) -> int:
    if fd < 0:
        raise closed("Timeline")
    return fd


def find_vgem_card() -> str | None:
    """The primary node of vgem (dumb buffers are refused on render nodes)."""
    for path in sorted(glob.glob("/sys/devices/platform/vgem/drm/card*")):
        return "/dev/dri/" + os.path.basename(path)
    return None


class VgemTimeline(TimelineSource):
    """One vgem dumb buffer per fence: vgem allows a single pending write fence per
    buffer. The fence outlives the buffer (the sync_file holds it), so the buffer is
    released right after the export."""

    kind = "vgem"

    def __init__(self, card: str) -> None:
        self._fd = os.open(card, os.O_RDWR | os.O_CLOEXEC)
        try:
            driver = _ops.drm_driver_name(self._fd)
            if driver != "vgem":  # driver ioctl numbers collide across drivers
                raise unsupported(f"{card} is driver {driver!r}, not vgem")
        except BaseException:
            os.close(self._fd)
            raise
        self._value = 0
        self._pending: list[tuple[int, int]] = []  # (point, vgem fence id)
        self._lock = threading.Lock()

    def fence(self, point: int) -> int:
        with self._lock:
            _open_fd(self._fd)
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
            _open_fd(self._fd)
            self._value = max(self._value, point)
            due = [f for f in self._pending if f[0] <= self._value]
            self._pending = [f for f in self._pending if f[0] > self._value]
            for _point, fence_id in due:
                try:
                    _ops.vgem_fence_signal(self._fd, fence_id)
                except OSError as exc:
                    if exc.errno != E.ETIMEDOUT:  # vgem's own ~10 s expiry already fired
                        raise

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # closing the DRM fd signals every outstanding fence


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
