"""Bounded waits on one fd with a deadline computed once, and the one place that
says what a ``timeout`` argument may be.

Timeouts are seconds: ``None`` or ``math.inf`` wait forever; any other non-negative
int or float is honoured however large (poll() takes at most INT_MAX ms, so long
waits poll in chunks); negative or NaN is ``InvalidArgumentError`` (a ValueError);
anything else is ``TypeError``.

``select.poll`` already retries EINTR with the *remaining* time (PEP 475); we still
recompute from the deadline on every wakeup so spurious returns cannot extend it.
"""

from __future__ import annotations

import errno as E
import math
import select
import time

from ..errors import error, invalid, timed_out

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
_BAD = select.POLLNVAL  # the number is not an open fd
# A hang-up, or a reset (POLLERR: a socket's peer went away with data unread): the
# event can never come. Only sockets (fallback fences) report these.
_HUP = select.POLLHUP | select.POLLERR
_MAX_MS = 2**31 - 1  # poll(2)'s int timeout
_MAX_S = _MAX_MS / 1000
_monotonic = time.monotonic
_inf = math.inf


def deadline(timeout: float | None, what: str = "timeout") -> float | None:
    """``time.monotonic()`` at which a wait of ``timeout`` seconds ends; None: never."""
    if timeout is None:
        return None
    if type(timeout) is not float and (type(timeout) is not int):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"{what}: timeout must be a number of seconds or None, "
                            f"got {type(timeout).__name__}")
        timeout = float(timeout)
    if not timeout >= 0:  # also catches NaN
        raise invalid(f"{what}: timeout must be >= 0 or None, got {timeout!r}")
    try:
        until = _monotonic() + timeout
    except OverflowError:  # an int beyond any float: longer than the universe will last
        return None
    return None if until == _inf else until


def remaining_ms(until: float | None) -> int | None:
    """poll()'s timeout for a wait ending at ``until``: None blocks, capped at INT_MAX."""
    if until is None:
        return None
    left = until - _monotonic()
    if left >= _MAX_S:  # also keeps a huge finite timeout from overflowing to inf below
        return _MAX_MS
    ms = math.ceil(left * 1000)
    return 0 if ms < 0 else ms


def remaining_s(until: float | None) -> float:
    """epoll.poll()'s timeout for a wait ending at ``until``: -1 blocks, capped."""
    if until is None:
        return -1.0
    left = until - _monotonic()
    return 0.0 if left < 0 else left if left < _MAX_S else _MAX_S


def expired(until: float | None) -> bool:
    return until is not None and _monotonic() >= until


def ready(fd: int, events: int) -> bool:
    """Non-blocking readiness check."""
    poller = select.poll()
    poller.register(fd, events)
    return _check(poller.poll(0), events)


def wait_fd(fd: int, events: int, timeout: float | None, what: str) -> None:
    """Block until ``fd`` reports ``events``; TimeoutError once ``timeout`` seconds pass."""
    until = deadline(timeout, what)
    poller = select.poll()
    poller.register(fd, events)
    if until is None:
        while not _check(poller.poll(), events):
            pass
        return
    while True:
        if _check(poller.poll(remaining_ms(until)), events):
            return
        if _monotonic() >= until:
            raise timed_out(what)


def _check(result: list[tuple[int, int]], events: int) -> bool:
    for _fd, revents in result:
        if revents & _BAD:
            raise error(E.EBADF, "poll: the fd was closed or is invalid")
        if revents & events:
            return True
        if revents & _HUP:
            # Hung up without the event: it can never come, and poll() would report the
            # hang-up again at once, for ever (a spin). Done: the status says how it
            # ended (a fallback fence: OWNER_GONE).
            return True
    return False
