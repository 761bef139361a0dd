"""The loop side of :mod:`pydmabuf.aio`: one registration per fd number and loop,
shared by every coroutine waiting on it, and ``wait_object``, what ``wait_async``
of SyncFile and Buffer awaits. Knows fds and fd-owning objects, not their classes
(so the public objects can use it without an import circle).

A waiter registers the object's own fd with the loop (``loop.add_reader``, or
``add_writer`` for a buffer's POLLOUT). The loop keeps one callback per fd number and
direction, so every coroutine waiting on the same number on one loop shares one
registration, a *watch* (a per-loop table: fd -> futures): the first waiter makes it,
and it goes when the fd is ready, when the last waiter gives up (timeout,
cancellation), or when the object is closed.

The loop's selector never keeps a stale number: ``close()`` of the object, from any
thread, runs the watch's close hook before it releases the number. In the loop's
thread the hook removes the registration at once; from another thread it takes a
hold (see :mod:`pydmabuf._fd`), so the number stays open until the loop's thread has
removed the registration and given the hold back. Either way the waiters wake with
ClosedError. ``detach()`` is refused (EBUSY) while the object is awaited (the watch
is a *busy* close hook).
"""

from __future__ import annotations

import asyncio
import errno as E
import os
import select
import threading
from collections.abc import Callable

from ._fd import FdHolder, add_close_hook, hold, hold_append, hold_remove, release, remove_close_hook
from .errors import ClosedError, Error, error, timed_out
from .uapi import wait as _wait

__all__ = ["Target", "Watch", "expire", "loop_time", "subscribe_held", "sync_file_target", "wait_object"]

# fd held -> (fd to watch, poll events, whether that fd is new: the watch's to close)
Target = Callable[[int], "tuple[int, int, bool]"]
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT


def _closed_while_waiting(owner: FdHolder) -> ClosedError:
    return ClosedError(E.EBADF, f"the {type(owner).__name__} was closed while a coroutine waited on it")


class Watch:
    """One loop registration of one fd number in one direction, shared by every
    future waiting on it. Also the owner's close hook (``busy``: see _fd.detach)."""

    __slots__ = ("loop", "key", "owner", "fd", "events", "own_fd", "futures", "thread", "done")
    busy = True

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[object, int, bool],
                 owner: FdHolder, fd: int, events: int, own_fd: bool) -> None:
        self.loop = loop
        self.key = key
        self.owner = owner
        self.fd = fd
        self.events = events
        self.own_fd = own_fd  # a snapshot fence made for this watch: closed with it
        self.futures: list[asyncio.Future[None]] = []
        self.thread = threading.get_ident()  # the loop's
        self.done = False

    def start(self) -> None:
        if self.events == _POLLOUT:
            self.loop.add_writer(self.fd, self._on_ready)
        else:
            self.loop.add_reader(self.fd, self._on_ready)
        _watches[self.key] = self
        add_close_hook(self.owner, self)

    def _on_ready(self) -> None:
        """The loop saw the fd ready: confirm (a level-triggered selector reports an
        error state as ready; POLLNVAL/POLLERR raise), then wake everyone."""
        try:
            if not _wait.ready(self.fd, self.events):
                return  # spurious: keep watching
            exc: BaseException | None = None
        except OSError as err:
            exc = err
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        """Wake every waiter (with ``exc`` if given) and stop watching (loop thread)."""
        futures, self.futures = self.futures, []
        self._stop()
        if self.loop.is_closed():
            return  # its futures can't be woken (nor anyone waiting on them)
        for fut in futures:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    def _stop(self) -> None:
        """Remove the registration (loop thread); idempotent."""
        if self.done:
            return
        self.done = True
        if _watches.get(self.key) is self:
            del _watches[self.key]
        remove_close_hook(self.owner, self)
        if not self.loop.is_closed():
            if self.events == _POLLOUT:
                self.loop.remove_writer(self.fd)
            else:
                self.loop.remove_reader(self.fd)
        if self.own_fd:
            os.close(self.fd)

    def discard(self, fut: asyncio.Future[None]) -> None:
        """A waiter gave up (or is done): the last one out stops the watch."""
        try:
            self.futures.remove(fut)
        except ValueError:
            return
        if not self.futures:
            self._stop()

    # --- the close hook -------------------------------------------------------------
    def __call__(self) -> None:
        """``owner.close()`` (any thread), before it releases the number."""
        if self.done:
            return
        if threading.get_ident() == self.thread:
            self._finish(_closed_while_waiting(self.owner))
            return
        # Another thread: the registration can only go in the loop's thread, so the
        # number stays ours (a hold) until it has; close() sees the hold and leaves
        # closing the number to our release.
        hold_append(self.owner)
        try:
            self.loop.call_soon_threadsafe(self._closed_elsewhere)
        except RuntimeError:  # the loop is closed: its selector is gone with it
            hold_remove(self.owner)
            if _watches.get(self.key) is self:
                del _watches[self.key]

    def _closed_elsewhere(self) -> None:
        try:
            self._finish(_closed_while_waiting(self.owner))
        finally:
            release(self.owner)  # the last one out closes the number


