"""What an fd is, decided from the fd itself: a dma-buf (any exporter), a sync_file,
or the fallback's stand-ins (a sealed memfd, a socketpair end). The answer picks the
backend whose semantics apply, whatever allocators this machine has.

Cheap by design, since ``Buffer.from_fd`` and ``recv`` run it on every fd: one
``fstat`` for a dma-buf (the dma-buf filesystem's device number is learned once with
``fstatfs``), ``fstat`` + ``F_GET_SEALS`` for a memfd, one ``readlink`` for a fence.
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

# st_dev -> is the dma-buf filesystem (one superblock, so one device number), learned
# with fstatfs the first time a device is seen. Read by hot callers as a plain dict.
DMA_BUF_DEVS: dict[int, bool] = {}
_dma_buf_devs = DMA_BUF_DEVS
_fstat = os.fstat
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_S_IFSOCK = stat.S_IFSOCK
_AF_UNIX = int(socket.AF_UNIX)
_SEQPACKET = int(socket.SOCK_SEQPACKET)
_SOL = int(socket.SOL_SOCKET)
_SO_DOMAIN = int(socket.SO_DOMAIN)
_SO_TYPE = int(socket.SO_TYPE)
TMPFS_MAGIC = 0x01021994  # memfds live on the kernel's internal tmpfs (shm) mount
_memfd_devs: dict[int, bool] = {}  # st_dev -> is a tmpfs (not hugetlbfs, not a disk)


def _stat(fd: int) -> os.stat_result:
    try:
        return _fstat(fd)
    except OverflowError:
        raise invalid(f"fd {fd} is out of range") from None
    except OSError as exc:
        raise error(exc.errno or E.EBADF, f"fd {fd}") from None


def buffer_kind(fd: int) -> tuple[str, int]:
    """(DMA_BUF or MEMFD, size in bytes) of a buffer fd; InvalidArgumentError for any
    other file, including a memfd that may still shrink (mapping it could SIGBUS)."""
    try:
        st = _fstat(fd)
    except (OSError, OverflowError):
        st = _stat(fd)  # raises the library's error
    if _dma_buf_devs.get(st.st_dev) and not st.st_mode & _S_IFMT:
        return DMA_BUF, st.st_size  # the common case: a dma-buf filesystem seen before
    fmt = st.st_mode & _S_IFMT
    if fmt == 0:  # pseudo files: dma-bufs, anon inodes, ...
        dev = st.st_dev
        is_dma_buf = _dma_buf_devs.get(dev)
        if is_dma_buf is None:
            is_dma_buf = _dma_buf_devs[dev] = _ops.fs_magic(fd) == _ops.DMA_BUF_MAGIC
        if is_dma_buf:
            return DMA_BUF, st.st_size
    elif fmt == _S_IFREG:
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        on_tmpfs = _memfd_devs.get(st.st_dev)
        if on_tmpfs is None:
            # Not hugetlbfs: a sealed hugetlb memfd with punched holes can still SIGBUS
            # when the huge page pool runs dry.
            on_tmpfs = _memfd_devs[st.st_dev] = _ops.fs_magic(fd) == TMPFS_MAGIC
        if seals & F_SEAL_SHRINK and on_tmpfs:
            return MEMFD, st.st_size
        raise invalid(f"fd {fd} is a regular file but not a (tmpfs) memfd sealed against shrinking "
                      "(F_SEAL_SHRINK): mapping it could fault if it shrank")
    raise invalid(f"fd {fd} is not a dma-buf or a sealed memfd ({_describe(fd)})")


def fence_kind(fd: int) -> str:
    """SYNC_FILE or FALLBACK_FENCE; InvalidArgumentError for any other file."""
    try:
        mode = _fstat(fd).st_mode & _S_IFMT
    except (OSError, OverflowError):
        mode = _stat(fd).st_mode & _S_IFMT  # raises the library's error
    if mode == _S_IFSOCK:
        if is_fallback_fence(fd):
            return FALLBACK_FENCE
    elif mode == 0:  # an anon inode: eventfd, epoll, sync_file... only the link tells
        link = _describe(fd)
        if link == "anon_inode:sync_file":
            return SYNC_FILE
    raise invalid(f"fd {fd} is not a sync_file or a fallback fence: {_describe(fd)}")


def is_fallback_fence(fd: int) -> bool:
    """Whether ``fd`` is a socket of the fallback fences' kind (AF_UNIX, SEQPACKET):
    two getsockopt calls on a socket object that borrows the fd (no detection, no
    enums), since readlink on /proc costs several microseconds."""
    try:
        sock = socket.socket(_AF_UNIX, _SEQPACKET, 0, fd)
    except (OSError, ValueError, OverflowError):
        return False
    try:
        return sock.getsockopt(_SOL, _SO_DOMAIN) == _AF_UNIX and sock.getsockopt(_SOL, _SO_TYPE) == _SEQPACKET
    except OSError:
        return False
    finally:
        sock.detach()


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        code = exc.errno or E.EBADF
        raise error(E.EBADF if code == E.ENOENT else code, f"fd {fd}") from None
