"""Buffer (an owned dma-buf fd), its CPU mappings and CPU-access brackets.

CpuAccess is the ``with buffer.cpu_access(...)`` bracket (DMA_BUF_IOCTL_SYNC START on
entry, END on exit, also when the block raises). It holds the buffer's fd from START
to END (see :mod:`pydmabuf._fd`): a ``close()`` inside the block, from any thread,
takes effect after END, which so always reaches the file that START did. It refers to
its buffer through a weak reference, so the buffer caches its default bracket (the hot
loop ``with buf.cpu_access():`` creates no object) without a reference cycle: a dropped
buffer is closed at once, not when the cycle collector runs. The backend hands over
its SYNC call as plain values (``Backend.sync_call``): a callable with
``fcntl.ioctl``'s signature and the START/END arguments, so the kernel's bracket is one
``fcntl.ioctl`` (pure) or one compiled ``pdb_sync`` (see :mod:`pydmabuf.uapi.fast`)
each way, with no Python frame in between.
"""

from __future__ import annotations

import errno as E
import mmap
import os
import weakref
from collections.abc import Callable
from types import TracebackType

from ._fd import (
    DupFdLike,
    FdHolder,
    FdLike,
    add_close_hook,
    as_fd,
    dup_cloexec,
    finish,
    for_multiprocessing,
    hold,
    hold_append,
    hold_remove,
    pickled_fd,
    reduce_or_refuse,
    release,
    unpickled_fd,
)
from .backends import Backend, buffer_backend, buffer_backend_of, get_backend
from .dlpack import collect as _collect_dlpack
from .dlpack import dlpack, dlpack_device
from .errors import (
    MAPPING_IN_USE_HINT,
    READONLY_MAP_HINT,
    READONLY_MAPPING_HINT,
    Error,
    MappingInUseError,
    ReadOnlyError,
    check_name,
    closed,
    error,
    invalid,
    unmappable_hint,
    unsupported,
)
from .info import BufferInfo
from .syncfile import SyncFile, new_sync_file
from .uapi import fast as _fast
from .uapi.fdkind import DMA_BUF_DEVS
from .uapi.ops import SYNC_END, SYNC_READ, SYNC_WRITE, cached_stat
from .uapi.wait import deadline

# typing costs import time that annotations alone don't need (mypy reads this name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

READ, WRITE, END = SYNC_READ, SYNC_WRITE, SYNC_END
_cached_stat = cached_stat
# st_dev of the dma-buf filesystem -> the kernel backend, filled when from_fd first
# meets it: then the common from_fd is one statx and one dict lookup.
_KERNEL_BY_DEV: dict[int, Backend] = {}
# The compiled path's from_fd asks for the size only if the fd is on the last dma-buf
# file system met ([st_dev, its backend]; -1 matches nothing): one C call in all.
_size_on: Any = getattr(_fast.lib, "pdb_size_on", None)
_LAST_KERNEL_DEV: list[object] = [(1 << 64) - 1, None]

_new = object.__new__
NAME_MAX = 31  # DMA_BUF_NAME_LEN minus the NUL
_UNSUPPORTED = (524, E.EOPNOTSUPP)  # ENOTSUPP is kernel-internal: no errno name in Python


def _direction(read: bool, write: bool) -> int:
    flags = (READ if read else 0) | (WRITE if write else 0)
    if not flags:
        raise invalid("at least one of read and write must be True")
    return flags


def encode_name(name: object) -> bytes:
    """A buffer name as the kernel takes it: str, at most 31 UTF-8 bytes, no NUL."""
    try:
        raw = check_name(name).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file system name decodes to
        raise invalid(f"buffer names are UTF-8 text: {name!r} cannot be encoded") from None
    if len(raw) > NAME_MAX or b"\0" in raw:
        raise invalid(f"buffer names are at most {NAME_MAX} bytes without NUL: {name!r}")
    return raw


