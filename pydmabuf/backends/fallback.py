"""Pure-Python emulation: memfd buffers and socketpair fences.

Buffers are memfds, so they can be mapped, passed to other processes and mapped
there. A fence is one end of a socketpair that becomes readable (POLLIN) when
signaled, or when the process that could signal it dies (see fallback_fences).
Kernel validation rules (udmabuf seals and alignment, name length, sync flags) are
applied here too so that code tested on the fallback behaves the same on a kernel.
What cannot be emulated is listed in docs/backends.md ("The fallback, and how it differs").
"""

from __future__ import annotations

import errno as E
import os
import select
import threading
from collections.abc import Callable

from ..errors import error, timed_out, unsupported
from ..uapi import memfd as _memfd
from ..uapi import wait as _wait
from ..uapi.ops import SYNC_END, SYNC_READ, SYNC_WRITE, cached_identity, dup_cloexec
from . import fallback_fences as fences
from ._reactor import reactor
from .base import Backend, BufferFacts, FenceFacts, Range, TimelineSource
from .fallback_timelines import FallbackTimeline

EXPORTER = "pydmabuf-fallback"
HEAPS = ("system",)
SIZE_LIMIT = 64 << 20  # udmabuf's default size_limit_mb
LIST_LIMIT = 1024  # udmabuf's default list_limit
NAME_XATTR = "user.pydmabuf.name"
OWN_NAMES = 4096  # names set in this process, remembered here (see set_name)
_BUFFER_MODE = 0o644  # see allocate
_READ, _WRITE, _END = SYNC_READ, SYNC_WRITE, SYNC_END


def merged_fence(inputs: list[int]) -> int:
    """A new fence that signals once every fence in ``inputs`` has (kernel merge
    semantics: already-signaled inputs are dropped)."""
    pending = [fd for fd in inputs if not fences.is_signaled(fd)]
    if not pending:
        return fences.signaled_fence()
    if len(pending) == 1:
        return _dup(pending[0], "merging fences")  # the same fence: no reactor, no extra fd
    out, signal_end = fences.new_fence()
    try:
        reactor.signal_when_all(pending, signal_end)
    except BaseException:
        os.close(out)
        os.close(signal_end)
        raise
    return out


def _dup(fd: int, what: str) -> int:
    try:
        return dup_cloexec(fd)
    except OSError as exc:  # EMFILE above all: the library's error, naming the fd limit
        raise error(exc.errno or E.EBADF, what) from None


class _Fence:
    """A private dup of a fence imported into a buffer. ``users`` counts the waits
    polling it right now, so pruning never closes a number a waiter is using."""

    __slots__ = ("fd", "write", "users", "done")

    def __init__(self, fd: int, write: bool) -> None:
        self.fd = fd
        self.write = write
        self.users = 0
        self.done = False


class _Implicit:
    """Per-buffer state the kernel keeps in the dma-buf's reservation object. It
    exists only while a fence is attached or a CPU-access bracket is open."""

    __slots__ = ("fences", "depth", "watches")

    def __init__(self) -> None:
        self.fences: list[_Fence] = []
        self.depth = 0  # open CPU-access brackets
        self.watches: list[object] = []  # the reactor's prune watches, cancelled by forget


# --- the backend ------------------------------------------------------------------

