"""Plain data returned by ``info()`` methods."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BufferInfo:
    """What the kernel (or the fallback) reports about one buffer.

    ``count`` is the kernel's file reference count: fds, mmaps and kernel importers
    together, so it is often larger than the number of fds you hold.
    """

    size: int
    exporter: str
    name: str | None
    inode: int
    count: int


@dataclass(frozen=True)
class FenceInfo:
    """One leaf fence inside a sync_file. ``status``: 1 signaled, 0 active, <0 -errno.
    ``timestamp_ns`` is CLOCK_MONOTONIC when it signaled, 0 before."""

    obj_name: str
    driver_name: str
    status: int
    timestamp_ns: int

    @property
    def signaled(self) -> bool:
        return self.status != 0


@dataclass(frozen=True)
class SyncFileInfo:
    name: str
    status: int
    fences: tuple[FenceInfo, ...]

    @property
    def signaled(self) -> bool:
        return self.status != 0
