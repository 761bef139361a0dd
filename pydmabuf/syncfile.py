"""SyncFile: an owned sync_file fd (an explicit fence)."""

from __future__ import annotations

import os

from . import _wait
from ._fd import FdHolder, as_fd, dup_cloexec
from .backends import Backend, get_backend
from .errors import invalid
from .info import SyncFileInfo


class SyncFile(FdHolder):
    """An explicit fence. Poll it (``fileno()``) or ``wait()``; it signals once."""

    __slots__ = ("_backend",)
    _kind = "SyncFile"

    def __init__(self, fd: int, backend: Backend) -> None:
        self._fd = fd
        self._backend = backend

    @classmethod
    def from_fd(cls, fd: int, *, own: bool = True, backend: str | Backend | None = None) -> SyncFile:
        """Wrap an existing sync-file fd. ``own=False`` dups it and leaves yours alone."""
        fd = as_fd(fd)
        b = get_backend(backend)
        b.check_sync_file(fd)
        return cls(fd if own else dup_cloexec(fd), b)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def signaled(self) -> bool:
        """True once the fence has signaled (never blocks)."""
        return _wait.ready(self.fileno(), _wait.POLLIN)

    def wait(self, timeout: float | None = None) -> None:
        """Block until signaled; raise TimeoutError after ``timeout`` seconds.
        The deadline holds across signal interruptions."""
        _wait.wait_fd(self.fileno(), _wait.POLLIN, timeout, "SyncFile.wait")

    def merge(self, other: SyncFile, *, name: str = "merged") -> SyncFile:
        """A new fence that signals when both this and ``other`` have."""
        if not isinstance(other, SyncFile):
            raise invalid(f"merge() needs a SyncFile, got {type(other).__name__}")
        return SyncFile(self._backend.merge(self.fileno(), other.fileno(), name), self._backend)

    def info(self) -> SyncFileInfo:
        name, status, fences = self._backend.sync_file_info(self.fileno())
        return SyncFileInfo(name, status, tuple(fences))

    def set_deadline(self, deadline_ns: int) -> None:
        """Hint the fence's driver: wanted by CLOCK_MONOTONIC ``deadline_ns`` (Linux 6.8+;
        UnsupportedError before)."""
        if deadline_ns < 0:
            raise invalid("deadline_ns must be >= 0")
        self._backend.set_deadline(self.fileno(), deadline_ns)

    def dup(self) -> SyncFile:
        return SyncFile(dup_cloexec(self.fileno()), self._backend)

    def __repr__(self) -> str:
        if self._fd < 0:
            return "<SyncFile closed>"
        try:
            info = self.info()
            state = "signaled" if info.signaled else "pending"
            fences = ", ".join(f"{f.driver_name}/{f.obj_name}" for f in info.fences)
            detail = f" name={info.name!r} {state} fences=[{fences}]"
        except OSError as exc:
            detail = f" (info failed: {os.strerror(exc.errno or 0)})"
        return f"<SyncFile fd={self._fd}{detail} backend={self._backend.name}>"