class Mapping(mmap.mmap):
    """A shared CPU mapping of a buffer. Supports the buffer protocol
    (``memoryview(m)``, ``numpy.frombuffer(m, ...)`` without copying) and DLPack
    (``numpy.from_dlpack(m)``, ``torch.from_dlpack(m)``: CPU, uint8, one dimension;
    the consumer keeps the mapping alive). A read-only mapping refuses writes
    (:class:`~pydmabuf.errors.ReadOnlyError`, a TypeError as mmap's own) and goes only to
    DLPack consumers known to honour read-only (see :mod:`pydmabuf.dlpack`). It keeps
    the buffer alive until closed, even after the Buffer object is closed. ``close()``
    while an array or view still uses the memory raises
    :class:`~pydmabuf.errors.MappingInUseError` (a BufferError); every method of a closed
    mapping raises ClosedError. Bracket CPU reads and writes with ``Buffer.cpu_access``.

    The read-only and the closed behaviours are subclasses (``map(write=False)`` makes
    the first, ``close()`` switches to the second), so an open writable mapping's
    indexing and slicing stay mmap's own C code with no Python frame around them. (A
    thread that slices at the very moment another closes may still see mmap's bare
    ValueError.)
    """

    __dlpack__ = dlpack
    __dlpack_device__ = dlpack_device

    def close(self) -> None:
        """Unmap; the buffer itself stays open. MappingInUseError (EBUSY, a BufferError) while an
        array, memoryview or DLPack tensor still uses the memory. Calling it again does nothing."""
        _collect_dlpack()  # release exports whose consumer is done, so close works right after
        try:
            super().close()
        except BufferError:  # CPython's "cannot close exported pointers exist"
            raise MappingInUseError(E.EBUSY, f"cannot close a Mapping of {len(self)} bytes: "
                                    f"{MAPPING_IN_USE_HINT}") from None
        if type(self) in _OWN_KINDS:  # not a subclass of someone else's
            self.__class__ = _ClosedMapping

    def resize(self, newsize: int) -> None:
        """Always refused: UnsupportedError (ClosedError once closed); a buffer's size is fixed."""
        # mmap would ftruncate the buffer's file: a fallback memfd would grow under
        # every other holder of the buffer.
        raise unsupported("a Mapping has its buffer's fixed size: it cannot be resized")

    def __exit__(self, *exc: object) -> None:  # mmap's own __exit__ would bypass close()
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={len(self)}"
        if isinstance(self, _ReadOnlyMapping) and not self.closed:
            state += " read-only"
        return f"<pydmabuf.Mapping {state}>"


def _read_only(self: Mapping, *args: object) -> None:
    raise ReadOnlyError(E.EACCES, f"write to a Mapping: {READONLY_MAPPING_HINT}")


class _ReadOnlyMapping(Mapping):
    """What ``Buffer.map(write=False)`` returns: writes raise ReadOnlyError (mmap's own
    refusal is a bare TypeError)."""

    __setitem__ = _read_only
    write = _read_only  # type: ignore[assignment]
    write_byte = _read_only
    move = _read_only


def _closed_mapping(self: Mapping, *args: object) -> None:
    raise closed("Mapping")


class _ClosedMapping(Mapping):
    """A Mapping after ``close()``: every method raises ClosedError (mmap's own is a bare
    ValueError "mmap closed or invalid"); ``close()`` again does nothing. (The buffer
    protocol, ``memoryview(m)``, still raises mmap's ValueError: Python 3.11 has no
    ``__buffer__`` to override.)"""

    def close(self) -> None:
        pass


_OWN_KINDS = (Mapping, _ReadOnlyMapping)
for _name in ("__getitem__", "__setitem__", "__len__", "__enter__", "find", "flush", "madvise", "move",
              "read", "read_byte", "readline", "resize", "rfind", "seek", "size", "tell", "write",
              "write_byte"):
    if hasattr(mmap.mmap, _name):
        setattr(_ClosedMapping, _name, _closed_mapping)
del _name


def _rebuild_buffer(dupfd: DupFdLike, size: int, backend: str, offset: int) -> Buffer:
    fd = unpickled_fd(dupfd)
    try:  # the fd's kind, not the pickle, says which semantics apply
        found, real_size = buffer_backend(fd)
        if not 0 <= offset <= offset + size <= real_size:
            raise invalid(f"pickled buffer of {size} bytes at {offset} does not fit its fd")
    except BaseException:
        os.close(fd)
        raise
    return new_buffer(fd, size, found, offset)


class _Forget:
    """A close hook: tell the backend the buffer on ``fd`` is going (equal hooks for
    the same buffer are registered once)."""

    __slots__ = ("backend", "fd")

    def __init__(self, backend: Backend, fd: int) -> None:
        self.backend = backend
        self.fd = fd

    def __call__(self) -> None:
        self.backend.forget(self.fd)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Forget) and other.backend is self.backend and other.fd == self.fd

    __hash__ = None  # type: ignore[assignment]


