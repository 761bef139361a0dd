"""What an fd is, decided from the fd itself: a dma-buf (any exporter), a sync_file,
or the fallback's stand-ins (a sealed memfd, a socketpair end). The answer picks the
backend whose semantics apply, whatever allocators this machine has.

Classify a stranger's fd without asking it. A received fd may be a file on a file
system its sender serves (FUSE): ``fstat``, ``fstatfs``, ``getxattr``, ``lseek`` and
``ioctl`` on it wait for that server, which can keep the caller waiting for ever (in
D state once the request was read). So only what the kernel itself knows is asked
until the fd has shown it is one of ours, each on the kernel's own file systems:

- ``statx(AT_EMPTY_PATH | AT_STATX_DONT_SYNC)`` (``ops.cached_stat``): mode, size and
  device number from the VFS and the inode's cached attributes; FUSE, NFS, CIFS and
  ceph answer it from their caches without a round trip;
- ``readlink /proc/self/fd/N``: the name the kernel gives the file
  (``/dmabuf:NAME``, ``anon_inode:sync_file``, ``socket:[INO]``,
  ``/memfd:NAME (deleted)``). A path on a mount (also one in another mount
  namespace) always starts with ``/``, so ``anon_inode:`` and ``socket:`` names
  cannot be forged; ``/dmabuf:`` and ``/memfd:`` can, so those are never trusted
  from the name alone;
- ``/proc/self/fdinfo/N``: a dma-buf's shows ``exp_name:`` (only the dma-buf
  file's own show_fdinfo writes that line).

A device number names one superblock, and the two file systems buffers live on are
the kernel's internal mounts, created at boot and never unmounted: the dma-buf
file system (learned the first time a file shows both the ``/dmabuf:`` name and an
``exp_name:`` line) and the shm mount every memfd is on (learned from a memfd of
our own). A buffer fd whose device number is one of those is a dma-buf or a shmem
file, and only then is ``F_GET_SEALS`` asked (shmem answers it). So the common
case is one statx (plus ``F_GET_SEALS`` for a memfd), and a fence one readlink or
three socket calls (``getsockname``, ``getsockopt``, ``getpeername``: the socket
layer answers them, with ENOTSOCK for any other file; no file system is asked).
"""

from __future__ import annotations

import errno as E
import fcntl
import os
import socket
import stat

from ..errors import error, invalid
from . import ops as _ops

DMA_BUF = "dma-buf"
MEMFD = "memfd"
SYNC_FILE = "sync_file"
FALLBACK_FENCE = "fallback fence"  # one end of an AF_UNIX seqpacket socketpair
F_SEAL_SHRINK = 0x2

# st_dev of the dma-buf file system -> True, set once a file on it has shown that it
# is a dma-buf (see the module doc). Only True entries: a device number nobody vouched
# for is looked at again. Read by hot callers as a plain dict.
DMA_BUF_DEVS: dict[int, bool] = {}
_dma_buf_devs = DMA_BUF_DEVS
_cached_stat = _ops.cached_stat
_readlink = os.readlink
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_AF_UNIX = int(socket.AF_UNIX)
_SEQPACKET = int(socket.SOCK_SEQPACKET)
_SOL = int(socket.SOL_SOCKET)
_SO_TYPE = int(socket.SO_TYPE)
_OUT_OF_FDS = (E.EMFILE, E.ENFILE)
_shm_dev: int | None = None  # st_dev of the kernel's shm mount (memfds), learned on first need
_sockets_first = False  # fence_kind: whether the last fence was a socket
NOT_A_SOCKET = "not a socket"
_MFD_CLOEXEC = 0x1
_MFD_NOEXEC_SEAL = 0x8  # what vm.memfd_noexec=2 requires


def buffer_kind(fd: int) -> tuple[str, int]:
    """(DMA_BUF or MEMFD, size in bytes) of a buffer fd; InvalidArgumentError for any
    other file, including a memfd that may still shrink (mapping it could SIGBUS).
    Nothing that a file system's server answers is asked (see the module doc)."""
    try:
        mode, size, dev = _cached_stat(fd)
    except (OSError, OverflowError) as exc:
        raise _stat_error(fd, exc) from None
    return buffer_kind_of(fd, mode, size, dev)


def buffer_kind_of(fd: int, mode: int, size: int, dev: int) -> tuple[str, int]:
    """buffer_kind for a caller that has ``fd``'s ``ops.cached_stat`` already."""
    fmt = mode & _S_IFMT
    if not fmt:
        if _dma_buf_devs.get(dev):
            return DMA_BUF, size  # the common case: the dma-buf file system, known
    elif fmt == _S_IFREG and dev == _shm_dev:
        return MEMFD, _sealed_size(fd, size)
    return _first_sight(fd, fmt, size, dev)


def _first_sight(fd: int, fmt: int, size: int, dev: int) -> tuple[str, int]:
    """buffer_kind for a device number not known yet: a dma-buf shows it with both its
    name and its fdinfo, a memfd with the shm mount's device number."""
    global _shm_dev
    link = _describe(fd)
    if not fmt and link.startswith("/dmabuf:") and _fdinfo_shows_exporter(fd):
        _dma_buf_devs[dev] = True
        return DMA_BUF, size
    if fmt == _S_IFREG:
        if _shm_dev is None:
            _shm_dev = _learn_shm_dev()
        if dev == _shm_dev:
            return MEMFD, _sealed_size(fd, size)
        raise invalid(f"fd {fd} is a regular file but not a memfd ({link}): buffers are dma-bufs "
                      "or memfds sealed against shrinking")
    raise invalid(f"fd {fd} is not a dma-buf or a sealed memfd ({link})")


