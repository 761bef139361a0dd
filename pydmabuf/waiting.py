"""Waiting on many fences at once: ``wait_all``, ``wait_any`` and ``FenceSet``.

Sleeping happens in epoll, so a wakeup costs the same whether 1 or 1024 fences are
watched (``poll()`` rescans every fd on each wakeup). Registering costs O(n) per
call, so ``wait_any``/``wait_all`` first try one non-blocking poll(), and
``FenceSet`` keeps its registrations across waits for loops that wait again and
again. The deadline is computed once on entry: a wait interrupted by signals still
returns by it (libsync restarts with the full timeout after EINTR).
"""

from __future__ import annotations

import contextlib
import errno as E
import os
import select
import time
from collections.abc import Iterable
from types import TracebackType

from ._fd import FdHolder, hold, release
from .buffer import Buffer, buffer_parts
from .errors import closed, error, invalid, timed_out
from .syncfile import SyncFile
from .uapi import wait as _wait

Waitable = SyncFile | Buffer
# A hang-up or reset without the awaited event: the event can never come, and a
# level-triggered poll would report it again at once (a spin). Such a member is done,
# as in uapi.wait: its status says how it ended (a fallback fence: OWNER_GONE).
_HUP = select.EPOLLERR | select.EPOLLHUP
_POLLIN = select.POLLIN


def poll_target(obj: object, fd: int, write: bool) -> tuple[int, int, bool]:
    """(fd, poll events, fd_is_new) that say when ``obj``, whose fd the caller holds
    (``fd``), is ready; a new fd is the caller's to close. SyncFiles are readable once
    signaled; a Buffer is ready when its implicit fences let a reader (or, with
    ``write``, a writer) proceed."""
    if isinstance(obj, SyncFile):
        return fd, select.POLLIN, False
    if isinstance(obj, Buffer):
        return buffer_parts(obj)[0].implicit_fence(fd, write)
    raise invalid(f"can only wait on SyncFile and Buffer objects, got {type(obj).__name__}")


_deadline = _wait.deadline
_remaining_s = _wait.remaining_s


class FenceSet:
    """A reusable epoll set of fences and buffers, for waiting repeatedly on a
    changing set (one fence per in-flight frame): ``add`` the new ones, ``wait_any``,
    ``discard`` the ready ones. Each wakeup costs the same however many are watched.
    ``discard`` objects before closing them. Not thread-safe."""

    __slots__ = ("_by_fd", "_entries", "_epoll", "_seq", "_write")

    def __init__(self, fences: Iterable[Waitable] = (), *, write: bool = False) -> None:
        self._epoll = select.epoll()
        self._write = write
        # object -> (insertion number, fd, events, fd is ours); fd -> object
        self._entries: dict[object, tuple[int, int, int, bool]] = {}
        self._by_fd: dict[int, object] = {}
        self._seq = 0
        try:
            for obj in fences:
                self.add(obj)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, obj: object) -> bool:
        return obj in self._entries

    def add(self, obj: Waitable) -> None:
        """Watch ``obj`` (a SyncFile, or a Buffer's implicit fences: on the fallback
        backend, those present when it is added); adding twice does nothing.
        ClosedError if ``obj`` is closed (also by another thread while this runs)."""
        self._check_open()
        if obj in self._entries:
            return
        if not isinstance(obj, (SyncFile, Buffer)):
            raise invalid(f"can only wait on SyncFile and Buffer objects, got {type(obj).__name__}")
        # Held from reading the number to registering it: a close() in another thread
        # meanwhile can't let the set register whatever file reuses the number.
        held = hold(obj)
        try:
            fd, events, new = poll_target(obj, held, self._write)
            try:
                self._epoll.register(fd, events)
            except BaseException:
                if new:
                    os.close(fd)
                raise
        finally:
            release(obj)
        self._entries[obj] = (self._seq, fd, events, new)
        self._by_fd[fd] = obj
        self._seq += 1

    def _check_open(self) -> None:
        if self._epoll.closed:
            raise closed("FenceSet")

    def discard(self, obj: Waitable) -> None:
        """Stop watching ``obj`` (absent: nothing happens)."""
        entry = self._entries.pop(obj, None)
        if entry is None:
            return
        _seq, fd, _events, new = entry
        del self._by_fd[fd]
        with contextlib.suppress(OSError):  # closed while watched: epoll dropped it already
            self._epoll.unregister(fd)
        if new:
            os.close(fd)

    def _poll(self, deadline: float | None, what: str) -> list[object]:
        """Ready objects (unordered); [] only once the deadline has passed. Every pass
        recomputes the time left from the one deadline."""
        entries, by_fd = self._entries, self._by_fd
        while True:
            ready = self._epoll.poll(_remaining_s(deadline), max(1, len(entries)))
            found = []
            for fd, mask in ready:
                obj = by_fd[fd]
                if mask & (entries[obj][2] | _HUP):
                    found.append(obj)
            if found:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def wait_any(self, timeout: float | None = None) -> list[Waitable]:
        """The ready members (at least one) in the order they were added; they stay
        members. TimeoutError after ``timeout`` seconds."""
        self._check_open()
        if not self._entries:
            raise invalid("wait_any() on an empty FenceSet would never return")
        found = self._poll(_deadline(timeout, "wait_any"), "wait_any")
        if not found:
            raise timed_out("wait_any")
        entries = self._entries
        found.sort(key=lambda obj: entries[obj][0])
        return found  # type: ignore[return-value]

    def wait_all(self, timeout: float | None = None) -> None:
        """Until every member is ready (at some moment: fences signal once, a buffer's
        readiness is checked when it is reported). TimeoutError after ``timeout`` seconds."""
        self._check_open()
        deadline = _deadline(timeout, "wait_all")
        muted: list[int] = []  # ready ones stop being reported for the rest of this call
        try:
            while len(muted) < len(self._entries):
                found = self._poll(deadline, "wait_all")
                if not found:
                    raise timed_out("wait_all")
                for obj in found:
                    fd = self._entries[obj][1]
                    # Unregistered, not modified to 0: epoll reports hang-ups regardless.
                    self._epoll.unregister(fd)
                    muted.append(fd)
        finally:
            for fd in muted:
                self._epoll.register(fd, self._entries[self._by_fd[fd]][2])

    def close(self) -> None:
        """Release the epoll set and the fds it made; the members stay open."""
        self._epoll.close()
        for _seq, fd, _events, new in self._entries.values():
            if new:
                os.close(fd)
        self._entries.clear()
        self._by_fd.clear()

    def __del__(self) -> None:
        if not getattr(self, "_epoll", None) or self._epoll.closed:
            return
        with contextlib.suppress(OSError):
            self.close()

    def __enter__(self) -> FenceSet:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._epoll.closed else f"{len(self._entries)} members"
        return f"<FenceSet {state} write={self._write}>"


