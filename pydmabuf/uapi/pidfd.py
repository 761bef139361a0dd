"""Taking an fd out of another process: pidfd_open + pidfd_getfd (Linux 5.6+)."""

from __future__ import annotations

import errno as E
import os
from collections.abc import Callable
from typing import TypeVar

from ..errors import Error, PermissionDeniedError, error, invalid
from . import ops as _ops

PTRACE_HINT = (
    "pidfd_getfd needs ptrace access to the target (PTRACE_MODE_ATTACH_REALCREDS): the "
    "same uid and a dumpable target, or CAP_SYS_PTRACE; with Yama "
    "kernel.yama.ptrace_scope=1 only an ancestor of the target (or a process it named "
    "with prctl(PR_SET_PTRACER)) may do it, 2 needs CAP_SYS_PTRACE, 3 forbids it"
)


def _ptrace_scope() -> str:
    # Bytes: a text file would look up its codec, which imports a module, and a process
    # that dropped privileges may no longer read the standard library's directory.
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", "rb") as f:
            return f"ptrace_scope is {f.read().decode('ascii', 'replace').strip()} here"
    except OSError:
        return "Yama is not active here"


_T = TypeVar("_T")


def wrap_taken(from_fd: Callable[[int], _T], pid: int, fd: int) -> _T:
    """``from_fd`` applied to a duplicate of ``pid``'s ``fd``; closed if it refuses it."""
    new = take_fd(pid, fd)
    try:
        return from_fd(new)
    except BaseException:
        os.close(new)
        raise


def take_fd(pid: int, fd: int) -> int:
    """A close-on-exec duplicate of process ``pid``'s ``fd`` in this process."""
    if not isinstance(pid, int) or pid <= 0 or not isinstance(fd, int) or fd < 0:
        raise invalid(f"from_pid needs a pid > 0 and an fd >= 0, got {pid!r}, {fd!r}")
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        code = exc.errno or E.ESRCH
        hint = "pidfd_open needs Linux 5.3" if code == E.ENOSYS else None
        raise error(code, f"pidfd_open({pid})", hint) from None
    try:
        return _ops.pidfd_getfd(pidfd, fd)
    except PermissionDeniedError as exc:
        raise error(exc.errno or E.EPERM, f"pidfd_getfd(pid {pid}, fd {fd})",
                    f"{PTRACE_HINT}; {_ptrace_scope()}") from None
    except Error as exc:
        code = exc.errno or E.EINVAL
        hints = {E.ENOSYS: "pidfd_getfd needs Linux 5.6", E.EBADF: f"process {pid} has no fd {fd}",
                 E.ESRCH: f"process {pid} has exited"}
        raise error(code, f"pidfd_getfd(pid {pid}, fd {fd})", hints.get(code)) from None
    finally:
        os.close(pidfd)
