"""asyncio support: await a fence on the running loop's reader callbacks.

Each waiter watches its own dup of the fd, so several coroutines can wait on one
object (the loop keeps one callback per fd number) and the object's ``close()`` can
never leave a stale number in the loop's selector. ``close()`` wakes the waiters
first (a close hook) with ClosedError. Cancellation and timeouts remove the reader.
"""

from __future__ import annotations

import asyncio
import errno as E
import os
import select
import threading

from ._fd import FdHolder, add_close_hook, remove_close_hook
from .errors import ClosedError, timed_out
from .uapi import wait as _wait


def _closed_while_waiting(what: str) -> ClosedError:
    return ClosedError(E.EBADF, f"{what}: the object was closed while a coroutine waited on it")


async def wait_fd(owner: FdHolder, fd: int, events: int, timeout: float | None, what: str) -> None:
    """Wait on the running loop until ``fd`` (this waiter's own, closed here) reports
    ``events`` (POLLIN or POLLOUT). ``owner`` is the object whose close() aborts it."""
    try:
        until = _wait.deadline(timeout, what)
        if _wait.ready(fd, events):  # no loop round trip for a signaled fence
            return
        if until is not None and _wait.expired(until):
            raise timed_out(what)
        await _wait_on_loop(owner, fd, events, None if until is None else timeout, what)
    finally:
        os.close(fd)


async def _wait_on_loop(owner: FdHolder, fd: int, events: int, timeout: float | None,
                        what: str) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop_thread = threading.get_ident()

    def wake(exc: BaseException | None = None) -> None:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def on_close() -> None:
        exc = _closed_while_waiting(what)
        if threading.get_ident() == loop_thread:
            wake(exc)
        else:
            loop.call_soon_threadsafe(wake, exc)

    writer = events == select.POLLOUT
    (loop.add_writer if writer else loop.add_reader)(fd, wake)
    add_close_hook(owner, on_close)
    timer = None if timeout is None else loop.call_later(timeout, wake, timed_out(what))
    try:
        while True:
            await fut
            # Level-triggered selectors may report an error state as "ready": confirm
            # (raises on POLLNVAL/POLLERR), and keep waiting on a spurious wakeup.
            if _wait.ready(fd, events):
                return
            fut = loop.create_future()
    finally:
        if timer is not None:
            timer.cancel()
        remove_close_hook(owner, on_close)
        (loop.remove_writer if writer else loop.remove_reader)(fd)