class FallbackBackend(Backend):
    name = "fallback"
    exporter = EXPORTER

    def __init__(self) -> None:
        # ioctl-shaped, as the kernel's: the "argument" is the flags, the result (flags, fd).
        self.export_call = (self._export_as_ioctl, 0, {flags: flags for flags in (1, 2, 3)}, tuple)
        self._lock = threading.Lock()
        self._state: dict[tuple[int, int], _Implicit] = {}
        self._names: dict[tuple[int, int], str] = {}  # where xattrs are unsupported
        # Names set in this process (oldest first, at most OWN_NAMES): buffer_name reads
        # these before the file, so no other process holding the memfd renames it here.
        self._own: dict[tuple[int, int], str] = {}

    # buffers ---------------------------------------------------------------------
    def heaps(self) -> list[str]:
        return list(HEAPS)

    def open_heap(self, name: str) -> int:
        if name not in HEAPS:
            raise error(E.ENOENT, f"no fallback heap {name!r}", f"available: {', '.join(HEAPS)}")
        # A placeholder fd so Heap behaves identically (fileno, close) on both backends.
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def allocate(self, heap_fd: int, heap_name: str, size: int) -> int:
        # Fixed size like a dma-buf: neither shrink nor grow.
        fd = _memfd.sealed_memfd(f"pydmabuf:{heap_name}", _memfd.page_round(size),
                                 _memfd.F_SEAL_SHRINK | _memfd.F_SEAL_GROW)
        try:
            # Writable by its owner only. A memfd is born 0777, and setting xattrs (the
            # name) or reopening /proc/self/fd/N read-write needs only write permission on
            # the inode, whatever the fd's mode. So a process of another uid that was
            # handed a read-only fd (a channel's consumer) can read the buffer and its
            # name, and change nothing: no name, no xattr, no read-write reopen, hence no
            # seals (F_ADD_SEALS needs a writable fd).
            os.fchmod(fd, _BUFFER_MODE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    udmabuf_keeps_offset = True  # the "udmabuf" is the memfd itself

    def udmabuf(self, ranges: list[Range]) -> tuple[int, int, int]:
        if not ranges or len(ranges) > LIST_LIMIT:
            raise error(E.EINVAL, "UDMABUF_CREATE_LIST", f"1 to {LIST_LIMIT} ranges")
        total = 0
        for memfd, offset, size in ranges:
            self._check_udmabuf_range(memfd, offset, size)
            total += size
        if total > SIZE_LIMIT:
            raise error(E.EINVAL, "UDMABUF_CREATE_LIST",
                        f"total {total} bytes exceeds the udmabuf size limit {SIZE_LIMIT}")
        first, offset, _ = ranges[0]
        inode = os.fstat(first).st_ino
        end = offset
        for memfd, start, size in ranges:
            if os.fstat(memfd).st_ino != inode or start != end:
                raise unsupported("the fallback backend can only join contiguous ranges of one "
                                  "memfd; several memfds need the kernel's udmabuf")
            end = start + size
        return _dup(first, "udmabuf"), offset, total

    @staticmethod
    def _check_udmabuf_range(memfd: int, offset: int, size: int) -> None:
        # The kernel's checks, in its order, with its errno values (shared with the
        # kernel backend's diagnosis of a refusal).
        problem = _memfd.udmabuf_problem(memfd, offset, size)
        if problem is not None:
            raise error(problem[0], "UDMABUF_CREATE", problem[1])

    def _key(self, fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def buffer_name(self, fd: int) -> str | None:
        if self._own:
            own = self._own.get(self._key(fd))
            if own is not None:  # named here: what this process said, whatever the file says
                return own
        try:
            return os.getxattr(fd, NAME_XATTR).decode("utf-8", "replace")
        except OSError as exc:
            if exc.errno == E.ENODATA:
                return None
            return self._names.get(self._key(fd))

    def set_name(self, fd: int, name: bytes) -> None:
        key = self._key(fd)
        text = name.decode("utf-8", "replace")
        with self._lock:
            own = self._own
            own.pop(key, None)
            if len(own) >= OWN_NAMES:  # bounded: the oldest falls back to the file's xattr
                del own[next(iter(own))]
            own[key] = text
        try:
            os.setxattr(fd, NAME_XATTR, name)  # visible to every process holding the memfd
        except OSError as exc:
            if exc.errno in (E.ENOTSUP, E.EOPNOTSUPP):  # no tmpfs user xattrs: name travels in headers
                self._names[key] = text
            # EACCES/EPERM: another uid's buffer (see allocate): the name stays in this process.

    def local_name(self, fd: int) -> bytes:
        if not self._names:
            return b""
        name = self._names.get(self._key(fd))
        return name.encode() if name else b""

    def note_name(self, fd: int, name: bytes) -> None:
        # Only where this kernel cannot keep names on the file (tmpfs user xattrs came in
        # Linux 6.6): elsewhere a header name is a peer's claim, not the file's name.
        try:
            os.getxattr(fd, NAME_XATTR)
        except OSError as exc:
            if exc.errno in (E.ENOTSUP, E.EOPNOTSUPP):
                self._names[self._key(fd)] = name.decode("utf-8", "replace")

    def buffer_info(self, fd: int, size: int) -> BufferFacts:
        st = os.fstat(fd)
        return size, EXPORTER, self.buffer_name(fd), st.st_ino, _own_references(st.st_ino)

    # CPU access and implicit fences -------------------------------------------------
    def _release_state(self, key: tuple[int, int], state: _Implicit) -> None:
        """Forget a buffer's state once it is back to what a new buffer has (lock held)."""
        if not state.fences and state.depth == 0 and self._state.get(key) is state:
            del self._state[key]

    def _pending(self, state: _Implicit, write: bool) -> list[_Fence]:
        """Pending fences a reader (write=False) or writer must wait for; closes the
        private fds of signaled ones nobody is polling (lock held)."""
        alive = []
        for f in state.fences:
            if not f.done and fences.is_signaled(f.fd):
                f.done = True
            if f.done and f.users == 0:
                os.close(f.fd)
                continue
            alive.append(f)
        state.fences = alive
        return [f for f in alive if not f.done and (write or f.write)]

    def _wait_fences(self, fd: int, write: bool, until: float | None, what: str) -> None:
        """Wait for the buffer's implicit fences on their private fds: no new fd."""
        key = self._key(fd)
        with self._lock:
            state = self._state.get(key)
            if state is None:
                return
            waits = self._pending(state, write)
            for f in waits:
                f.users += 1
        try:
            poller = select.poll()
            for f in waits:
                poller.register(f.fd, select.POLLIN)
            left = len(waits)
            while left:
                ready = poller.poll(_wait.remaining_ms(until))
                for ready_fd, _events in ready:
                    poller.unregister(ready_fd)
                    left -= 1
                if left and _wait.expired(until):
                    raise timed_out(what)
        finally:
            with self._lock:
                for f in waits:
                    f.users -= 1
                self._pending(state, True)
                self._release_state(key, state)

    def wait_idle(self, fd: int, write: bool, timeout: float | None, what: str) -> None:
        self._wait_fences(fd, write, _wait.deadline(timeout, what), what)

    def sync_call(self, flags: int) -> tuple[Callable[[int, int, object], object], int, object, object]:
        return self._sync_as_ioctl, 0, flags, flags | _END

    def _sync_as_ioctl(self, fd: int, _request: int, flags: object) -> bool:
        assert isinstance(flags, int)
        self.sync(fd, flags)
        return True  # done (a bracket retries a false result through ``sync``)

    def sync(self, fd: int, flags: int) -> None:
        if flags & ~(_READ | _WRITE | _END) or not flags & (_READ | _WRITE):
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_SYNC flags {flags:#x}")
        key = self._key(fd)
        if flags & _END:
            with self._lock:
                state = self._state.get(key)
                if state is None or state.depth == 0:
                    raise error(E.EINVAL, "DMA_BUF_IOCTL_SYNC", "END without a matching START")
                state.depth -= 1
                self._release_state(key, state)
            return
        # START blocks on implicit fences with no limit, as in the kernel.
        self._wait_fences(fd, bool(flags & _WRITE), None, "DMA_BUF_IOCTL_SYNC")
        with self._lock:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = _Implicit()
            state.depth += 1

    def export_sync_file(self, fd: int, flags: int) -> int:
        if not flags or flags & ~(_READ | _WRITE):
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_EXPORT_SYNC_FILE flags {flags:#x}")
        key = self._key(fd)
        with self._lock:
            state = self._state.get(key)
            if state is None:
                return fences.signaled_fence()
            # merged_fence dups what it keeps, so the private fds may go later.
            out = merged_fence([f.fd for f in self._pending(state, bool(flags & _WRITE))])
            self._release_state(key, state)
            return out

    def _export_as_ioctl(self, fd: int, _request: int, flags: object) -> tuple[int, int]:
        assert isinstance(flags, int)
        return flags, self.export_sync_file(fd, flags)

    def import_sync_file(self, fd: int, sync_fd: int, flags: int) -> None:
        if not flags or flags & ~(_READ | _WRITE):
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_IMPORT_SYNC_FILE flags {flags:#x}")
        if not fences.is_fence(sync_fd):
            raise error(E.EINVAL, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE", "not a sync file")
        if fences.is_signaled(sync_fd):
            return
        key = self._key(fd)
        with self._lock:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = _Implicit()
            self._pending(state, True)
            state.fences.append(_Fence(_dup(sync_fd, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE"), bool(flags & _WRITE)))
        # Release the private fd (and maybe the state) as soon as the fence signals,
        # not at the buffer's next use, which may never come.
        watch = reactor.when_all([sync_fd], lambda: self._prune(key, state))
        with self._lock:
            state.watches.append(watch)

    forgets = True

    def forget(self, fd: int) -> None:
        """A Buffer holding ``fd`` is closing: drop the buffer's implicit fences in this
        process (their private fds and the watches on them) as the kernel drops a freed
        dma-buf's, instead of keeping them until they signal."""
        try:
            key = self._key(fd)
        except OSError:
            return
        with self._lock:
            state = self._state.pop(key, None)
            if state is None:
                return
            watches, state.watches = state.watches, []
            for f in state.fences:
                if f.users == 0:  # a waiter polling it closes it when done (see _pending)
                    os.close(f.fd)
                    f.done = True
            state.fences = [f for f in state.fences if f.users]
        for watch in watches:
            reactor.cancel(watch)  # type: ignore[arg-type]

    def _prune(self, key: tuple[int, int], state: _Implicit) -> None:
        with self._lock:
            self._pending(state, True)
            self._release_state(key, state)

    def implicit_fence(self, fd: int, write: bool) -> tuple[int, int, bool]:
        return self.export_sync_file(fd, _WRITE if write else _READ), select.POLLIN, True

    # sync files ------------------------------------------------------------------
    def merge(self, fd: int, other_fd: int, name: str) -> int:
        if not fences.is_fence(other_fd):
            raise error(E.ENOENT, "SYNC_IOC_MERGE", "the other fd is not a sync file")
        return merged_fence([fd, other_fd])

    def sync_file_info(self, fd: int) -> tuple[str, int, list[FenceFacts]]:
        status, stamp = fences.status(fd)
        return EXPORTER, status, [("fallback", EXPORTER, status, stamp)]

    def set_deadline(self, fd: int, deadline_ns: int) -> None:
        return None  # a hint only, as on kernels whose fences have no deadline hook

    def timeline(self) -> TimelineSource:
        return FallbackTimeline()


def _own_references(inode: int) -> int:
    """fds plus mappings of this inode in this process: the part of the kernel's
    reference count the fallback can see."""
    count = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError as exc:  # EMFILE: listing needs an fd
        raise error(exc.errno or E.EIO, "counting this process's references (/proc/self/fd)") from None
    for name in names:
        try:
            # Our own fd N, asked with statx(AT_STATX_DONT_SYNC): stat() of the /proc link
            # would ask the file system of every file this process holds, and a FUSE
            # server that stops answering would hang us here.
            if cached_identity(int(name))[1] == inode:
                count += 1
        except (OSError, ValueError):
            pass
    try:
        maps = open("/proc/self/maps", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise error(exc.errno or E.EIO, "counting this process's mappings (/proc/self/maps)") from None
    with maps as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) > 5 and fields[4] == str(inode) and "/memfd:" in fields[5]:
                count += 1
    return count


