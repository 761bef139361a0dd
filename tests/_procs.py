"""fork()-based helpers for the cross-process tests: fast (no interpreter start-up,
which matters in the emulated VM) and the child sees only what it is handed."""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections.abc import Callable

import pydmabuf
from pydmabuf import SyncFile


def fork(fn: Callable[[], int | None]) -> int:
    """Run ``fn`` in a child process; its return value (or 1 on an exception) is the
    exit status. The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn() or 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def join(pid: int, timeout: float = 20.0) -> int:
    """The child's exit status (-signal if killed); kills it and fails on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish within {timeout} s")
        time.sleep(0.005)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert join(pid) == -signal.SIGKILL


def fence_from_child(delay: float = 0.0) -> tuple[int, socket.socket, SyncFile]:
    """(pid, socket, fence): a pending fence of a forked child's own Timeline (only
    its maker signals a Timeline). The child signals it ``delay`` s after a byte
    arrives on ``socket``; close the socket and join the pid when done."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child() -> int:
        ours.close()
        with pydmabuf.Timeline() as tl, tl.fence(1) as fence:
            pydmabuf.send(theirs, fence)
            theirs.recv(1)
            time.sleep(delay)
            tl.signal(1)
        return 0

    pid = fork(child)
    theirs.close()
    [fence] = pydmabuf.recv(ours, timeout=20)
    assert isinstance(fence, SyncFile)
    return pid, ours, fence
