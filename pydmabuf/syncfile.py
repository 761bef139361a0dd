"""SyncFile: an owned sync_file fd (an explicit fence)."""

from __future__ import annotations

import os
from collections.abc import Iterable

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

    @classmethod
    def from_pid(cls, pid: int, fd: int, *, backend: str | Backend | None = None) -> SyncFile:
        """Take process ``pid``'s sync-file fd ``fd`` (pidfd_getfd, Linux 5.6+). Needs
        ptrace access to ``pid``; PermissionError says what is missing."""
        from ._pidfd import wrap_taken

        return wrap_taken(lambda new: cls.from_fd(new, backend=backend), pid, fd)

    def __reduce__(self) -> tuple[object, ...]:
        # multiprocessing duplicates the fd into the receiver (see pydmabuf._pickle).
        from ._pickle import reduce_sync_file

        return reduce_sync_file(self)

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

    async def wait_async(self, timeout: float | None = None) -> None:
        """``await`` until signaled, on the running asyncio loop (other tasks keep
        running). TimeoutError after ``timeout`` seconds; ClosedError if this object is
        closed meanwhile; cancelling the task stops watching the fd."""
        from . import aio  # asyncio is imported only by programs that use it

        await aio.wait_fd(self, self.fileno(), _wait.POLLIN, False, timeout, "SyncFile.wait_async")

    def merge(self, other: SyncFile, *, name: str = "merged") -> SyncFile:
        """A new fence that signals when both this and ``other`` have."""
        if not isinstance(other, SyncFile):
            raise invalid(f"merge() needs a SyncFile, got {type(other).__name__}")
        return SyncFile(self._backend.merge(self.fileno(), other.fileno(), name), self._backend)

    @classmethod
    def merge_all(cls, fences: Iterable[SyncFile], *, name: str = "merged") -> SyncFile:
        """One new fence that signals when every one of ``fences`` has (at least one).
        Merges pairwise as a balanced tree, closing the intermediate fences, so the
        kernel's deduplication keeps every step small. The inputs stay open."""
        level = list(fences)
        if not level:
            raise invalid("merge_all() needs at least one SyncFile")
        for f in level:
            if not isinstance(f, SyncFile):
                raise invalid(f"merge_all() takes SyncFiles, got {type(f).__name__}")
        if len(level) == 1:
            return level[0].dup()
        made: list[SyncFile] = []  # intermediates, closed at the end
        try:
            while len(level) > 1:
                step = name if len(level) == 2 else "merged"
                nxt = []
                for a, b in zip(level[::2], level[1::2], strict=False):
                    nxt.append(a.merge(b, name=step))
                    made.append(nxt[-1])
                if len(level) % 2:
                    nxt.append(level[-1])
                level = nxt
            result = level[0]
            made.remove(result)
            return result
        finally:
            for f in made:
                f.close()

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
