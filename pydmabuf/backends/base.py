"""The small interface every backend implements.

The public classes hold a backend and an fd and call these methods; they never ask
which backend they have. Everything that differs between the real kernel and the
emulation lives behind this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

# Plain values cross this interface; the public layer builds its info objects.
BufferFacts = tuple[int, str, "str | None", int, int]  # size, exporter, name, inode, count
FenceFacts = tuple[str, str, int, int]  # obj_name, driver_name, status, timestamp_ns

Range = tuple[int, int, int]  # (memfd, offset, size)

# typing (with re) is ~5 ms of import that annotations alone don't need: mypy reads
# this name as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    ExportCall = tuple[Callable[[int, int, object], object], int, dict[int, object],
                       Callable[[Any], tuple[int, int]] | None]


class TimelineSource(ABC):
    """A fence source whose fences signal when ``signal`` reaches their point."""

    kind: str

    @abstractmethod
    def fence(self, point: int) -> int:
        """A new sync-file fd that signals once the timeline reaches ``point``."""

    @abstractmethod
    def signal(self, point: int) -> None:
        """Advance to ``point`` (never backwards), signaling every fence at or below it."""

    @abstractmethod
    def close(self) -> None:
        """Release the source. Pending fences signal (as vgem and sw_sync do)."""


class Backend(ABC):
    name: str
    exporter: str  # what BufferInfo.exporter says for this backend's buffers

    # DMA_BUF_IOCTL_SYNC, checked: a plain function attribute (fd, flags).
    sync: Callable[[int, int], None]

    @abstractmethod
    def sync_call(self, flags: int) -> tuple[Callable[[int, int, object], object], int, object, object]:
        """The hottest call as plain values, for ``cpu_access`` brackets: a callable with
        ``fcntl.ioctl``'s signature, the request, and the START and END arguments for
        ``flags``. It returns a true value when done; a false one (the compiled path's
        failure) or a raw OSError is retried through ``sync``."""

    # --- buffers -------------------------------------------------------------------
    @abstractmethod
    def heaps(self) -> list[str]: ...

    @abstractmethod
    def open_heap(self, name: str) -> int: ...

    @abstractmethod
    def allocate(self, heap_fd: int, heap_name: str, size: int) -> int:
        """A new read-write, close-on-exec buffer fd of at least ``size`` bytes."""

    def allocator(self, heap_name: str) -> Callable[[int, int], int]:
        """``allocate`` for one heap as ``alloc(heap_fd, size) -> fd``: what a Heap binds
        once and calls per allocation (the kernel's is the ioctl with no frame around).
        A negative fd means it failed: the caller calls ``allocate`` for the error."""
        allocate = self.allocate
        return lambda heap_fd, size: allocate(heap_fd, heap_name, size)

    @abstractmethod
    def udmabuf(self, ranges: list[Range]) -> tuple[int, int, int]:
        """(fd, offset of the buffer inside fd, size) sharing the memfds' pages."""

    # Whether a udmabuf's fd is the memfd itself, the buffer starting at the range's
    # offset inside it (the fallback), or a new file starting at 0 (the kernel).
    udmabuf_keeps_offset = False

    def udmabuf_one(self, memfd: int, offset: int, size: int) -> int:
        """The fd of a udmabuf on one range (the common case, with no list to build);
        the buffer starts at ``offset`` inside it if ``udmabuf_keeps_offset``, else at 0.
        A negative fd means it failed: the caller calls ``udmabuf`` for the error."""
        return self.udmabuf([(memfd, offset, size)])[0]

    @abstractmethod
    def buffer_name(self, fd: int) -> str | None: ...

    @abstractmethod
    def set_name(self, fd: int, name: bytes) -> None: ...

    @abstractmethod
    def buffer_info(self, fd: int, size: int) -> BufferFacts:
        """(size, exporter, name, inode, count): what ``Buffer.info()`` reports."""

    # Whether Buffer.close() must call ``forget`` first (state kept per buffer file).
    forgets = False

    def forget(self, fd: int) -> None:
        """A Buffer holding ``fd`` is closing: drop what this backend keeps for it."""
        return None

    def local_name(self, fd: int) -> bytes:
        """The buffer's name if it lives only in this process and so must travel in a
        message header; b"" when the name travels with the file itself."""
        return b""

    def note_name(self, fd: int, name: bytes) -> None:
        """Remember a name that arrived as data for a received buffer, in this process
        only: a receiver never writes to a file it was sent."""
        return None

    @abstractmethod
    def export_sync_file(self, fd: int, flags: int) -> int: ...

    # EXPORT_SYNC_FILE as plain values, like ``sync_call``, for Buffer.export_sync_file:
    # (a callable with fcntl.ioctl's signature, the request, its argument per direction
    # flags, and unpack, which turns the call's result into (flags, new fd), or None when
    # the result is the new fd itself (the compiled path)). A raw OSError or a negative
    # fd from the call is retried through ``export_sync_file``.
    export_call: ExportCall

    @abstractmethod
    def import_sync_file(self, fd: int, sync_fd: int, flags: int) -> None: ...

    @abstractmethod
    def wait_idle(self, fd: int, write: bool, timeout: float | None, what: str) -> None:
        """Wait until a reader (or, with ``write``, a writer) may use the buffer:
        TimeoutError after ``timeout`` seconds. Opens no fd."""

    @abstractmethod
    def implicit_fence(self, fd: int, write: bool) -> tuple[int, int, bool]:
        """What to poll for a buffer's implicit fences: (fd, events, fd_is_new).
        A new fd is the caller's to close."""

    # --- sync files ----------------------------------------------------------------
    @abstractmethod
    def merge(self, fd: int, other_fd: int, name: str) -> int: ...

    @abstractmethod
    def sync_file_info(self, fd: int) -> tuple[str, int, list[FenceFacts]]:
        """(name, status, fences as (obj_name, driver_name, status, timestamp_ns))."""

    @abstractmethod
    def set_deadline(self, fd: int, deadline_ns: int) -> None: ...

    @abstractmethod
    def timeline(self) -> TimelineSource: ...

    def __repr__(self) -> str:
        return f"<pydmabuf backend {self.name!r}>"
