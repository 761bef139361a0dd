"""Timeline sources in forked children: only the process that made a Timeline keeps
what signals its fences.

A kernel or fallback fence signals when its owner dies only once every copy of what
signals it is closed: the fallback's signal ends (socketpair ends), the kernel's
sw_sync or vgem fd (vgem signals a file's fences when the file goes). A forked child
inherits copies of them all, and as long as it lived the owner's death would leave the
fences pending (vgem: until its own ~10 s timer). So a forked child closes its copies
at once, and its copy of the source is *forked*: ``fence()`` and ``signal()`` raise
ClosedError saying why, ``close()`` does nothing. A child that should signal fences
makes a Timeline of its own and sends them (``pydmabuf.send``).

Every tracked source's lock is taken around ``fork()``, so a child never inherits a
fence half made by another thread (its fd made but not yet on the source's books).
"""

from __future__ import annotations

import errno as E
import os
import threading
import weakref
from typing import Protocol

from ..errors import ClosedError


class ForkAware(Protocol):
    _lock: threading.Lock

    def _after_fork_in_child(self, parent: int) -> None:
        """Close this process's copies of the source's fds; fence() and signal() now
        raise ``forked_error(parent)``. Called with no other thread alive."""


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_locked: list[threading.Lock] = []


def track(source: ForkAware) -> None:
    _live.add(source)


def forked_error(parent: int) -> ClosedError:
    return ClosedError(E.EBADF, f"operation on a Timeline made by process {parent}, in a forked "
                       "child: only the process that made a Timeline signals its fences or makes "
                       "new ones (fork closed the child's copies of its fds, so that the fences "
                       "signal when that process dies); make a Timeline in the child and send its "
                       "fences instead")


def _before_fork() -> None:
    for source in list(_live):
        source._lock.acquire()
        _locked.append(source._lock)


def _after_fork_in_parent() -> None:
    while _locked:
        _locked.pop().release()


def _after_fork_in_child() -> None:
    _locked.clear()  # each source makes itself a new lock
    parent = os.getppid()
    for source in list(_live):
        source._lock = threading.Lock()
        source._after_fork_in_child(parent)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
