"""The fallback's fences: one end of an AF_UNIX SOCK_SEQPACKET socketpair.

Whoever can signal the fence (a Timeline, the merge reactor) keeps the other end,
the *signal end*. Signaling sends one 8-byte message, the CLOCK_MONOTONIC time, and
closes the signal end. Waiters poll the fence end for POLLIN and read the time with
MSG_PEEK, so the message stays for every holder in every process. If the process
holding the signal end dies before signaling, the kernel closes that end: the fence
end reports end-of-file, which is POLLIN too, so the fence signals at once with an
error status (-ENOENT, what sw_sync gives the fences of a timeline that goes away).
A fence never hangs its waiters on a dead peer, and a hang-up without a message is
never "pending": a socket that polls POLLHUP (and nothing else) can never be
signaled, so it reads as signaled with OWNER_GONE and a wait on it returns at once.
A fence is only ever a *connected* socket (``fdkind.fence_socket_problem``); a
message that is not an 8-byte signal reads as signaled with -EPROTO.
"""

from __future__ import annotations

import errno as E
import os
import select
import socket
import struct
import time

from ..errors import error
from ..uapi.fdkind import is_fallback_fence
from ..uapi.ffi import ffi, lib

_PAIR = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_STAMP = struct.Struct("=Q")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_SEND = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
OWNER_GONE = -E.ENOENT
BAD_SIGNAL = -E.EPROTO  # the signal end sent something that is not a signal
_PENDING = (E.EAGAIN, E.EWOULDBLOCK, E.EINTR)
_NOT_A_FENCE = (E.EBADF, E.ENOTSOCK)


def _pair() -> tuple[int, int]:
    try:
        a, b = socket.socketpair(socket.AF_UNIX, _PAIR)
    except OSError as exc:  # EMFILE above all: the library's error, naming the fd limit
        raise error(exc.errno or E.EIO, "a fallback fence (a socketpair)") from None
    return a.detach(), b.detach()


def new_fence() -> tuple[int, int]:
    """(fence fd, signal fd): a pending fence and the end that signals it."""
    return _pair()


def signaled_fence() -> int:
    fence, signal_end = _pair()
    signal(signal_end)
    return fence


def signal(signal_fd: int) -> None:
    """Signal the fence (now) and close ``signal_fd``."""
    try:
        lib.send(signal_fd, _STAMP.pack(time.monotonic_ns()), 8, _SEND)
    finally:
        os.close(signal_fd)


def status(fd: int) -> tuple[int, int]:
    """(status, timestamp_ns): 1 and the signal time once signaled, 0 while pending,
    OWNER_GONE if the signal end went away unsignaled (end of file, or a socket that
    is not connected), BAD_SIGNAL for a message that is not a signal."""
    buf = ffi.new("char[8]")
    n = lib.recv(fd, buf, 8, _PEEK)
    if n == 8:
        return 1, _STAMP.unpack(ffi.buffer(buf, 8))[0]
    if n > 0:
        return BAD_SIGNAL, 0
    if n == 0:
        return OWNER_GONE, 0
    code = ffi.errno
    if code in _PENDING:
        return 0, 0
    if code in _NOT_A_FENCE:
        raise error(code, "fallback fence status")
    return OWNER_GONE, 0  # ENOTCONN, ECONNRESET, ...: nobody can signal it any more


def is_signaled(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def is_fence(fd: int) -> bool:
    """A connected AF_UNIX seqpacket socket with an unnamed peer (a socketpair end)."""
    return is_fallback_fence(fd)
