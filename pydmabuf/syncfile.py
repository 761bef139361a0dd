"""SyncFile: an owned sync_file fd (an explicit fence)."""

from __future__ import annotations

import errno as E
import os
import select
from collections.abc import Callable, Iterable

from ._fd import (
    DupFdLike,
    FdHolder,
    FdLike,
    as_fd,
    dup_cloexec,
    for_multiprocessing,
    hold,
    pickled_fd,
    reduce_or_refuse,
    release,
    unpickled_fd,
)
from .backends import Backend, fence_backend, get_backend
from .errors import Error, check_name, closed, error, invalid
from .info import FenceInfo, SyncFileInfo
from .uapi import fast as _fast
from .uapi import wait as _wait

_new = object.__new__
_ready = _wait.ready
_POLLIN = _wait.POLLIN


def _rebuild_sync_file(dupfd: DupFdLike, backend: str) -> SyncFile:
    fd = unpickled_fd(dupfd)
    try:  # the fd's kind, not the pickle, says which semantics apply
        found = fence_backend(fd)
    except BaseException:
        os.close(fd)
        raise
    return new_sync_file(fd, found)


def _expected(fd: int, new: int, backend: str | Backend | None) -> Backend:
    """The backend for fence ``new`` (``fd`` or the dup of it), checked against the
    one the caller expects; errors name the caller's number ``fd``."""
    try:
        found = fence_backend(new)
    except Error:
        if new != fd:
            fence_backend(fd)  # the same complaint, naming the caller's number
        raise
    if backend is not None and get_backend(backend) is not found:
        raise invalid(f"fd {fd} is a {found.name} fence, not a {get_backend(backend).name} one")
    return found


def _new_sync_file_pure(fd: int, backend: Backend) -> SyncFile:
    """A SyncFile owning ``fd``, filled without an ``__init__`` frame (hot paths)."""
    fence = _new(SyncFile)
    fence._fd = fd
    fence._cell = [fd]
    fence._backend = backend
    return fence