def _new_buffer_pure(fd: int, size: int, backend: Backend, offset: int = 0) -> Buffer:
    """A Buffer owning ``fd``, filled without an ``__init__`` frame (hot paths)."""
    buf = _new(Buffer)
    buf._fd = fd
    buf._cell = [fd]
    buf._size = size
    buf._offset = offset
    buf._backend = backend
    buf._access = None
    return buf


def _classified(fd: int, new: int, mode: int, dev: int | None, found: Backend | None, size: int,
                backend: str | Backend | None) -> tuple[Backend, int]:
    """from_fd's slow half: what ``new`` (``fd`` or the dup of it) is, beyond a dma-buf
    filesystem seen before, checked against the ``backend`` the caller expects, from
    the statx already done (``dev`` None: it failed). Errors name the caller's number ``fd``."""
    if found is None:
        try:
            found, size = buffer_backend(new) if dev is None else buffer_backend_of(new, mode, size, dev)
        except Error:
            if new != fd:
                buffer_backend(fd)  # the same complaint, naming the caller's number
            raise
        if dev is not None and DMA_BUF_DEVS.get(dev) and found.name == "kernel":
            _KERNEL_BY_DEV[dev] = found
            _LAST_KERNEL_DEV[:] = dev, found
    if backend is not None and get_backend(backend) is not found:
        what = "a dma-buf" if found.name == "kernel" else "a fallback memfd"
        raise invalid(f"fd {fd} is {what}, not a {get_backend(backend).name} buffer"
                      f"{' (not a dma-buf)' if found.name != 'kernel' else ''}")
    return found, size


def buffer_parts(buf: Buffer) -> tuple[Backend, int, int]:
    """(backend, size, offset of the buffer inside its fd): what sharing, waiting and
    the channel need beyond the public API (the offset is non-zero only for fallback
    udmabufs, which are the memfd itself)."""
    return buf._backend, buf._size, buf._offset


def named(buf: Buffer, name: str | None) -> Buffer:
    """``buf``, a buffer just made, named; closed again if the name is refused."""
    if name is not None:
        try:
            buf.set_name(name)
        except BaseException:
            buf.close()
            raise
    return buf


