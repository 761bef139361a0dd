"""The fallback's fences: one end of an AF_UNIX SOCK_SEQPACKET socketpair.

Whoever can signal the fence (a Timeline, the merge reactor) keeps the other end,
the *signal end*. Signaling sends one 8-byte message, the CLOCK_MONOTONIC time, and
closes the signal end. Waiters poll the fence end for POLLIN and read the time with
MSG_PEEK, so the message stays for every holder in every process. If the process
holding the signal end dies before signaling, the kernel closes that end: the fence
end reports end-of-file, which is POLLIN too, so the fence signals at once with an
error status (-ENOENT, what sw_sync gives the fences of a timeline that goes away).
A fence never hangs its waiters on a dead peer.
"""

from __future__ import annotations

import errno as E
import os
import select
import socket
import struct
import time

from ..uapi.fdkind import is_fallback_fence
from ..uapi.ffi import ffi, lib

_PAIR = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_STAMP = struct.Struct("=Q")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_SEND = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
OWNER_GONE = -E.ENOENT


def _pair() -> tuple[int, int]:
    a, b = socket.socketpair(socket.AF_UNIX, _PAIR)
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
    OWNER_GONE if the signal end went away unsignaled."""
    buf = ffi.new("char[8]")
    n = lib.recv(fd, buf, 8, _PEEK)
    if n == 8:
        return 1, _STAMP.unpack(ffi.buffer(buf, 8))[0]
    if n == 0:
        return OWNER_GONE, 0
    return 0, 0


def is_signaled(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def is_fence(fd: int) -> bool:
    return is_fallback_fence(fd)
