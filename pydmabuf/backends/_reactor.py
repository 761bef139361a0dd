"""A background thread that signals fallback fences derived from other fences.

A merged fence must be one pollable fd that any process can wait on, and it must
signal only when *all* its inputs have. Nothing in the kernel offers "all of" on
eventfds, so this thread watches the inputs with epoll and writes the output
eventfd when the last one signals. It runs only while merges are pending.
"""

from __future__ import annotations

import os
import select
import threading
import time

from .._fd import dup_cloexec


class _Merge:
    __slots__ = ("remaining", "output")

    def __init__(self, remaining: set[int], output: int) -> None:
        self.remaining = remaining
        self.output = output


class Reactor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._owner: dict[int, _Merge] = {}  # watched input fd -> its merge
        self._thread: threading.Thread | None = None

    def watch(self, inputs: list[int], output: int) -> None:
        """Signal ``output`` once every fd in ``inputs`` is readable.

        Takes private dups of all fds, so the caller keeps (and may close) its own.
        """
        dups = {dup_cloexec(fd) for fd in inputs}
        merge = _Merge(dups, dup_cloexec(output))
        with self._lock:
            self._start()
            assert self._epoll is not None
            for fd in dups:
                self._owner[fd] = merge
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        # epoll allows registering from other threads while poll() blocks, so new
        # merges need no wakeup channel.
        self._epoll = select.epoll()
        self._thread = threading.Thread(target=self._run, name="pydmabuf-fence-reactor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            assert self._epoll is not None
            events = self._epoll.poll()
            with self._lock:
                for fd, _mask in events:
                    merge = self._owner.pop(fd, None)
                    if merge is None:
                        continue
                    self._epoll.unregister(fd)
                    os.close(fd)
                    merge.remaining.discard(fd)
                    if not merge.remaining:
                        # Inputs are closed first so that a waiter woken by this write
                        # sees no reactor fds left except the output being closed next.
                        os.eventfd_write(merge.output, time.monotonic_ns())
                        os.close(merge.output)
                if not self._owner:
                    self._stop()
                    return

    def _stop(self) -> None:
        # Called with the lock held, from the reactor thread, once nothing is pending.
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._thread = None

    def _after_fork_in_child(self) -> None:
        # The thread did not survive the fork; the parent keeps serving its merges.
        self._lock = threading.Lock()
        for fd in list(self._owner):
            try:
                os.close(fd)
            except OSError:
                pass
        outputs = {m.output for m in self._owner.values()}
        for fd in outputs:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owner.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._thread = None


reactor = Reactor()
os.register_at_fork(after_in_child=reactor._after_fork_in_child)