class Buffer(FdHolder):
    """An owned dma-buf fd (on the fallback backend, a memfd) of a fixed size.

    Thread-safe in the sense of :mod:`pydmabuf._fd`: any method may run while another
    thread closes the buffer; it then either completes on this buffer's file or raises
    ClosedError, never touching a file that reused the number."""

    __slots__ = ("_backend", "_size", "_offset", "_access")
    _kind = "Buffer"

    def __init__(self, fd: int, size: int, backend: Backend, offset: int = 0) -> None:
        self._fd = fd
        self._cell = [fd]
        self._size = size
        self._offset = offset  # where the buffer starts inside fd (fallback udmabufs)
        self._backend = backend
        self._access: CpuAccess | None = None

    @classmethod
    def from_fd(cls, fd: FdLike, *, own: bool = True, backend: str | Backend | None = None) -> Buffer:
        """Wrap an existing buffer fd: any dma-buf (kernel semantics, whatever exported
        it) or a fallback memfd sealed against shrinking (fallback semantics).
        ``backend`` only double-checks which one you expect. ``own=False`` dups it and
        leaves your fd alone."""
        if type(fd) is not int or fd < 0:
            fd = as_fd(fd)
        new = fd
        if not own:
            # Dup first, then look at the dup: a number that the caller's other threads
            # close and reuse meanwhile can't pair one file's size with another's fd.
            try:
                new = dup_cloexec(fd)
            except (OSError, OverflowError) as exc:
                buffer_backend(fd)  # the library's error for what fd is, if it is the cause
                raise error(getattr(exc, "errno", None) or E.EBADF, f"dup of fd {fd}") from None
        dev: int | None
        found: Backend | None = None
        if _size_on is not None:  # compiled: the common case is one C call
            kernel_dev, kernel = _LAST_KERNEL_DEV
            try:
                size = _size_on(new, kernel_dev)
            except OverflowError:
                size = -1
            if size >= 0:
                found, mode, dev = kernel, 0, kernel_dev  # type: ignore[assignment]
        if found is None:
            try:  # the common case inline: one statx shows a dma-buf file system seen before
                mode, size, dev = _cached_stat(new)  # asks no file system's server (FUSE): see fdkind
                found = _KERNEL_BY_DEV.get(dev) if not mode & 0o170000 else None
            except (OSError, OverflowError):
                dev = found = None
                size = mode = 0
        if found is None or backend is not None:
            try:
                found, size = _classified(fd, new, mode, dev, found, size, backend)
            except BaseException:
                if new != fd:
                    os.close(new)
                raise
        if _made_in_c:
            return new_buffer(new, size, found)
        buf = _new(Buffer)  # hot path: no __init__ frame
        buf._fd = new
        buf._cell = [new]
        buf._size = size
        buf._offset = 0
        buf._backend = found
        buf._access = None
        return buf

    @classmethod
    def from_pid(cls, pid: int, fd: int, *, backend: str | Backend | None = None) -> Buffer:
        """Take process ``pid``'s buffer fd ``fd`` (pidfd_getfd, Linux 5.6+). Needs ptrace
        access to ``pid``; PermissionError says what is missing."""
        from .uapi.pidfd import wrap_taken

        return wrap_taken(lambda new: cls.from_fd(new, backend=backend), pid, fd)

    def __reduce__(self) -> tuple[object, ...]:
        # Only multiprocessing pickles a Buffer (_reduce_buffer, registered below; see
        # the pickling notes in _fd): anything else would pin a duplicate fd.
        return reduce_or_refuse(self)

    # --- facts -------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The size in bytes (an allocation's is rounded up to pages); fixed, and readable after close."""
        return self._size

    @property
    def backend(self) -> str:
        """``"kernel"`` (a dma-buf) or ``"fallback"`` (a memfd); readable after close."""
        return self._backend.name

    @property
    def name(self) -> str | None:
        """The name as the kernel reports it now (None if never set)."""
        fd = hold(self)
        try:
            return self._backend.buffer_name(fd)
        finally:
            release(self)

    def set_name(self, name: str) -> None:
        """Name the buffer: a str of at most 31 UTF-8 bytes without NUL (InvalidArgumentError
        otherwise). Kernel: DMA_BUF_SET_NAME (Linux 5.3+), seen system-wide in fdinfo; fallback:
        an xattr on the memfd, or kept in this process (and sent with the buffer) where tmpfs
        has no user xattrs. ClosedError if closed."""
        raw = encode_name(name)
        fd = hold(self)
        try:
            self._backend.set_name(fd, raw)
        finally:
            release(self)

    def info(self) -> BufferInfo:
        """Size, exporter, name, inode and reference count (see :class:`BufferInfo`). Kernel:
        from fdinfo, ``count`` system-wide; fallback: exporter ``"pydmabuf-fallback"``, ``count``
        this process's fds and mappings only. ClosedError if closed."""
        fd = hold(self)
        try:
            return BufferInfo(*self._backend.buffer_info(fd, self._size))
        finally:
            release(self)

    def dup(self) -> Buffer:
        """A second Buffer on a close-on-exec dup of the fd (the same file and size); each
        closes on its own. ClosedError if closed; TooManyOpenFilesError at the fd limit."""
        fd = hold(self)
        try:
            try:
                new = dup_cloexec(fd)
            except OSError as exc:  # EMFILE above all: the library's error, naming the limit
                raise error(exc.errno or E.EBADF, "Buffer.dup") from None
            return new_buffer(new, self._size, self._backend, self._offset)
        finally:
            release(self)

    # --- CPU access --------------------------------------------------------------
    def map(self, *, write: bool = True) -> Mapping:
        """Map the whole buffer shared (most exporters refuse MAP_PRIVATE)."""
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
        fd = hold(self)
        try:
            kind = Mapping if write else _ReadOnlyMapping
            return kind(fd, self._size, mmap.MAP_SHARED, prot, offset=self._offset)
        except PermissionError as exc:
            raise error(exc.errno or E.EACCES, "mmap", READONLY_MAP_HINT if write else None) from None
        except OSError as exc:
            code = exc.errno or E.EINVAL
            hint = None
            if code in _UNSUPPORTED:  # ENOTSUPP/EOPNOTSUPP: the exporter has no mmap
                hint = unmappable_hint(self._backend.buffer_info(fd, self._size)[1])
            raise error(code, "mmap", hint) from None
        finally:
            release(self)

    def cpu_access(self, read: bool = True, write: bool = True, timeout: float | None = None) -> CpuAccess:
        """Bracket CPU access to the mapping; ``timeout`` bounds the wait for the
        buffer's implicit fences (TimeoutError), which SYNC START alone never does."""
        if read is True and write is True and timeout is None:
            access = self._access  # the default bracket, made once (it refers back weakly)
            if access is None:
                access = self._access = CpuAccess(self, READ | WRITE)
            return access
        if timeout is not None:
            deadline(timeout, "cpu_access")  # reject a bad timeout here, not at `with`
            return TimedCpuAccess(self, _direction(read, write), timeout)
        return CpuAccess(self, _direction(read, write))

    def begin_cpu_access(self, read: bool = True, write: bool = True) -> None:
        """DMA_BUF_IOCTL_SYNC START alone; pair with ``end_cpu_access``."""
        flags = _direction(read, write)
        fd = hold(self)
        try:
            self._backend.sync(fd, flags)
        finally:
            release(self)

    def end_cpu_access(self, read: bool = True, write: bool = True) -> None:
        """DMA_BUF_IOCTL_SYNC END, with the directions of the matching ``begin_cpu_access``.
        An unpaired END: the system heap accepts it, udmabuf refuses it before the first START,
        the fallback always refuses it (InvalidArgumentError). ClosedError if closed."""
        flags = _direction(read, write) | END
        fd = hold(self)
        try:
            self._backend.sync(fd, flags)
        finally:
            release(self)

    # --- implicit fences ---------------------------------------------------------
    def export_sync_file(self, *, read: bool = True, write: bool = True) -> SyncFile:
        """A snapshot of the fences a reader (read only) or writer must wait for."""
        flags = READ | WRITE if read is True and write is True else _direction(read, write)
        hold_append(self)
        try:
            fd = self._fd
            if fd < 0:
                raise closed("Buffer")
            backend = self._backend
            call, request, args, unpack = backend.export_call
            try:  # the ioctl itself, no frame around it (see Backend.export_call)
                new: int = call(fd, request, args[flags])  # type: ignore[assignment]
                if unpack is not None:  # pure: read the packed result
                    new = unpack(new)[1]
            except OSError as exc:
                if isinstance(exc, Error):
                    raise
                new = -1
            if new < 0:  # compiled: -1; pure: a raw OSError
                new = backend.export_sync_file(fd, flags)  # EINTR again, or the typed error
        finally:
            hold_remove(self)  # _release, inlined on this hot path
            if self._fd < 0:
                finish(self)
        if _made_in_c:
            return new_sync_file(new, backend)
        fence = _new(SyncFile)  # hot path: no __init__ frame
        fence._fd = new
        fence._cell = [new]
        fence._backend = backend
        return fence

    def import_sync_file(self, sync_file: SyncFile, *, write: bool = True) -> None:
        """Add ``sync_file``'s fence to the buffer: as a write fence (everyone waits)
        or, with ``write=False``, a read fence (only writers wait)."""
        if not isinstance(sync_file, SyncFile):
            raise invalid(f"import_sync_file() needs a SyncFile, got {type(sync_file).__name__}")
        if sync_file._backend is not self._backend:
            raise invalid(f"a {sync_file._backend.name} fence cannot be attached to a "
                          f"{self._backend.name} buffer")
        backend = self._backend
        fd = hold(self)
        try:
            sync_fd = hold(sync_file)
            try:
                backend.import_sync_file(fd, sync_fd, WRITE if write else READ)
            finally:
                release(sync_file)
            if backend.forgets:  # the backend keeps the fence for this buffer: until close
                add_close_hook(self, _Forget(backend, fd))
        finally:
            release(self)

    def wait(self, *, write: bool = False, timeout: float | None = None) -> None:
        """Wait until a reader (default) or a writer (``write=True``) may proceed."""
        fd = hold(self)
        try:
            self._backend.wait_idle(fd, write, timeout, "Buffer.wait")
        finally:
            release(self)

    async def wait_async(self, *, write: bool = False, timeout: float | None = None) -> None:
        """``await`` version of ``wait`` on the running asyncio loop; ClosedError if
        the buffer is closed meanwhile; cancelling the task stops watching. On a kernel
        dma-buf it adds no fd (the loop watches the buffer's own, see :mod:`pydmabuf.aio`)."""
        from ._aio_watch import wait_object  # asyncio: only for programs that use it

        backend = self._backend  # what to watch: the buffer's own fd (kernel), a snapshot fence (fallback)
        await wait_object(self, lambda fd: backend.implicit_fence(fd, write), timeout, "Buffer.wait_async")

    def __repr__(self) -> str:
        if self._fd < 0:
            return f"<Buffer closed size={self._size}>"
        try:
            name = self.name
        except OSError:
            name = "?"
        return f"<Buffer fd={self._fd} size={self._size} name={name!r} backend={self._backend.name}>"