def _sealed_size(fd: int, size: int) -> int:
    """``size`` if shmem file ``fd`` is sealed against shrinking; F_GET_SEALS is the
    kernel's shmem code, never a server's."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0
    if not seals & F_SEAL_SHRINK:
        raise invalid(f"fd {fd} is a memfd that is not sealed against shrinking (F_SEAL_SHRINK): "
                      "mapping it could fault if it shrank")
    return size


def _learn_shm_dev() -> int:
    """The device number of the shm mount, from a memfd of our own (-1 if none can be
    made: then no memfd is taken for a buffer)."""
    for flags in (_MFD_CLOEXEC, _MFD_CLOEXEC | _MFD_NOEXEC_SEAL):
        try:
            probe = os.memfd_create("pydmabuf-probe", flags)
        except OSError as exc:
            if exc.errno in _OUT_OF_FDS:  # passing: say so, and learn it next time
                raise error(exc.errno, "classifying a buffer fd needs one more fd") from None
            continue
        try:
            return os.fstat(probe).st_dev  # our own file: nobody else's server
        finally:
            os.close(probe)
    return -1


def _fdinfo_shows_exporter(fd: int) -> bool:
    """Whether /proc/self/fdinfo/N has the dma-buf file's ``exp_name:`` line (written by
    dma_buf_show_fdinfo and nothing else; the generic lines are numbers only)."""
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _OUT_OF_FDS:  # not "no dma-buf": we could not look
            raise error(exc.errno, "classifying a buffer fd needs one more fd") from None
        return False
    try:
        text = os.read(info, 4096)
    except OSError:
        return False
    finally:
        os.close(info)
    return b"\nexp_name:" in text


def fence_kind(fd: int) -> str:
    """SYNC_FILE or FALLBACK_FENCE; InvalidArgumentError for any other file. The
    kernel's name for the file (readlink), which no file system can forge for these
    two kinds, or the socket checks of ``fence_socket_problem`` (calls that only
    sockets answer): whichever found the kind of the last fence goes first, since a
    process mostly meets one kind (a readlink costs about as much as the socket checks)."""
    global _sockets_first
    if _sockets_first:
        problem = fence_socket_problem(fd)
        if problem is None:
            return FALLBACK_FENCE
        if problem is not NOT_A_SOCKET:
            raise invalid(f"fd {fd} is a socket but not a fallback fence: {problem}")
    link = _describe(fd)
    if link == "anon_inode:sync_file":
        _sockets_first = False
        return SYNC_FILE
    if link.startswith("socket:") and not _sockets_first:
        problem = fence_socket_problem(fd)
        if problem is None:
            _sockets_first = True
            return FALLBACK_FENCE
        raise invalid(f"fd {fd} is a socket but not a fallback fence: {problem}")
    raise invalid(f"fd {fd} is not a sync_file or a fallback fence: {link}")


def fence_socket_problem(fd: int) -> str | None:
    """Why ``fd`` is not a fallback fence (NOT_A_SOCKET if it is no socket at all), or
    None if it is one: an AF_UNIX SOCK_SEQPACKET socket *connected* to an unnamed peer,
    as one end of a socketpair is. An unconnected socket would read as a fence forever
    hung up: never one. Calls on a socket object that borrows the fd (no detection, no
    enums); only sockets answer them (a file gets ENOTSOCK from the kernel)."""
    try:
        sock = socket.socket(_AF_UNIX, _SEQPACKET, 0, fd)  # getsockname: ENOTSOCK, EBADF
    except (OSError, ValueError, OverflowError):
        return NOT_A_SOCKET
    try:
        if sock.getsockopt(_SOL, _SO_TYPE) != _SEQPACKET:
            return "not a SOCK_SEQPACKET socket"
        try:
            # '' only for an AF_UNIX socket whose peer has no address (a socketpair end);
            # other families give tuples, named peers their address.
            peer = sock.getpeername()
        except OSError as exc:
            if exc.errno == E.ENOTCONN:
                return "not connected (a fence is one end of a socketpair)"
            raise
        if peer != "":
            return f"connected to {peer!r}, not to the other end of a socketpair"
        return None
    except OSError:
        return NOT_A_SOCKET
    finally:
        sock.detach()


def is_fallback_fence(fd: int) -> bool:
    """Whether ``fd`` is a fallback fence: see ``fence_socket_problem``."""
    return fence_socket_problem(fd) is None


def _stat_error(fd: int, exc: OSError | OverflowError) -> OSError:
    if isinstance(exc, OverflowError):
        return invalid(f"fd {fd} is out of range")
    code = exc.errno or E.EBADF
    if code == E.EBADF:
        return error(E.EBADF, f"fd {fd}")
    # EACCES from a FUSE mount this process may not use, ...: whatever it is, not ours.
    return invalid(f"fd {fd} is not a dma-buf or a sealed memfd ({_describe(fd)}: {os.strerror(code)})")


def _describe(fd: int) -> str:
    """The kernel's name for the file (readlink /proc/self/fd/N): procfs and the
    dentry cache only, never the file's own file system."""
    try:
        return _readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        code = exc.errno or E.EBADF
        raise error(E.EBADF if code == E.ENOENT else code, f"fd {fd}") from None
