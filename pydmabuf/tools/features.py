"""What this machine and this user can do with dma-bufs, for ``pydmabuf info``.

Every feature probe tries the real operation (an ioctl on a real dma-buf or sync
file, a real fence from sw_sync or vgem) and never guesses from the kernel version.
A probe that could not run (nothing to try it on) says so with ``supported=None``.
Each permission problem comes with the usual fix.
"""

from __future__ import annotations

import contextlib
import errno as E
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..backends.base import TimelineSource
from ..backends.kernel import HEAP_DIR, UDMABUF_DEV
from ..backends.kernel_timelines import (
    DRM_EXPORT_FLAGS,
    SW_SYNC,
    SwSyncTimeline,
    VgemTimeline,
    find_vgem_card,
)
from ..errors import HEAP_PERMISSION_HINT, UDMABUF_PERMISSION_HINT
from ..uapi import memfd as _memfd
from ..uapi import ops as _ops

UDMABUF_PARAMS = "/sys/module/udmabuf/parameters"
DEBUGFS_HINT = "mount debugfs (mount -t debugfs none /sys/kernel/debug); it is root-only"


@dataclass
class Device:
    """A device node: can this user open it, and if not, why and what to do."""

    name: str
    path: str
    usable: bool
    problem: str | None = None
    fix: str | None = None


@dataclass
class Feature:
    """``supported``: True/False when tried, None when there was nothing to try it on."""

    name: str
    supported: bool | None
    detail: str
    fix: str | None = None


@dataclass
class Report:
    backend: str
    compiled: bool  # pydmabuf.compiled: the hot calls in C (True) or pure Python
    kernel: str
    machine: str
    heaps: list[Device] = field(default_factory=list)  # the nodes in /dev/dma_heap, whatever the backend
    backend_heaps: list[str] = field(default_factory=list)  # pydmabuf.heaps(): what the active backend offers
    udmabuf: Device | None = None  # None: no /dev/udmabuf
    udmabuf_size_limit_mb: int | None = None
    udmabuf_list_limit: int | None = None
    features: list[Feature] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _device(name: str, path: str, flags: int, permission_fix: str) -> Device:
    try:
        os.close(os.open(path, flags | os.O_CLOEXEC))
    except OSError as exc:
        denied = exc.errno in (E.EACCES, E.EPERM)
        return Device(name, path, False, f"cannot open {path}: {exc.strerror}", permission_fix if denied else None)
    return Device(name, path, True)


def probe() -> Report:
    import pydmabuf

    try:
        backend = pydmabuf.backend
    except OSError as exc:  # a bad PYDMABUF_BACKEND: report it, do not die
        backend = f"unusable ({exc})"
    from ..uapi.fast import compiled

    report = Report(backend=backend, compiled=compiled, kernel=platform.release(), machine=platform.machine())
    with contextlib.suppress(OSError):  # an unusable backend offers none; the backend line says why
        report.backend_heaps = pydmabuf.heaps()
    names = sorted(os.listdir(HEAP_DIR)) if os.path.isdir(HEAP_DIR) else []
    report.heaps = [_device(n, os.path.join(HEAP_DIR, n), os.O_RDONLY, HEAP_PERMISSION_HINT) for n in names]
    if os.path.exists(UDMABUF_DEV):
        report.udmabuf = _device("udmabuf", UDMABUF_DEV, os.O_RDWR, UDMABUF_PERMISSION_HINT)
    report.udmabuf_size_limit_mb = _read_int(f"{UDMABUF_PARAMS}/size_limit_mb")
    report.udmabuf_list_limit = _read_int(f"{UDMABUF_PARAMS}/list_limit")
    report.features = [*_sync_file_features(report), _sw_sync(), _vgem()]
    return report