# new_buffer(fd, size, backend, offset=0): on the compiled path one C call makes and
# fills the Buffer (the same slots as _new_buffer_pure, which is the reference).
_made_in_c = _fast.holder_factory is not None
new_buffer: Callable[..., Buffer] = _new_buffer_pure if not _made_in_c else _fast.holder_factory(
    Buffer, ("_size", "_backend", "_offset", "_access"), (0, None))


def _reduce_buffer(buf: Buffer) -> tuple[object, ...]:
    """multiprocessing's reducer: the fd travels as a ``DupFd`` (see _fd.pickled_fd)."""
    return _rebuild_buffer, (pickled_fd(buf), buf._size, buf._backend.name, buf._offset)


for_multiprocessing(Buffer, _reduce_buffer)


class CpuAccess:
    """A ``with buffer.cpu_access(...)`` bracket: SYNC START on entry, END on exit.
    The default bracket of a buffer is made once and reused, so it keeps only what
    never changes: a weak reference to the buffer, its fd number (a buffer's number
    changes only to -1, which the entry checks) and the backend's call values."""

    __slots__ = ("_ref", "_flags", "_fd", "_call", "_request", "_start", "_end")

    def __init__(self, buffer: Buffer, flags: int) -> None:
        self._ref = weakref.ref(buffer)
        self._flags = flags
        self._fd = buffer._fd
        call: tuple[Callable[[int, int, object], object], int, object, object]
        call = buffer._backend.sync_call(flags)
        self._call, self._request, self._start, self._end = call

    def _sync(self, buf: Buffer, flags: int, exc: OSError | None) -> None:
        """After the fast call failed: a library error stands; a raw OSError (pure) or a
        false result (compiled, ``exc`` None) goes through the backend's checked call,
        which retries EINTR/EAGAIN and raises typed errors."""
        if isinstance(exc, Error):
            raise exc
        buf._backend.sync(self._fd, flags)

    def _held_buffer(self) -> Buffer:
        """The buffer, held (the slow half of ``__enter__``)."""
        buf = self._ref()
        if buf is None:
            raise closed("Buffer")
        hold(buf)
        return buf

    def __enter__(self) -> Buffer:
        buf = self._ref()
        if buf is None:
            raise closed("Buffer")
        hold_append(buf)  # hold(buf), inlined on the hottest path
        if buf._fd < 0:
            release(buf)
            raise closed("Buffer")
        try:
            done = self._call(self._fd, self._request, self._start)
        except BaseException as exc:
            self._start_failed(buf, exc)
        else:
            if not done:  # compiled: false on failure
                self._start_failed(buf, None)
        return buf

    def _start_failed(self, buf: Buffer, exc: BaseException | None) -> None:
        try:
            if exc is not None and not isinstance(exc, OSError):
                raise exc
            self._sync(buf, self._flags, exc)
        except BaseException:
            release(buf)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buf: Buffer = self._ref()  # type: ignore[assignment]  # alive: _held refers to it
        try:
            try:
                done = self._call(self._fd, self._request, self._end)
            except OSError as err:
                self._sync(buf, self._flags | END, err)
            else:
                if not done:  # compiled: false on failure
                    self._sync(buf, self._flags | END, None)
        finally:
            hold_remove(buf)  # release(buf), inlined on the hottest path
            if buf._fd < 0:
                finish(buf)


class TimedCpuAccess(CpuAccess):
    """A bracket with a timeout: SYNC START waits for implicit fences with no limit, so
    the entry first waits for them itself, up to ``timeout`` seconds."""

    __slots__ = ("_timeout",)

    def __init__(self, buffer: Buffer, flags: int, timeout: float) -> None:
        super().__init__(buffer, flags)
        self._timeout = timeout

    def __enter__(self) -> Buffer:
        buf = self._held_buffer()
        try:
            buf._backend.wait_idle(self._fd, bool(self._flags & WRITE), self._timeout, "cpu_access")
            try:
                done = self._call(self._fd, self._request, self._start)
            except OSError as exc:
                self._sync(buf, self._flags, exc)
            else:
                if not done:  # compiled: false on failure
                    self._sync(buf, self._flags, None)
        except BaseException:
            release(buf)
            raise
        return buf
