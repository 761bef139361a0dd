"""One exception hierarchy for both backends.

Every failure is a :class:`pydmabuf.Error`, which is an :class:`OSError` carrying
``errno``. Kernel failures also inherit the matching builtin subclass, so
``except PermissionError`` and ``except FileNotFoundError`` work as usual. Where the
fix is known, the message ends with a hint.
"""

from __future__ import annotations

import builtins
import errno as E
import operator
import os


class Error(OSError):
    """Base class of every pydmabuf exception (an OSError with ``errno`` set)."""


class UnsupportedError(Error):
    """The kernel (or the active backend) lacks this ioctl or feature."""


class InvalidArgumentError(Error, ValueError):
    """Bad input: rejected before or by the kernel (EINVAL)."""


class ClosedError(Error, ValueError):
    """The object is closed; its old fd number is never touched again."""


class PermissionDeniedError(Error, builtins.PermissionError):
    """EACCES/EPERM: a device node or another process refused us."""


class NotFoundError(Error, builtins.FileNotFoundError):
    """ENOENT: no such heap, device or fence."""


class TimeoutError(Error, builtins.TimeoutError):
    """A wait reached its deadline (ETIMEDOUT)."""


class OutOfMemoryError(Error, builtins.MemoryError):
    """ENOMEM: the heap or the machine cannot satisfy the request."""


class InterruptedError(Error, builtins.InterruptedError):
    """EINTR that we could not retry (the caller's signal handler asked us to stop)."""


class NoSuchProcessError(Error, builtins.ProcessLookupError):
    """ESRCH: the process is gone."""


class BadFileError(Error):
    """EBADF/EBADFD: the fd is not open, or not the kind of file expected."""


class PeerGoneError(Error, builtins.BrokenPipeError):
    """EPIPE: the other end of the socket has closed."""


class PeerResetError(Error, builtins.ConnectionResetError):
    """ECONNRESET: the other end of the socket went away with data unread."""


class PeerRefusedError(Error, builtins.ConnectionRefusedError):
    """ECONNREFUSED: nobody listens there (any more)."""


class WouldBlockError(Error, builtins.BlockingIOError):
    """EAGAIN on a non-blocking socket: try again once it is ready."""


class TooManyOpenFilesError(Error):
    """EMFILE (this process's fd limit, RLIMIT_NOFILE) or ENFILE (the system's): the
    message names the limit and how to raise it."""


class InvalidIndexError(InvalidArgumentError, builtins.IndexError):
    """An index out of range (a frame's plane, a plane's row): EINVAL, and an
    IndexError as a sequence's own would be."""


class ReadOnlyError(PermissionDeniedError, builtins.TypeError):
    """A write through a read-only mapping (``buf.map(write=False)``): EACCES, and a
    TypeError as mmap's own refusal is."""


class BusyError(Error):
    """EBUSY: the object is in use right now (``detach()`` while another thread is inside
    an operation on it or a coroutine awaits it); try again once that is done."""


class MappingInUseError(BusyError, builtins.BufferError):
    """EBUSY: a Mapping cannot be closed while an array, memoryview or DLPack tensor
    still uses its memory; a BufferError as mmap's own refusal is."""


_BY_ERRNO: dict[int, type[Error]] = {
    E.EACCES: PermissionDeniedError,
    E.EPERM: PermissionDeniedError,
    E.ENOENT: NotFoundError,
    E.ENODEV: NotFoundError,
    E.EINVAL: InvalidArgumentError,
    E.ETIMEDOUT: TimeoutError,
    E.ETIME: TimeoutError,
    E.ENOMEM: OutOfMemoryError,
    E.EINTR: InterruptedError,
    E.ESRCH: NoSuchProcessError,
    E.EBADF: BadFileError,
    E.EBADFD: BadFileError,
    E.ENOTTY: UnsupportedError,
    E.EOPNOTSUPP: UnsupportedError,
    524: UnsupportedError,  # ENOTSUPP, the kernel-internal "not supported" exporters return
    E.ENOSYS: UnsupportedError,
    E.EPIPE: PeerGoneError,
    E.ECONNRESET: PeerResetError,
    E.ECONNREFUSED: PeerRefusedError,
    E.EAGAIN: WouldBlockError,
    E.EMFILE: TooManyOpenFilesError,
    E.EBUSY: BusyError,
    E.ENFILE: TooManyOpenFilesError,
}


def error(code: int, what: str, hint: str | None = None) -> Error:
    """The exception for errno ``code`` raised by operation ``what``. EMFILE and ENFILE
    get the fd limit as their hint unless one is given."""
    cls = _BY_ERRNO.get(code, Error)
    if hint is None and cls is TooManyOpenFilesError:
        hint = fd_limit_hint(code)
    message = f"{what}: {os.strerror(code) if code != 524 else 'Operation not supported (ENOTSUPP)'}"
    if hint:
        message += f" ({hint})"
    return cls(code, message)