def _targets(objs: list[object], write: bool
             ) -> tuple[dict[int, int], dict[int, list[int]], list[int], list[FdHolder]]:
    """{fd: events}, {fd: positions in objs}, the fds made for this call and the
    objects held for it (released by ``_done``: a close() meanwhile can't swap files)."""
    events: dict[int, int] = {}
    at: dict[int, list[int]] = {}
    owned: list[int] = []
    held: list[FdHolder] = []
    try:
        for i, obj in enumerate(objs):
            if type(obj) is SyncFile:  # the common case, inlined
                fd, ev = hold(obj), _POLLIN
                held.append(obj)
            elif isinstance(obj, (SyncFile, Buffer)):
                buf_fd = hold(obj)
                held.append(obj)
                if isinstance(obj, SyncFile):
                    fd, ev = buf_fd, _POLLIN
                else:
                    fd, ev, new = buffer_parts(obj)[0].implicit_fence(buf_fd, write)
                    if new:
                        owned.append(fd)
            else:
                raise invalid(f"can only wait on SyncFile and Buffer objects, got {type(obj).__name__}")
            if fd in at:
                at[fd].append(i)
            else:
                at[fd] = [i]
                events[fd] = ev
    except BaseException:
        _done(owned, held)
        raise
    return events, at, owned, held


def _done(owned: list[int], held: list[FdHolder]) -> None:
    for fd in owned:
        os.close(fd)
    for obj in held:
        release(obj)


def _ready_now(events: dict[int, int], what: str) -> list[int]:
    """One non-blocking poll(): much cheaper than building an epoll set (epoll_ctl
    costs microseconds per fd), and often enough, e.g. for frames already done."""
    poller = select.poll()
    for fd, ev in events.items():
        poller.register(fd, ev)
    return _check(poller.poll(0), events, what)


def _check(ready: list[tuple[int, int]], events: dict[int, int], what: str) -> list[int]:
    found = []
    for fd, mask in ready:
        if mask & select.POLLNVAL:
            raise error(E.EBADF, f"{what}: fd {fd} is not open")
        if mask & (events[fd] | _HUP):
            found.append(fd)
    return found


def _block(events: dict[int, int], deadline: float | None, every: bool, what: str) -> list[int]:
    """Sleep in epoll until one (``every``: each) fd is ready; return the ready fds.
    Every pass recomputes the time left from the one deadline (EINTR included)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise timed_out(what)  # timeout=0: the poll() just done was the whole wait
    pending = dict(events)
    found: list[int] = []
    with select.epoll() as ep:
        for fd, ev in pending.items():
            ep.register(fd, ev)
        while True:
            ready = _check(ep.poll(_remaining_s(deadline), len(pending)), pending, what)
            found += ready
            if every:
                for fd in ready:  # done for good: fences signal once
                    ep.unregister(fd)
                    del pending[fd]
                if not pending:
                    return found
            elif found:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out(what)


def wait_any(fences: Iterable[Waitable], timeout: float | None = None, *,
             write: bool = False) -> list[Waitable]:
    """Block until at least one of ``fences`` is ready and return the ready ones, in
    the order given. Buffers count as ready when a reader (``write=True``: a writer)
    may proceed. Raises TimeoutError once ``timeout`` seconds have passed."""
    objs: list[object] = list(fences)
    if not objs:
        raise invalid("wait_any() needs at least one fence")
    deadline = _deadline(timeout, "wait_any")
    events, at, owned, held = _targets(objs, write)
    try:
        found = _ready_now(events, "wait_any") or _block(events, deadline, False, "wait_any")
    finally:
        _done(owned, held)
    return [objs[i] for i in sorted(i for fd in found for i in at[fd])]  # type: ignore[misc]


def wait_all(fences: Iterable[Waitable], timeout: float | None = None, *,
             write: bool = False) -> None:
    """Block until every one of ``fences`` is ready (see ``wait_any``); an empty
    iterable returns at once. Raises TimeoutError once ``timeout`` seconds have passed."""
    objs: list[object] = list(fences)
    deadline = _deadline(timeout, "wait_all")
    events, _at, owned, held = _targets(objs, write)
    try:
        for fd in _ready_now(events, "wait_all"):
            del events[fd]
        if events:
            _block(events, deadline, True, "wait_all")
    finally:
        _done(owned, held)