class SyncFile(FdHolder):
    """An explicit fence. Poll it (``fileno()``) or ``wait()``; it signals once."""

    __slots__ = ("_backend", "_poller")
    _poller: Callable[[int], list[tuple[int, int]]]
    _kind = "SyncFile"

    def __init__(self, fd: int, backend: Backend) -> None:
        self._fd = fd
        self._cell = [fd]
        self._backend = backend

    @classmethod
    def from_fd(cls, fd: FdLike, *, own: bool = True, backend: str | Backend | None = None) -> SyncFile:
        """Wrap an existing fence fd: a sync_file (kernel semantics) or a fallback fence.
        ``backend`` only double-checks which one you expect. ``own=False`` dups it and
        leaves yours alone."""
        fd = as_fd(fd)
        if own:
            return new_sync_file(fd, _expected(fd, fd, backend))
        # Dup first, then look at the dup: a number that the caller's other threads close
        # and reuse meanwhile can't pass one file's check and hand over another.
        try:
            new = dup_cloexec(fd)
        except OSError as exc:
            fence_backend(fd)  # the library's error for what fd is, if it is the cause
            raise error(exc.errno or E.EBADF, f"dup of fd {fd}") from None
        try:
            return new_sync_file(new, _expected(fd, new, backend))
        except BaseException:
            os.close(new)
            raise

    @classmethod
    def from_pid(cls, pid: int, fd: int, *, backend: str | Backend | None = None) -> SyncFile:
        """Take process ``pid``'s sync-file fd ``fd`` (pidfd_getfd, Linux 5.6+). Needs
        ptrace access to ``pid``; PermissionError says what is missing."""
        from .uapi.pidfd import wrap_taken

        return wrap_taken(lambda new: cls.from_fd(new, backend=backend), pid, fd)

    def __reduce__(self) -> tuple[object, ...]:
        # Only multiprocessing pickles a SyncFile (_reduce_sync_file, registered below;
        # see the pickling notes in _fd): anything else would pin a duplicate fd.
        return reduce_or_refuse(self)

    @property
    def backend(self) -> str:
        """``"kernel"`` (a sync_file) or ``"fallback"`` (a socketpair end); readable after close."""
        return self._backend.name

    def _signaled_pure(self) -> bool:
        """True once the fence has signaled (never blocks)."""
        # No hold: poll only reads, so poll first and then check the object is still
        # open. close() marks it closed before it releases the number, so if it is
        # open now, the number was still ours when polled; if not, the answer is void.
        try:  # a poll set registered once, as a hand-written loop would keep one
            ready = self._poller(0)
        except AttributeError:
            fd = self.fileno()
            poller = select.poll()
            poller.register(fd, _POLLIN)
            self._poller = poller.poll
            ready = self._poller(0)
        except RuntimeError:  # another thread is polling the same set right now
            ready = [(0, _POLLIN)] if _ready(self.fileno(), _POLLIN) else []
        if self._fd < 0:
            raise closed("SyncFile")
        return ready != []  # cheaper than bool(): no global lookup

    # The compiled path's base type does the same poll in C (no poll set to keep).
    signaled = property(_signaled_pure) if _fast.readable is None else _fast.readable

    def wait(self, timeout: float | None = None) -> None:
        """Block until signaled; raise TimeoutError after ``timeout`` seconds.
        The deadline holds across signal interruptions. A close() from another thread
        meanwhile takes effect when the wait returns."""
        fd = hold(self)
        try:
            _wait.wait_fd(fd, _POLLIN, timeout, "SyncFile.wait")
        finally:
            release(self)

    async def wait_async(self, timeout: float | None = None) -> None:
        """``await`` until signaled, on the running asyncio loop (other tasks keep
        running). TimeoutError after ``timeout`` seconds; ClosedError if this object is
        closed meanwhile; cancelling the task stops watching the fd. Adds no fd: the
        loop watches this one, once for all its waiters (see :mod:`pydmabuf.aio`,
        which also waits for many: ``wait_any``, ``as_completed``)."""
        from ._aio_watch import sync_file_target, wait_object  # asyncio: only for programs that use it

        await wait_object(self, sync_file_target, timeout, "SyncFile.wait_async")

    def merge(self, other: SyncFile, *, name: str = "merged") -> SyncFile:
        """A new fence that signals when both this and ``other`` have."""
        if not isinstance(other, SyncFile):
            raise invalid(f"merge() needs a SyncFile, got {type(other).__name__}")
        check_name(name)
        if other._backend is not self._backend:
            raise invalid(f"cannot merge a {self._backend.name} fence with a {other._backend.name} one")
        fd = hold(self)
        try:
            other_fd = hold(other)
            try:
                return new_sync_file(self._backend.merge(fd, other_fd, name), self._backend)
            finally:
                release(other)
        finally:
            release(self)

    @classmethod
    def merge_all(cls, fences: Iterable[SyncFile], *, name: str = "merged") -> SyncFile:
        """One new fence that signals when every one of ``fences`` has (at least one).
        Merges pairwise as a balanced tree, closing the intermediate fences, so the
        kernel's deduplication keeps every step small. The inputs stay open."""
        check_name(name)
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
        """Name, status (1 signaled, 0 active, <0 -errno) and leaf fences (SYNC_IOC_FILE_INFO,
        Linux 4.7+); the fallback reports one fence named ``"pydmabuf-fallback"``. ClosedError if closed."""
        fd = hold(self)
        try:
            name, status, fences = self._backend.sync_file_info(fd)
        finally:
            release(self)
        return SyncFileInfo(name, status, tuple(FenceInfo(*f) for f in fences))

    def set_deadline(self, deadline_ns: int) -> None:
        """Hint the fence's driver: wanted by CLOCK_MONOTONIC ``deadline_ns`` (Linux 6.8+;
        UnsupportedError before)."""
        if not isinstance(deadline_ns, int) or isinstance(deadline_ns, bool):
            raise TypeError(f"deadline_ns must be an int, got {type(deadline_ns).__name__}")
        if not 0 <= deadline_ns < 2**64:
            raise invalid(f"deadline_ns must be in 0..2**64-1, got {deadline_ns}")
        fd = hold(self)
        try:
            self._backend.set_deadline(fd, deadline_ns)
        finally:
            release(self)

    def dup(self) -> SyncFile:
        """A second SyncFile on a close-on-exec dup of the fd (the same fence); each closes on
        its own. ClosedError if closed; TooManyOpenFilesError at the fd limit."""
        fd = hold(self)
        try:
            try:
                new = dup_cloexec(fd)
            except OSError as exc:  # EMFILE above all: the library's error, naming the limit
                raise error(exc.errno or E.EBADF, "SyncFile.dup") from None
            return new_sync_file(new, self._backend)
        finally:
            release(self)

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


# new_sync_file(fd, backend): on the compiled path one C call makes and fills it.
new_sync_file: Callable[[int, Backend], SyncFile] = _new_sync_file_pure if _fast.holder_factory is None else \
    _fast.holder_factory(SyncFile, ("_backend",), ())


def _reduce_sync_file(fence: SyncFile) -> tuple[object, ...]:
    """multiprocessing's reducer: the fd travels as a ``DupFd`` (see _fd.pickled_fd)."""
    return _rebuild_sync_file, (pickled_fd(fence), fence._backend.name)


for_multiprocessing(SyncFile, _reduce_sync_file)