# (loop, fd, for writing) -> its watch. Only the loop's thread adds and removes its
# own entries; the key keeps loops apart.
_watches: dict[tuple[object, int, bool], Watch] = {}


def _subscribe(loop: asyncio.AbstractEventLoop, owner: FdHolder, fd: int, events: int,
               own_fd: bool) -> tuple[Watch, asyncio.Future[None]]:
    """A future that completes when ``fd`` reports ``events`` (or fails when ``owner``
    is closed). Call with ``owner`` held; an ``own_fd`` fd passes to the watch."""
    key = (loop, fd, events == _POLLOUT)
    watch = _watches.get(key)
    if watch is None or watch.done:
        watch = Watch(loop, key, owner, fd, events, own_fd)
        try:
            watch.start()
        except BaseException:
            watch.own_fd = False  # the caller still owns (and closes) the fd
            watch._stop()
            raise
    fut: asyncio.Future[None] = loop.create_future()
    watch.futures.append(fut)
    if owner.closed:  # closed in another thread before the hook was in place
        watch._finish(_closed_while_waiting(owner))
    return watch, fut


def expire(fut: asyncio.Future[None], what: str) -> None:
    if not fut.done():
        fut.set_exception(timed_out(what))


def sync_file_target(fd: int) -> tuple[int, int, bool]:
    return fd, _POLLIN, False


def _watched(target: Target, fd: int, what: str) -> tuple[int, int, bool]:
    try:
        return target(fd)
    except OSError as exc:  # EMFILE from the fallback's snapshot fence: the library's error
        if exc.errno in (E.EMFILE, E.ENFILE) and not isinstance(exc, Error):
            raise error(exc.errno, what) from None
        raise


async def wait_object(owner: FdHolder, target: Target, timeout: float | None, what: str) -> None:
    """Wait on the running loop until ``owner`` is ready: ``target(fd)`` says what to
    watch. ClosedError if ``owner`` is (or gets) closed; TimeoutError after ``timeout``."""
    until = _wait.deadline(timeout, what)
    loop = asyncio.get_running_loop()
    sub = subscribe_held(loop, owner, target, until, what)
    if sub is None:
        return  # ready already: no loop round trip
    watch, fut = sub
    timer = None if until is None else loop.call_at(loop_time(loop, until), expire, fut, what)
    try:
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        watch.discard(fut)


def subscribe_held(loop: asyncio.AbstractEventLoop, owner: FdHolder, target: Target,
                    until: float | None, what: str) -> tuple[Watch, asyncio.Future[None]] | None:
    """None if ``owner`` is ready now, else its subscription; made under a hold, so
    a close() in another thread can't swap the file under it."""
    fd = hold(owner)
    try:
        watch_fd, events, new = _watched(target, fd, what)
        try:
            if _wait.ready(watch_fd, events):
                return None
            if until is not None and _wait.expired(until):
                raise timed_out(what)
            sub = _subscribe(loop, owner, watch_fd, events, new)
            new = False  # the watch's now
            return sub
        finally:
            if new:
                os.close(watch_fd)
    finally:
        release(owner)


def loop_time(loop: asyncio.AbstractEventLoop, until: float) -> float:
    """The loop's clock reading at monotonic time ``until``."""
    return loop.time() + _wait.remaining_s(until)


