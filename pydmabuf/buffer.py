"""Buffer (an owned dma-buf fd), its CPU mappings and CPU-access brackets."""

from __future__ import annotations

import mmap
import os

from . import _wait
from ._access import CpuAccess
from ._fd import FdHolder, as_fd, dup_cloexec
from .backends import Backend, get_backend
from .errors import READONLY_MAP_HINT, closed, error, invalid
from .info import BufferInfo
from .syncfile import SyncFile

READ, WRITE, END = 1, 2, 4  # DMA_BUF_SYNC_* bits
_new = object.__new__
NAME_MAX = 31  # DMA_BUF_NAME_LEN minus the NUL


def _direction(read: bool, write: bool) -> int:
    flags = (READ if read else 0) | (WRITE if write else 0)
    if not flags:
        raise invalid("at least one of read and write must be True")
    return flags


class Mapping(mmap.mmap):
    """A shared CPU mapping of a buffer. Supports the buffer protocol
    (``memoryview(m)``, ``numpy.frombuffer(m, ...)`` without copying); read-only
    mappings refuse writes. It keeps the buffer alive until closed, even after the
    Buffer object is closed. Bracket CPU reads and writes with ``Buffer.cpu_access``.
    """

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={len(self)}"
        return f"<pydmabuf.Mapping {state}>"


class Buffer(FdHolder):
    """An owned dma-buf fd (on the fallback backend, a memfd) of a fixed size."""

    __slots__ = ("_backend", "_size", "_offset", "_access")
    _kind = "Buffer"

    def __init__(self, fd: int, size: int, backend: Backend, offset: int = 0) -> None:
        self._fd = fd
        self._size = size
        self._offset = offset  # where the buffer starts inside fd (fallback udmabufs)
        self._backend = backend
        self._access: CpuAccess | None = None

    @classmethod
    def from_fd(cls, fd: int, *, own: bool = True, backend: str | Backend | None = None) -> Buffer:
        """Wrap an existing buffer fd; rejects fds that are not buffers of the backend.
        ``own=False`` dups it and leaves your fd alone."""
        fd = as_fd(fd)
        b = get_backend(backend)
        size, offset = b.check_buffer(fd)
        return cls(fd if own else dup_cloexec(fd), size, b, offset)

    @classmethod
    def from_pid(cls, pid: int, fd: int, *, backend: str | Backend | None = None) -> Buffer:
        """Take process ``pid``'s buffer fd ``fd`` (pidfd_getfd, Linux 5.6+). Needs ptrace
        access to ``pid``; PermissionError says what is missing."""
        from ._pidfd import wrap_taken

        return wrap_taken(lambda new: cls.from_fd(new, backend=backend), pid, fd)

    def __reduce__(self) -> tuple[object, ...]:
        # multiprocessing duplicates the fd into the receiver (see pydmabuf._pickle).
        from ._pickle import reduce_buffer

        return reduce_buffer(self)

    # --- facts -------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def name(self) -> str | None:
        """The name as the kernel reports it now (None if never set)."""
        return self._backend.buffer_name(self.fileno())

    def set_name(self, name: str) -> None:
        raw = name.encode("utf-8")
        if len(raw) > NAME_MAX or b"\0" in raw:
            raise invalid(f"buffer names are at most {NAME_MAX} bytes without NUL: {name!r}")
        self._backend.set_name(self.fileno(), raw)

    def _named(self, name: str | None) -> Buffer:
        """This new buffer, named; closed again if the name is refused."""
        if name is not None:
            try:
                self.set_name(name)
            except BaseException:
                self.close()
                raise
        return self

    def info(self) -> BufferInfo:
        return self._backend.buffer_info(self.fileno(), self._size)

    def dup(self) -> Buffer:
        return Buffer(dup_cloexec(self.fileno()), self._size, self._backend, self._offset)

    # --- CPU access --------------------------------------------------------------
    def map(self, *, write: bool = True) -> Mapping:
        """Map the whole buffer shared (MAP_PRIVATE is refused by exporters)."""
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
        fd = self.fileno()
        try:
            return Mapping(fd, self._size, mmap.MAP_SHARED, prot, offset=self._offset)
        except PermissionError as exc:
            raise error(exc.errno or 13, "mmap", READONLY_MAP_HINT if write else None) from None
        except OSError as exc:
            raise error(exc.errno or 22, "mmap") from None

    def cpu_access(self, read: bool = True, write: bool = True, timeout: float | None = None) -> CpuAccess:
        """Bracket CPU access to the mapping; ``timeout`` bounds the wait for the
        buffer's implicit fences (TimeoutError), which SYNC START alone never does."""
        if read and write and timeout is None:
            access = self._access
            if access is None:
                access = self._access = self._backend.cpu_access(self, READ | WRITE, None)
            return access
        return self._backend.cpu_access(self, _direction(read, write), timeout)

    def begin_cpu_access(self, read: bool = True, write: bool = True) -> None:
        """DMA_BUF_IOCTL_SYNC START alone; pair with ``end_cpu_access``."""
        self._backend.sync(self.fileno(), _direction(read, write))

    def end_cpu_access(self, read: bool = True, write: bool = True) -> None:
        self._backend.sync(self.fileno(), _direction(read, write) | END)

    # --- implicit fences ---------------------------------------------------------
    def export_sync_file(self, *, read: bool = True, write: bool = True) -> SyncFile:
        """A snapshot of the fences a reader (read only) or writer must wait for."""
        fd = self._fd
        if fd < 0:
            raise closed("Buffer")
        backend = self._backend
        fence = _new(SyncFile)  # hot path: no __init__ frame
        fence._fd = backend.export_sync_file(fd, READ | WRITE if read and write else _direction(read, write))
        fence._backend = backend
        return fence

    def import_sync_file(self, sync_file: SyncFile, *, write: bool = True) -> None:
        """Add ``sync_file``'s fence to the buffer: as a write fence (everyone waits)
        or, with ``write=False``, a read fence (only writers wait)."""
        if not isinstance(sync_file, SyncFile):
            raise invalid(f"import_sync_file() needs a SyncFile, got {type(sync_file).__name__}")
        self._backend.import_sync_file(self.fileno(), sync_file.fileno(), WRITE if write else READ)

    def wait(self, *, write: bool = False, timeout: float | None = None) -> None:
        """Wait until a reader (default) or a writer (``write=True``) may proceed."""
        fd, events, new = self._backend.implicit_fence(self.fileno(), write)
        try:
            _wait.wait_fd(fd, events, timeout, "Buffer.wait")
        finally:
            if new:
                os.close(fd)

    async def wait_async(self, *, write: bool = False, timeout: float | None = None) -> None:
        """``await`` version of ``wait`` on the running asyncio loop; ClosedError if
        the buffer is closed meanwhile; cancelling the task stops watching."""
        from . import aio  # asyncio is imported only by programs that use it

        fd, events, new = self._backend.implicit_fence(self.fileno(), write)
        await aio.wait_fd(self, fd, events, new, timeout, "Buffer.wait_async")

    def __repr__(self) -> str:
        if self._fd < 0:
            return f"<Buffer closed size={self._size}>"
        try:
            name = self.name
        except OSError:
            name = "?"
        return f"<Buffer fd={self._fd} size={self._size} name={name!r} backend={self._backend.name}>"
