"""asyncio support: await fences and buffers on the running loop, adding no fd.

``await sync_file.wait_async()`` and ``await buffer.wait_async()`` wait for one
object; this module waits for many: :func:`wait_any` (the ready ones, at least one),
:func:`wait_all`, and :func:`as_completed` (an async iterator, each as it signals).

Waiters watch the objects' own fds: the loop gets one registration per fd, shared by
every coroutine waiting on it (see :mod:`pydmabuf._aio_watch`), and no waiter adds
an fd. So n awaited fences cost the n fds they already are (900 sync_files can be
awaited at once under the default limit of 1024 fds). ``close()`` of an awaited
object, from any thread, wakes its waiters with ClosedError, and the loop's selector
never keeps its number once it is released; ``detach()`` is refused (EBUSY) while
the object is awaited. Don't ``add_reader`` an awaited object's ``fileno()`` yourself:
the loop keeps one callback per fd.

Fallback buffers are the one case that adds an fd: their implicit fences are waited
for on a snapshot fence exported for each waiter, as ``pydmabuf.wait_any`` does.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

from ._aio_watch import Target, Watch, expire, loop_time, subscribe_held
from ._fd import FdHolder, hold, release
from .buffer import Buffer
from .errors import ClosedError, invalid, timed_out
from .syncfile import SyncFile
from .uapi import wait as _wait
from .waiting import poll_target

__all__ = ["as_completed", "wait_all", "wait_any"]

W = TypeVar("W", bound="SyncFile | Buffer")


def _target(obj: FdHolder, write: bool) -> Target:
    return lambda fd: poll_target(obj, fd, write)


class _Many:
    """Subscriptions for a list of objects (by position), each made under a hold:
    ``ready_now`` lists the positions ready at the start, ``futures`` the others."""

    def __init__(self, objs: list[FdHolder], write: bool, what: str) -> None:
        loop = asyncio.get_running_loop()
        self.ready_now: list[int] = []
        self.futures: dict[asyncio.Future[None], int] = {}
        self._subs: list[tuple[Watch, asyncio.Future[None]]] = []
        try:
            for i, obj in enumerate(objs):
                sub = subscribe_held(loop, obj, _target(obj, write), None, what)
                if sub is None:
                    self.ready_now.append(i)
                else:
                    self._subs.append(sub)
                    self.futures[sub[1]] = i
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for watch, fut in self._subs:
            if fut.done():
                if not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning
            else:
                fut.cancel()
            watch.discard(fut)
        self._subs = []


def _objects(fences: Iterable[object], what: str) -> list[FdHolder]:
    objs = list(fences)
    for obj in objs:
        if not isinstance(obj, (SyncFile, Buffer)):
            raise invalid(f"{what}: can only wait on SyncFile and Buffer objects, got {type(obj).__name__}")
    return objs  # type: ignore[return-value]


async def wait_any(fences: Iterable[W], timeout: float | None = None, *,
                   write: bool = False) -> list[W]:
    """``await`` until at least one of ``fences`` (SyncFiles, or Buffers: ready when a
    reader, or with ``write=True`` a writer, may proceed) is ready, and return the
    ready ones in the order given. TimeoutError after ``timeout`` seconds; ClosedError
    if one is closed meanwhile. Watches the fences' own fds: no fd per call."""
    what = "aio.wait_any"
    objs = _objects(fences, what)
    if not objs:
        raise invalid(f"{what}() needs at least one fence")
    until = _wait.deadline(timeout, what)
    many = _Many(objs, write, what)
    try:
        if many.ready_now:
            return [objs[i] for i in many.ready_now]  # type: ignore[misc]
        if until is not None and _wait.expired(until):
            raise timed_out(what)
        futures = many.futures
        left = None if until is None else _wait.remaining_s(until)
        done, _pending = await asyncio.wait(futures, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise timed_out(what)
        for fut in done:
            fut.result()  # ClosedError, or EBADF from an fd in an error state
        found = [futures[fut] for fut in done]
        # Others may be ready in the same instant: one look at each, without waiting.
        found += [i for fut, i in futures.items() if fut not in done and _ready(objs[i], write)]
        return [objs[i] for i in sorted(found)]  # type: ignore[misc]
    finally:
        many.close()


def _ready(obj: FdHolder, write: bool) -> bool:
    """Whether ``obj`` is ready now (False if it is closed or can't tell)."""
    try:
        fd = hold(obj)
    except ClosedError:
        return False
    try:
        watch_fd, events, new = poll_target(obj, fd, write)
        try:
            return _wait.ready(watch_fd, events)
        finally:
            if new:
                os.close(watch_fd)
    except OSError:
        return False
    finally:
        release(obj)


async def wait_all(fences: Iterable[SyncFile | Buffer], timeout: float | None = None, *,
                   write: bool = False) -> None:
    """``await`` until every one of ``fences`` is ready (see ``wait_any``); an empty
    iterable returns at once. TimeoutError after ``timeout`` seconds."""
    async for _obj in as_completed(fences, timeout, write=write):
        pass


async def as_completed(fences: Iterable[W], timeout: float | None = None, *,
                       write: bool = False) -> AsyncIterator[W]:
    """Yield each of ``fences`` (SyncFiles or Buffers, see ``wait_any``) once it is
    ready: those ready at the start first, in the order given, then the others as
    they signal. ``timeout`` bounds the whole iteration (TimeoutError when it runs
    out); a fence closed meanwhile raises ClosedError. Leaving the loop early stops
    watching the rest (at once with ``aclose()`` or ``contextlib.aclosing``, else
    when the generator is collected). Watches the fences' own fds: no fd per call::

        async for fence in pydmabuf.aio.as_completed(fences, timeout=5):
            handle(fence)
    """
    what = "aio.as_completed"
    objs = _objects(fences, what)
    until = _wait.deadline(timeout, what)
    if not objs:
        return
    loop = asyncio.get_running_loop()
    many = _Many(objs, write, what)
    completed: collections.deque[asyncio.Future[None]] = collections.deque()
    wakeup: list[asyncio.Future[None] | None] = [None]

    def on_done(fut: asyncio.Future[None]) -> None:
        completed.append(fut)
        waiting = wakeup[0]
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    try:
        for i in many.ready_now:
            yield objs[i]  # type: ignore[misc]
        pending = dict(many.futures)
        for fut in pending:
            fut.add_done_callback(on_done)
        while pending:
            while completed:
                fut = completed.popleft()
                i = pending.pop(fut)
                fut.result()  # ClosedError, or EBADF from an fd in an error state
                yield objs[i]  # type: ignore[misc]
            if not pending:
                break
            if until is not None and _wait.expired(until):
                raise timed_out(what)
            waiting = wakeup[0] = loop.create_future()
            timer = None if until is None else loop.call_at(loop_time(loop, until), expire, waiting, what)
            try:
                await waiting
            finally:
                wakeup[0] = None
                if timer is not None:
                    timer.cancel()
    finally:
        for fut in many.futures:
            fut.remove_done_callback(on_done)
        many.close()