def _kernel_buffer(report: Report) -> tuple[int, str] | None:
    """A real one-page dma-buf fd from whatever this user may open, and its source."""
    for heap in sorted(report.heaps, key=lambda h: h.name != "system"):  # system first
        if heap.usable:
            fd = os.open(heap.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return _ops.heap_alloc(fd, 4096, os.O_RDWR | os.O_CLOEXEC), f"heap {heap.name}"
            except OSError:
                continue  # e.g. an exhausted CMA heap: try the next source
            finally:
                os.close(fd)
    if report.udmabuf is not None and report.udmabuf.usable:
        memfd = _memfd.sealed_memfd("pydmabuf-probe", 4096, _memfd.F_SEAL_SHRINK)
        try:
            dev = os.open(UDMABUF_DEV, os.O_RDWR | os.O_CLOEXEC)
            try:
                return _ops.udmabuf_create_list(dev, [(memfd, 0, 4096)], 1), "udmabuf"  # CLOEXEC
            finally:
                os.close(dev)
        finally:
            os.close(memfd)
    return _vgem_buffer()


def _vgem_buffer() -> tuple[int, str] | None:
    """A PRIME export of a vgem dumb buffer: a dma-buf where there is no allocator node
    (GPU servers, arm64 boards), as a driver's export would be."""
    card = find_vgem_card()
    if card is None:
        return None
    try:
        drm = os.open(card, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _ops.drm_driver_name(drm) != "vgem":  # driver ioctl numbers collide
            return None
        handle, _size = _ops.drm_create_dumb(drm, 64, 16, 32)
        try:
            return _ops.drm_prime_handle_to_fd(drm, handle, DRM_EXPORT_FLAGS), f"vgem ({card})"
        finally:
            _ops.drm_gem_close(drm, handle)
    except OSError:
        return None
    finally:
        os.close(drm)


def _try(name: str, what: str, fn: Callable[[], None]) -> Feature:
    """Run ``fn``; ENOTTY (unknown ioctl) and friends mean the kernel lacks it."""
    try:
        fn()
    except OSError as exc:
        if exc.errno in (E.ENOTTY, E.EOPNOTSUPP, E.ENOSYS):
            return Feature(name, False, f"{what}: {os.strerror(exc.errno)} (kernel too old)")
        return Feature(name, False, f"{what}: {exc}")
    return Feature(name, True, what)


def _sync_file_features(report: Report) -> list[Feature]:
    names = ("export_sync_file", "import_sync_file", "set_deadline")
    try:
        found = _kernel_buffer(report)
    except OSError as exc:
        found = None
        reason = f"could not create a dma-buf to probe with: {exc}"
    else:
        reason = "no dma-heap, udmabuf or vgem this user can open, so no dma-buf to probe with"
    if found is None:
        denied = [d for d in [*report.heaps, report.udmabuf] if d is not None and d.fix]
        fix = "give this user access to a dma-heap or /dev/udmabuf (see above)" if denied else None
        return [Feature(n, None, reason, fix) for n in names]
    buf, source = found
    sync: list[int] = []
    try:

        def export() -> None:
            sync.append(_ops.dma_buf_export_sync_file(buf, 1))  # DMA_BUF_SYNC_READ

        features = [_try(names[0], f"DMA_BUF_IOCTL_EXPORT_SYNC_FILE on a {source} buffer", export)]
        if not sync:
            return [*features, *(Feature(n, None, "needs a sync_file from EXPORT_SYNC_FILE") for n in names[1:])]
        features.append(
            _try(names[1], "DMA_BUF_IOCTL_IMPORT_SYNC_FILE", lambda: _ops.dma_buf_import_sync_file(buf, sync[0], 1))
        )
        features.append(_try(names[2], "SYNC_IOC_SET_DEADLINE", lambda: _ops.sync_set_deadline(sync[0], 0)))
        return features
    finally:
        for fd in (*sync, buf):
            os.close(fd)


def _one_fence(open_source: Callable[[], TimelineSource]) -> Callable[[], None]:
    """A probe that makes one fence on a new timeline, signals it and cleans up."""

    def probe() -> None:
        timeline = open_source()
        try:
            os.close(timeline.fence(1))
            timeline.signal(1)
        finally:
            timeline.close()

    return probe


def _sw_sync() -> Feature:
    if not os.path.exists(SW_SYNC):
        if os.path.ismount("/sys/kernel/debug"):
            return Feature("sw_sync", False, f"{SW_SYNC} absent: kernel without CONFIG_SW_SYNC")
        return Feature("sw_sync", False, f"{SW_SYNC} absent: debugfs not mounted (or no access)", DEBUGFS_HINT)

    feature = _try("sw_sync", f"a fence from {SW_SYNC}", _one_fence(SwSyncTimeline))
    if not feature.supported and "ermission" in feature.detail:
        feature.fix = "debugfs is root-only: run as root"
    return feature


def _vgem() -> Feature:
    card = find_vgem_card()
    if card is None:
        return Feature("vgem", False, "no vgem device", "modprobe vgem (CONFIG_DRM_VGEM)")

    feature = _try("vgem", f"a fence from vgem on {card}", _one_fence(lambda: VgemTimeline(card)))
    if not feature.supported and "ermission" in feature.detail:
        feature.fix = f"add the user to the group owning {card} (usually 'video')"
    return feature
