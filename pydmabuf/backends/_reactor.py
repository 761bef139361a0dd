"""A background thread that acts when fallback fences signal.

A merged fence must be one pollable fd that any process can wait on, and it must
signal only when *all* its inputs have. Nothing in the kernel offers "all of" on
sockets, so this thread watches the inputs with epoll and runs an action (signal
the output fence, or drop a buffer's signaled implicit fences) when the last one
signals. It runs only while something is pending. If this process dies first, the
output's signal end closes with it and the merged fence signals with an error.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

from ..uapi.ops import dup_cloexec
from . import fallback_fences as fences


class _Watch:
    __slots__ = ("remaining", "action", "owned")

    def __init__(self, remaining: set[int], action: Callable[[], None], owned: int) -> None:
        self.remaining = remaining
        self.action = action
        self.owned = owned  # an fd the action consumes (a signal end), or -1


class Reactor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._owner: dict[int, _Watch] = {}  # watched input fd (a private dup) -> its watch
        self._thread: threading.Thread | None = None
        self._wake = -1  # an eventfd in the set: cancel() wakes the thread to let it stop

    def signal_when_all(self, inputs: list[int], signal_end: int) -> None:
        """Signal the fence whose signal end is ``signal_end`` (which this takes over)
        once every fd in ``inputs`` is readable. Works on private dups of the inputs,
        so the caller keeps (and may close) its own fds."""
        self.when_all(inputs, lambda: fences.signal(signal_end), owned=signal_end)

    def when_all(self, inputs: list[int], action: Callable[[], None], owned: int = -1) -> _Watch:
        """Run ``action`` in the reactor thread once every fd in ``inputs`` is readable;
        the returned watch can be cancelled."""
        dups = {dup_cloexec(fd) for fd in inputs}
        merge = _Watch(dups, action, owned)
        with self._lock:
            self._start()
            assert self._epoll is not None
            for fd in dups:
                self._owner[fd] = merge
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        return merge

    def cancel(self, watch: _Watch) -> None:
        """Stop a watch whose action is no longer wanted, releasing its fds now; if it
        was the last, the thread (and its epoll set) is gone when this returns."""
        stopping = None
        with self._lock:
            for fd in list(watch.remaining):
                if self._owner.get(fd) is watch:
                    del self._owner[fd]
                    if self._epoll is not None:
                        with contextlib.suppress(OSError):
                            self._epoll.unregister(fd)
                    os.close(fd)
            watch.remaining.clear()
            if not self._owner and self._wake >= 0:
                os.eventfd_write(self._wake, 1)  # nothing left: let the thread stop now
                stopping = self._thread
        if stopping is not None and stopping is not threading.current_thread():
            stopping.join(0.5)  # it stops at once unless a new watch came meanwhile

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        # epoll allows registering from other threads while poll() blocks, so new
        # merges need no wakeup channel.
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="pydmabuf-fence-reactor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            assert self._epoll is not None
            events = self._epoll.poll()
            due: list[Callable[[], None]] = []
            with self._lock:
                for fd, _mask in events:
                    merge = self._owner.pop(fd, None)
                    if merge is None:
                        continue
                    self._epoll.unregister(fd)
                    os.close(fd)
                    merge.remaining.discard(fd)
                    if not merge.remaining:
                        due.append(merge.action)
                done = not self._owner
                if done:
                    self._stop()
            # Actions run outside our lock (they take the backend's), after the inputs
            # were closed, so a waiter they wake finds no reactor fds left but theirs.
            for action in due:
                with contextlib.suppress(Exception):  # never let one action stop the others
                    action()
            if done:
                return

    def _stop(self) -> None:
        # Called with the lock held, from the reactor thread, once nothing is pending.
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
        self._thread = None

    def _after_fork_in_child(self) -> None:
        # The thread did not survive the fork; the parent keeps serving its merges.
        self._lock = threading.Lock()
        owned = {watch.owned for watch in self._owner.values() if watch.owned >= 0}
        for fd in [*self._owner, *owned]:  # signal ends too: a merge dies with its process
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owner.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._wake >= 0:
            with contextlib.suppress(OSError):
                os.close(self._wake)
            self._wake = -1
        self._thread = None


reactor = Reactor()
os.register_at_fork(after_in_child=reactor._after_fork_in_child)