def fd_limit_hint(code: int = E.EMFILE) -> str:
    """What to do about EMFILE (or ENFILE), naming the limit (asking needs no fd)."""
    if code == E.ENFILE:
        return "the system-wide limit on open files is reached: close files, or raise sysctl fs.file-max"
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    top = "unlimited" if hard == unlimited else str(hard)
    if soft == hard:
        how = ("raise the hard limit as root (LimitNOFILE= for a systemd service, nofile in "
               "/etc/security/limits.conf)")
    else:
        new = "N" if hard == unlimited else top
        how = (f"raise the soft limit towards the hard limit: resource.setrlimit(resource.RLIMIT_NOFILE, "
               f"({new}, {'resource.RLIM_INFINITY' if hard == unlimited else top})) in the program, "
               f"or `ulimit -n {new}` in its shell")
    limit = "unlimited" if soft == unlimited else str(soft)
    return (f"this process may have {limit} open fds (RLIMIT_NOFILE soft limit; hard limit {top}): "
            f"close fds it no longer needs, or {how}")


def check_index(value: object, what: str) -> int:
    """An integer argument: an int or any integer with ``__index__`` (numpy integers),
    not a bool; TypeError otherwise. An exception that ``__index__`` itself raises
    (other than TypeError) propagates, as it does from Python's own ``operator.index``."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def invalid(message: str) -> InvalidArgumentError:
    """The :class:`InvalidArgumentError` (EINVAL) for a bad argument, with ``message``
    as its text; returned, for the caller to raise."""
    return InvalidArgumentError(E.EINVAL, message)


def unsupported(message: str) -> UnsupportedError:
    """The :class:`UnsupportedError` (EOPNOTSUPP) for a feature this kernel or backend
    lacks, with ``message`` as its text; returned, for the caller to raise."""
    return UnsupportedError(E.EOPNOTSUPP, message)


def closed(kind: str) -> ClosedError:
    """The :class:`ClosedError` (EBADF) for an operation on a closed object; ``kind``
    names it ("Buffer", "SyncFile", ...). Returned, for the caller to raise."""
    return ClosedError(E.EBADF, f"operation on a closed {kind}")


def timed_out(what: str) -> TimeoutError:
    """The :class:`TimeoutError` (ETIMEDOUT) for a wait ``what`` that reached its
    deadline; returned, for the caller to raise."""
    return TimeoutError(E.ETIMEDOUT, f"{what}: timed out")


# Hints for failures whose fix is known; keyed by (operation, errno).
HEAP_PERMISSION_HINT = (
    "dma-heap nodes are root-only by default; add the user to a group that owns them, "
    'e.g. a udev rule: SUBSYSTEM=="dma_heap", GROUP="video", MODE="0660"'
)
UDMABUF_PERMISSION_HINT = (
    "/dev/udmabuf is usually root:kvm 0660; add the user to the 'kvm' group "
    "or log in on a local seat (systemd gives it a uaccess ACL)"
)
CMA_HINT = (
    "contiguous (CMA) memory is exhausted or fragmented; free buffers, use the 'system' "
    "heap or udmabuf, or raise cma= on the kernel command line"
)
UDMABUF_EINVAL_HINT = (
    "udmabuf needs page-aligned offset and size, a memfd created with MFD_ALLOW_SEALING "
    "and sealed with F_SEAL_SHRINK but not F_SEAL_WRITE, ranges inside the memfd, and a "
    "total within /sys/module/udmabuf/parameters/size_limit_mb"
)
READONLY_MAP_HINT = "the buffer was exported read-only; map it with write=False"
READONLY_MAPPING_HINT = "this mapping is read-only (map(write=False)); map the buffer with write=True to write"
MAPPING_IN_USE_HINT = (
    "an array, memoryview or DLPack tensor still uses its memory: delete it (del array, "
    "view.release()) first; the memory stays mapped until the last of them goes"
)


def unmappable_hint(exporter: str) -> str:
    """Why a dma-buf cannot be mapped, naming who exported it."""
    if exporter == "nv_dmabuf":
        return ("nv_dmabuf (CUDA) buffers cannot be CPU-mapped; copy through CUDA "
                "(cuMemcpyDtoH) or import the dma-buf into another device instead")
    return (f"the exporter {exporter or '(unknown)'!r} does not support CPU mapping of its "
            "dma-bufs; copy through the device's own API")


# Which kernel added each ioctl, for the hint on ENOTTY.
ENOTTY_HINTS = {
    "DMA_BUF_IOCTL_SYNC": "DMA_BUF_IOCTL_SYNC needs Linux 4.6",
    "DMA_BUF_SET_NAME": "buffer names need Linux 5.3",
    "DMA_BUF_IOCTL_EXPORT_SYNC_FILE": "needs Linux 6.0 built with CONFIG_SYNC_FILE (not Debian's cloud kernels)",
    "DMA_BUF_IOCTL_IMPORT_SYNC_FILE": "needs Linux 6.0 built with CONFIG_SYNC_FILE (not Debian's cloud kernels)",
    "SYNC_IOC_MERGE": "sync_file merge needs Linux 4.7 with CONFIG_SYNC_FILE",
    "SYNC_IOC_FILE_INFO": "sync_file info needs Linux 4.7 with CONFIG_SYNC_FILE",
    "SYNC_IOC_SET_DEADLINE": "fence deadlines need Linux 6.8",
}


def check_name(name: object, what: str = "name") -> str:
    """A name argument: ``str`` or TypeError (None is handled by callers)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    return name
