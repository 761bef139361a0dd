"""Bounded waits on one fd with a deadline computed once.

``select.poll`` already retries EINTR with the *remaining* time (PEP 475); we still
recompute from the deadline on every wakeup so spurious returns cannot extend it.
"""

from __future__ import annotations

import errno as E
import math
import select
import time

from .errors import error, timed_out

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
_BAD = select.POLLNVAL | select.POLLERR


def ready(fd: int, events: int) -> bool:
    """Non-blocking readiness check."""
    poller = select.poll()
    poller.register(fd, events)
    return _check(poller.poll(0), events)


def wait_fd(fd: int, events: int, timeout: float | None, what: str) -> None:
    """Block until ``fd`` reports ``events``; TimeoutError once ``timeout`` seconds pass."""
    poller = select.poll()
    poller.register(fd, events)
    if timeout is None:
        while not _check(poller.poll(), events):
            pass
        return
    if timeout < 0 or math.isnan(timeout):
        raise error(E.EINVAL, f"{what}: timeout must be >= 0 or None")
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if _check(poller.poll(max(0, math.ceil(remaining * 1000))), events):
            return
        if time.monotonic() >= deadline:
            raise timed_out(what)


def _check(result: list[tuple[int, int]], events: int) -> bool:
    for _fd, revents in result:
        if revents & _BAD:
            raise error(E.EBADF, "poll: the fd was closed or is invalid")
        if revents & events:
            return True
    return False
