"""fork()-based helpers for the cross-process tests: fast (no interpreter start-up,
which matters in the emulated VM) and the child sees only what it is handed."""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable


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
