"""Pure-Python emulation: memfd buffers and eventfd fences.

Buffers are memfds, so they can be mapped, passed to other processes and mapped
there. A fence is an eventfd that becomes readable (POLLIN) when signaled; the
value written is the CLOCK_MONOTONIC signal time, read back through fdinfo without
consuming it. Kernel validation rules (udmabuf seals and alignment, name length,
sync flags) are applied here too so that code tested on the fallback behaves the
same on a kernel. What cannot be emulated is listed in the README.
"""

from __future__ import annotations

import errno as E
import os
import select
import threading
import time

from .. import _memfd
from .._fd import dup_cloexec
from ..errors import error, invalid, unsupported
from ..info import BufferInfo, FenceInfo
from ._reactor import reactor
from .base import Backend, Range, TimelineSource

EXPORTER = "pydmabuf-fallback"
HEAPS = ("system",)
SIZE_LIMIT = 64 << 20  # udmabuf's default size_limit_mb
LIST_LIMIT = 1024  # udmabuf's default list_limit
NAME_XATTR = "user.pydmabuf.name"
_READ, _WRITE, _END = 1, 2, 4
_EFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK


# --- fences -----------------------------------------------------------------------

def new_fence(signaled: bool = False) -> int:
    fd = os.eventfd(0, _EFD_FLAGS)
    if signaled:
        os.eventfd_write(fd, time.monotonic_ns())
    return fd


