"""BufferPool: a fixed set of buffers lent out and taken back, never re-allocated.

Allocating a dma-buf costs a syscall and, on a heap, zeroing every page (milliseconds
for a camera frame); CMA areas fragment when buffers come and go. A pool allocates
``count`` buffers once and lends them: ``with pool.acquire() as buf:`` gives one back
at the end of the block, *not* closed and *not* cleared, so the next borrower sees
the previous contents (clear it yourself if that matters).

Lending costs no allocation: every buffer has one ``Lease`` made with it, and the
free list is a deque whose ``pop``/``append`` are atomic, so the uncontended path
takes no lock. Waiting (all ``count`` lent) uses a Condition; a returner notifies it
only when someone waits.
"""

from __future__ import annotations

import collections
import errno
import resource
import threading
from collections.abc import Iterable
from types import TracebackType

from .allocator import Allocator
from .buffer import Buffer, encode_name
from .errors import check_index, check_name, closed, error, invalid, timed_out
from .heap import check_size
from .uapi.wait import deadline, expired, remaining_s


def _check_fd_budget(count: int) -> None:
    """A pool of ``count`` buffers holds ``count`` fds at least: refuse one that cannot fit
    under this process's fd limit before allocating (as the channel's Producer does)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and count >= soft:
        raise error(errno.EMFILE, f"BufferPool: a pool of {count} buffers (one fd each at least)")


class Lease:
    """One pool buffer, lent. ``with lease as buf:`` returns it at the end of the
    block; ``pool.release(buf)`` does the same for ``take()``."""

    __slots__ = {
        "_pool": "The BufferPool it came from.",
        "buffer": "The lent :class:`pydmabuf.Buffer`; the pool's again once the lease is returned.",
        "_out": "True while lent.",
        "_slot": "Its place in the pool: the buffer's name and its replacement's.",
        "_push": "The pool's give-back (bound once).",
    }

    def __init__(self, pool: BufferPool, buffer: Buffer, slot: int) -> None:
        self._pool = pool
        self.buffer = buffer
        self._out = False
        self._push = pool._push
        self._slot = slot  # its place in the pool: the buffer's name and its replacement's

    def __enter__(self) -> Buffer:
        if not self._out:
            raise invalid("this lease was already returned to its pool; acquire() again")
        return self.buffer

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._out:  # the pool's give-back, inlined: it is half of every lend
            self._out = False
            if self.buffer.closed:
                self._pool._came_back_closed(self)
            else:
                self._push(self)
            if self._pool._attention:  # someone waits, or the pool closed meanwhile
                self._pool._attend()

    def __repr__(self) -> str:
        return f"<Lease {'lent' if self._out else 'returned'} {self.buffer!r}>"


class BufferPool:
    """``count`` buffers of ``size`` bytes from ``allocator`` (default: a new
    ``Allocator()``, owned and closed by the pool), each named ``f"{name}{i}"`` when
    ``name`` is given.

    ``acquire(timeout)`` waits while all are lent and raises TimeoutError at the
    deadline. Thread-safe. ``close()`` (or the end of a ``with`` block) closes every
    buffer in the pool; a buffer lent at that moment is closed when it comes back. A
    borrower that closes its buffer makes the pool allocate a replacement when one is
    next needed.
    """

    def __init__(self, size: int, count: int, *, allocator: Allocator | None = None,
                 name: str | None = None) -> None:
        size = check_size(size)
        count = check_index(count, "count")  # numpy integers too; not bool (TypeError)
        if count <= 0:
            raise invalid(f"count must be > 0, got {count}")
        _check_fd_budget(count)
        self._setup(count, allocator, name)
        try:
            for i in range(count):
                self._add(self._allocator.allocate(size, name=self._buffer_name(i)), i)
        except BaseException:
            self.close()
            raise
        self._size = self._free[0].buffer.size

    @classmethod
    def adopt(cls, buffers: Iterable[Buffer], *, allocator: Allocator | None = None,
              name: str | None = None) -> BufferPool:
        """A pool of existing open buffers, which it now owns (closes with itself).
        They may differ in size (``size`` is the largest); one a borrower closes is
        replaced by a buffer of its size from ``allocator`` (default: ``Allocator()``)
        named ``f"{name}{i}"`` when ``name`` is given."""
        items = list(buffers)
        if not items:
            raise invalid("adopt() needs at least one buffer")
        for buf in items:
            if not isinstance(buf, Buffer):
                raise invalid(f"adopt() takes Buffers, got {type(buf).__name__}")
            if buf.closed:
                raise invalid("adopt() takes open buffers: one is closed")
        if len({id(buf) for buf in items}) != len(items):
            raise invalid("adopt() got the same buffer twice")
        pool = cls.__new__(cls)
        pool._setup(len(items), allocator, name)
        for i, buf in enumerate(items):
            pool._add(buf, i)
        pool._size = max(buf.size for buf in items)
        return pool

    def _setup(self, count: int, allocator: Allocator | None, name: str | None) -> None:
        if name is not None:
            encode_name(f"{check_name(name)}{count - 1}")  # the longest name must fit
        if allocator is not None and not isinstance(allocator, Allocator):
            raise invalid(f"allocator must be an Allocator, got {type(allocator).__name__}")
        self._closed = False
        self._waiters = 0
        self._attention = False  # waiters or closed: what a returner must act on
        # (slot, size) of buffers a borrower closed, replaced on demand
        self._lost: list[tuple[int, int]] = []
        self._cond = threading.Condition(threading.Lock())
        self._free: collections.deque[Lease] = collections.deque()
        self._push = self._free.append
        self._pop = self._free.pop
        self._leases: dict[int, Lease] = {}  # id(buffer) -> its lease
        self._own_allocator = allocator is None
        self._allocator = Allocator() if allocator is None else allocator
        self._name = name
        self._count = count
        self._size = 0

    def _buffer_name(self, i: int) -> str | None:
        return None if self._name is None else f"{self._name}{i}"

    def _add(self, buffer: Buffer, slot: int) -> None:
        lease = Lease(self, buffer, slot)
        self._leases[id(buffer)] = lease
        self._push(lease)

    # --- facts -----------------------------------------------------------------
    @property
    def size(self) -> int:
        """Each buffer's size (the requested size rounded up to pages; the largest
        of adopted buffers)."""
        return self._size

    @property
    def count(self) -> int:
        """How many buffers the pool holds, lent or not (a replaced buffer counts once)."""
        return self._count

    @property
    def free(self) -> int:
        """Buffers ready to lend now."""
        return len(self._free)

    @property
    def buffers(self) -> list[Buffer]:
        """Every buffer of the pool, lent or not."""
        return [lease.buffer for lease in list(self._leases.values())]

    @property
    def allocator(self) -> Allocator:
        """Where replacements come from: the one given, or the pool's own ``Allocator()``
        (closed with the pool)."""
        return self._allocator

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run; ``acquire`` and ``take`` then raise ClosedError."""
        return self._closed

    # --- lending ---------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> Lease:
        """A Lease for ``with``: the buffer goes back to the pool at the end of the
        block. Waits up to ``timeout`` seconds (None: forever) while all are lent."""
        if timeout is not None:
            deadline(timeout, "BufferPool.acquire")  # a bad timeout fails before lending
        try:
            lease = self._pop()
        except IndexError:
            return self._wait(timeout)
        lease._out = True
        return lease

    def take(self, timeout: float | None = None) -> Buffer:
        """A buffer to give back later with ``release(buf)`` (when a ``with`` block
        does not fit, e.g. a frame out with a consumer)."""
        return self.acquire(timeout).buffer

    def release(self, buffer: Buffer) -> None:
        """Give back a buffer from ``take()``."""
        lease = self._leases.get(id(buffer))
        if lease is None or lease.buffer is not buffer:
            raise invalid("that buffer does not belong to this pool")
        if not lease._out:
            raise invalid("that buffer is not lent: release() it once per take()")
        lease.__exit__(None, None, None)

    def _wait(self, timeout: float | None) -> Lease:
        until = deadline(timeout, "BufferPool.acquire")
        with self._cond:
            self._waiters += 1
            self._attention = True  # before looking at the free list: see _attend
            try:
                while True:
                    if self._closed:
                        raise closed("BufferPool")
                    try:
                        lease = self._pop()
                    except IndexError:
                        pass
                    else:
                        lease._out = True
                        return lease
                    if self._lost:
                        return self._replace()
                    if expired(until):
                        raise timed_out(f"BufferPool.acquire: all {self._count} buffers are lent")
                    self._cond.wait(None if until is None else remaining_s(until))
            finally:
                self._waiters -= 1
                self._attention = self._waiters > 0 or self._closed

    def _replace(self) -> Lease:
        """A new buffer for one a borrower closed (called with the lock held)."""
        slot, size = self._lost.pop()
        try:
            buffer = self._allocator.allocate(size, name=self._buffer_name(slot))
        except BaseException:
            self._lost.append((slot, size))
            raise
        lease = Lease(self, buffer, slot)
        self._leases[id(buffer)] = lease
        lease._out = True
        return lease

    def _came_back_closed(self, lease: Lease) -> None:
        """A lease came back with its buffer closed by the borrower."""
        with self._cond:
            if self._leases.get(id(lease.buffer)) is lease:
                del self._leases[id(lease.buffer)]
            if not self._closed:
                self._lost.append((lease._slot, lease.buffer.size))
                self._cond.notify()

    def _attend(self) -> None:
        """After a return: wake a waiter, and close what came back to a closed pool.
        A waiter raises ``_attention`` before it looks at the free list and a returner
        reads it after pushing, so either the waiter finds the buffer or is woken."""
        with self._cond:
            if self._waiters:
                self._cond.notify()
        if self._closed:
            self._drain()

    def _drain(self) -> None:
        # pop() is atomic: each free buffer is closed by exactly one drainer.
        while True:
            try:
                lease = self._pop()
            except IndexError:
                return
            lease.buffer.close()

    # --- lifetime --------------------------------------------------------------
    def close(self) -> None:
        """Close every buffer in the pool now and each lent one when it comes back;
        waiters get ClosedError. Idempotent."""
        if self._closed:
            return
        with self._cond:
            self._closed = True  # before draining: a returner then drains what it pushed
            self._attention = True
            self._cond.notify_all()
        self._drain()
        if self._own_allocator:
            self._allocator.close()

    def __enter__(self) -> BufferPool:
        if self._closed:
            raise closed("BufferPool")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<BufferPool closed size={self._size}>"
        return (f"<BufferPool {self.free}/{self._count} free size={self._size} "
                f"allocator={self._allocator!r}>")