def fence_signaled(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def fence_timestamp(fd: int) -> int:
    """The signal time (0 while pending), read from fdinfo so the value stays put."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            if line.startswith("eventfd-count:"):
                return int(line.split(":", 1)[1], 16)
    return 0


def signal_fence(fd: int) -> None:
    os.eventfd_write(fd, time.monotonic_ns())


def merged_fence(inputs: list[int]) -> int:
    """A new fence that signals once every fence in ``inputs`` has (kernel merge
    semantics: already-signaled inputs are dropped)."""
    pending = [fd for fd in inputs if not fence_signaled(fd)]
    out = new_fence(signaled=not pending)
    if pending:
        try:
            reactor.signal_when_all(pending, out)
        except BaseException:
            os.close(out)
            raise
    return out


class _Implicit:
    """Per-buffer state the kernel keeps in the dma-buf's reservation object."""

    __slots__ = ("fences", "depth")

    def __init__(self) -> None:
        self.fences: list[tuple[int, bool]] = []  # (private eventfd dup, is write fence)
        self.depth = 0  # open CPU-access brackets


class FallbackTimeline(TimelineSource):
    kind = "fallback"

    def __init__(self) -> None:
        self._value = 0
        self._pending: list[tuple[int, int]] = []  # (point, private eventfd dup)
        self._lock = threading.Lock()

    def fence(self, point: int) -> int:
        with self._lock:
            fd = new_fence(signaled=point <= self._value)
            if point > self._value:
                self._pending.append((point, dup_cloexec(fd)))
            return fd

    def signal(self, point: int) -> None:
        with self._lock:
            self._value = max(self._value, point)
            keep = []
            for entry in self._pending:
                if entry[0] <= self._value:
                    signal_fence(entry[1])
                    os.close(entry[1])
                else:
                    keep.append(entry)
            self._pending = keep

    def close(self) -> None:
        with self._lock:
            for _point, fd in self._pending:
                signal_fence(fd)
                os.close(fd)
            self._pending = []


# --- the backend ------------------------------------------------------------------

class FallbackBackend(Backend):
    name = "fallback"
    exporter = EXPORTER

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[tuple[int, int], _Implicit] = {}
        self._names: dict[tuple[int, int], str] = {}  # where xattrs are unsupported

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
        return _memfd.sealed_memfd(f"pydmabuf:{heap_name}", _memfd.page_round(size),
                                   _memfd.F_SEAL_SHRINK | _memfd.F_SEAL_GROW)

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
        return dup_cloexec(first), offset, total

    @staticmethod
    def _check_udmabuf_range(memfd: int, offset: int, size: int) -> None:
        # The kernel's checks, in its order, with its errno values.
        try:
            st = os.fstat(memfd)
        except OSError:
            raise error(E.EBADFD, "UDMABUF_CREATE", "not an open memfd") from None
        seals = _memfd.seals(memfd)
        if seals is None:
            raise error(E.EBADFD, "UDMABUF_CREATE", "each range needs a memfd (shmem) fd")
        if not seals & _memfd.F_SEAL_SHRINK or seals & (_memfd.F_SEAL_WRITE | _memfd.F_SEAL_FUTURE_WRITE):
            raise error(E.EINVAL, "UDMABUF_CREATE",
                        "the memfd needs MFD_ALLOW_SEALING + F_SEAL_SHRINK and no write seal")
        page = _memfd.PAGE_SIZE
        if offset % page or size % page or size <= 0 or offset < 0:
            raise error(E.EINVAL, "UDMABUF_CREATE", "offset and size must be page-aligned, size > 0")
        if offset + size > st.st_size:
            raise error(E.EINVAL, "UDMABUF_CREATE", "range extends past the end of the memfd")

    def check_buffer(self, fd: int) -> tuple[int, int]:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            raise error(E.EBADF, f"fd {fd}") from None
        if not link.startswith("/memfd:"):
            raise invalid(f"fd {fd} is not a fallback buffer (a memfd): {link}")
        return os.fstat(fd).st_size, 0

    def _key(self, fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def buffer_name(self, fd: int) -> str | None:
        try:
            return os.getxattr(fd, NAME_XATTR).decode("utf-8", "replace")
        except OSError as exc:
            if exc.errno == E.ENODATA:
                return None
            return self._names.get(self._key(fd))

    def set_name(self, fd: int, name: bytes) -> None:
        try:
            os.setxattr(fd, NAME_XATTR, name)  # visible to every process holding the memfd
        except OSError:
            self._names[self._key(fd)] = name.decode("utf-8", "replace")

    def local_name(self, fd: int) -> bytes:
        if not self._names:
            return b""
        name = self._names.get(self._key(fd))
        return name.encode() if name else b""

    def note_name(self, fd: int, name: bytes) -> None:
        try:
            os.getxattr(fd, NAME_XATTR)
            return  # the file carries its own name
        except OSError:
            self._names[self._key(fd)] = name.decode("utf-8", "replace")

    def buffer_info(self, fd: int, size: int) -> BufferInfo:
        st = os.fstat(fd)
        return BufferInfo(size=size, exporter=EXPORTER, name=self.buffer_name(fd),
                          inode=st.st_ino, count=_own_references(st.st_ino))

    # CPU access and implicit fences -------------------------------------------------
    def _implicit(self, fd: int) -> _Implicit:
        key = self._key(fd)
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = _Implicit()
        return state

    def _pending(self, state: _Implicit, write: bool) -> list[int]:
        """Pending fences a reader (write=False) or writer must wait for; prunes
        signaled ones so their private fds are released."""
        alive = []
        for fd, is_write in state.fences:
            if fence_signaled(fd):
                os.close(fd)
            else:
                alive.append((fd, is_write))
        state.fences = alive
        return [fd for fd, is_write in alive if write or is_write]

    def sync(self, fd: int, flags: int) -> None:
        if flags & ~(_READ | _WRITE | _END) or not flags & (_READ | _WRITE):
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_SYNC flags {flags:#x}")
        with self._lock:
            state = self._implicit(fd)
            if flags & _END:
                if state.depth == 0:
                    raise error(E.EINVAL, "DMA_BUF_IOCTL_SYNC", "END without a matching START")
                state.depth -= 1
                return
            waits = [dup_cloexec(f) for f in self._pending(state, bool(flags & _WRITE))]
        try:
            for f in waits:  # START blocks on implicit fences, as in the kernel
                select.select([f], [], [])
        finally:
            for f in waits:
                os.close(f)
        with self._lock:
            state.depth += 1

    def export_sync_file(self, fd: int, flags: int) -> int:
        if not flags or flags & ~(_READ | _WRITE):
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_EXPORT_SYNC_FILE flags {flags:#x}")
        with self._lock:
            return merged_fence(self._pending(self._implicit(fd), bool(flags & _WRITE)))

    def import_sync_file(self, fd: int, sync_fd: int, flags: int) -> None:
        if not flags or flags & ~(_READ | _WRITE):
            raise error(E.EINVAL, f"DMA_BUF_IOCTL_IMPORT_SYNC_FILE flags {flags:#x}")
        if not _is_eventfd(sync_fd):
            raise error(E.EINVAL, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE", "not a sync file")
        if fence_signaled(sync_fd):
            return
        with self._lock:
            state = self._implicit(fd)
            state.fences.append((dup_cloexec(sync_fd), bool(flags & _WRITE)))
        # Release our dup as soon as it signals, not at the next access.
        reactor.when_all([sync_fd], lambda: self._prune(state))

    def _prune(self, state: _Implicit) -> None:
        with self._lock:
            self._pending(state, True)

    def implicit_fence(self, fd: int, write: bool) -> tuple[int, int, bool]:
        return self.export_sync_file(fd, _WRITE if write else _READ), select.POLLIN, True

    # sync files ------------------------------------------------------------------
    def check_sync_file(self, fd: int) -> None:
        if not _is_eventfd(fd):
            raise invalid(f"fd {fd} is not a fallback sync file (an eventfd)")

    def merge(self, fd: int, other_fd: int, name: str) -> int:
        if not _is_eventfd(other_fd):
            raise error(E.ENOENT, "SYNC_IOC_MERGE", "the other fd is not a sync file")
        return merged_fence([fd, other_fd])

    def sync_file_info(self, fd: int) -> tuple[str, int, list[FenceInfo]]:
        stamp = fence_timestamp(fd)
        status = 1 if stamp else 0
        return EXPORTER, status, [FenceInfo("fallback", EXPORTER, status, stamp)]

    def set_deadline(self, fd: int, deadline_ns: int) -> None:
        return None  # a hint only, as on kernels whose fences have no deadline hook

    def timeline(self) -> TimelineSource:
        return FallbackTimeline()


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _own_references(inode: int) -> int:
    """fds plus mappings of this inode in this process: the part of the kernel's
    reference count the fallback can see."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                count += 1
        except OSError:
            pass
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) > 5 and fields[4] == str(inode) and "/memfd:" in fields[5]:
                count += 1
    return count


