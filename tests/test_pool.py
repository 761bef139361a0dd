"""BufferPool: lending, recycling (the same buffer, contents kept), exhaustion with
timeouts, threads, close with buffers out, and no leaked fds, on the active backend."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
from conftest import BACKEND, open_fds

import pydmabuf
from pydmabuf.allocator import Allocator
from pydmabuf.pool import BufferPool, Lease

PAGE = os.sysconf("SC_PAGE_SIZE")


def test_lends_the_same_buffers_back_and_forth() -> None:
    with BufferPool(PAGE + 1, 2, name="pool") as pool:
        assert (pool.size, pool.count, pool.free) == (2 * PAGE, 2, 2)
        assert sorted(b.name or "" for b in pool.buffers) == ["pool0", "pool1"]
        assert all(b.backend == BACKEND for b in pool.buffers)
        seen = set()
        for _ in range(6):
            with pool.acquire() as buf:
                assert isinstance(buf, pydmabuf.Buffer) and not buf.closed
                assert pool.free == 1
                seen.add(id(buf))
            assert not buf.closed and pool.free == 2
        assert seen <= {id(b) for b in pool.buffers}
        assert "2/2 free" in repr(pool)


def test_contents_survive_the_return() -> None:
    # A pool recycles: nothing is cleared or re-allocated between borrowers.
    with BufferPool(PAGE, 1) as pool:
        with pool.acquire() as buf, buf.map() as m, buf.cpu_access():
            m[:5] = b"kept!"
        with pool.acquire() as again, again.map() as m, again.cpu_access(write=False):
            assert again is buf
            assert m[:5] == b"kept!"


def test_exhaustion_times_out() -> None:
    with BufferPool(PAGE, 2) as pool, pool.acquire(), pool.acquire():
        assert pool.free == 0
        t0 = time.monotonic()
        with pytest.raises(pydmabuf.TimeoutError) as exc:
            pool.acquire(timeout=0.05)
        assert time.monotonic() - t0 >= 0.05
        assert isinstance(exc.value, TimeoutError)
        assert "all 2 buffers are lent" in str(exc.value)
        with pytest.raises(pydmabuf.TimeoutError):
            pool.acquire(timeout=0)


@pytest.mark.parametrize(("timeout", "exc"), [(-1, pydmabuf.InvalidArgumentError),
                                              (float("nan"), pydmabuf.InvalidArgumentError),
                                              ("1", TypeError)])
def test_bad_timeouts_lend_nothing(timeout: object, exc: type[Exception]) -> None:
    with BufferPool(PAGE, 1) as pool:
        with pytest.raises(exc):
            pool.acquire(timeout)  # type: ignore[arg-type]
        assert pool.free == 1


def test_a_waiter_gets_the_buffer_returned_by_another_thread() -> None:
    with BufferPool(PAGE, 1) as pool:
        lease = pool.acquire()
        buf = lease.buffer
        timer = threading.Timer(0.05, lease.__exit__, (None, None, None))
        timer.start()
        try:
            with pool.acquire(timeout=10) as got:
                assert got is buf
        finally:
            timer.join()


def test_threads_never_share_a_lent_buffer() -> None:
    out: set[int] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(pool: BufferPool) -> None:
        try:
            for _ in range(150):
                with pool.acquire(timeout=30) as buf:
                    with lock:
                        assert id(buf) not in out, "lent twice at once"
                        out.add(id(buf))
                    with lock:
                        out.discard(id(buf))
        except BaseException as exc:
            errors.append(exc)

    with BufferPool(PAGE, 3) as pool:
        threads = [threading.Thread(target=work, args=(pool,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert pool.free == 3 and len(pool.buffers) == 3


def test_take_and_release() -> None:
    with BufferPool(PAGE, 2) as pool, pydmabuf.Heap("system") as heap:
        buf = pool.take()
        assert pool.free == 1
        pool.release(buf)
        assert pool.free == 2
        with pytest.raises(pydmabuf.InvalidArgumentError, match="not lent"):
            pool.release(buf)
        with heap.allocate(PAGE) as stranger, pytest.raises(pydmabuf.InvalidArgumentError, match="belong"):
            pool.release(stranger)


def test_a_returned_lease_cannot_be_entered_again() -> None:
    with BufferPool(PAGE, 1) as pool:
        lease = pool.acquire()
        assert isinstance(lease, Lease) and "lent" in repr(lease)
        with lease:
            pass
        lease.__exit__(None, None, None)  # a second return does nothing
        assert pool.free == 1
        with pytest.raises(pydmabuf.InvalidArgumentError, match="already returned"), lease:
            pass


def test_close_closes_every_buffer_and_late_returns() -> None:
    before = open_fds()
    pool = BufferPool(PAGE, 3)
    lent = pool.acquire()
    taken = pool.take()
    idle = [b for b in pool.buffers if b is not lent.buffer and b is not taken]
    pool.close()
    pool.close()
    assert pool.closed and idle[0].closed
    assert not lent.buffer.closed and not taken.closed  # still in use: valid until returned
    with pytest.raises(pydmabuf.ClosedError):
        pool.acquire()
    with lent as buf, buf.map() as m:
        m[:1] = b"x"
    assert lent.buffer.closed  # came back to a closed pool: closed, not leaked
    pool.release(taken)
    assert taken.closed
    assert open_fds() == before
    with pytest.raises(pydmabuf.ClosedError), pool:
        pass


def test_close_wakes_waiters_with_closed_error() -> None:
    pool = BufferPool(PAGE, 1)
    lease = pool.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    pool.close()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], pydmabuf.ClosedError)
    lease.__exit__(None, None, None)
    assert lease.buffer.closed


def test_a_buffer_closed_by_its_borrower_is_replaced() -> None:
    with BufferPool(PAGE, 1, name="r") as pool:
        with pool.acquire() as buf:
            buf.close()
        with pool.acquire(timeout=5) as fresh:
            assert fresh is not buf and not fresh.closed
            assert fresh.size == PAGE and fresh.name == "r0"  # its place's name
        assert pool.free == 1 and pool.buffers == [fresh]


def test_given_allocator_is_used_and_left_open() -> None:
    with Allocator(["udmabuf"]) as alloc:
        with BufferPool(PAGE, 2, allocator=alloc) as pool:
            assert pool.allocator is alloc
            assert alloc.last_provider == "udmabuf"
        assert not alloc.closed
        alloc.allocate(PAGE).close()


def test_own_allocator_is_closed_with_the_pool() -> None:
    pool = BufferPool(PAGE, 1)
    pool.close()
    assert pool.allocator.closed


@pytest.mark.parametrize(("args", "kwargs", "exc"), [
    ((0, 1), {}, pydmabuf.InvalidArgumentError),
    ((PAGE, 0), {}, pydmabuf.InvalidArgumentError),
    ((PAGE, 1.0), {}, TypeError),
    ((PAGE, True), {}, TypeError),
    ((PAGE, 1), {"name": "x" * 31}, pydmabuf.InvalidArgumentError),  # "x...x0" is 32 bytes
    ((PAGE, 1), {"name": 3}, TypeError),
    ((PAGE, 1), {"allocator": "system"}, pydmabuf.InvalidArgumentError),
])
def test_bad_arguments_allocate_nothing(args: tuple[object, ...], kwargs: dict[str, object],
                                        exc: type[Exception]) -> None:
    with pytest.raises(exc):
        BufferPool(*args, **kwargs)  # type: ignore[arg-type]


def test_integers_with_index_are_ints() -> None:
    # numpy integers are integers (operator.index), as channel.Producer(count=) takes them.
    np = pytest.importorskip("numpy")
    with BufferPool(np.int64(PAGE), np.int64(3)) as pool:
        assert (pool.count, pool.size, pool.free) == (3, PAGE, 3)
        assert type(pool.count) is int and type(pool.size) is int
    with pytest.raises(TypeError, match="count must be an int, got float64"):
        BufferPool(PAGE, np.float64(3))


def test_a_pool_larger_than_the_fd_limit_is_refused_up_front() -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no fd limit")
    before = open_fds()
    with pytest.raises(pydmabuf.errors.TooManyOpenFilesError, match=f"{soft} open fds.*RLIMIT_NOFILE"):
        BufferPool(PAGE, soft)
    assert open_fds() == before


class FailingAllocator(Allocator):
    def __init__(self, succeed: int) -> None:
        super().__init__(["system"])
        self.left = succeed

    def allocate(self, size: int, *, name: str | None = None) -> pydmabuf.Buffer:
        if self.left == 0:
            raise pydmabuf.OutOfMemoryError(12, "out of CMA")
        self.left -= 1
        return super().allocate(size, name=name)


def test_a_failed_allocation_closes_what_was_made() -> None:
    before = open_fds()
    with FailingAllocator(2) as alloc, pytest.raises(pydmabuf.OutOfMemoryError):
        BufferPool(PAGE, 4, allocator=alloc)
    assert open_fds() == before


def test_a_dropped_pool_leaks_nothing() -> None:
    before = open_fds()
    pool = BufferPool(PAGE, 4)
    with pool.acquire():
        pass
    del pool
    gc.collect()
    assert open_fds() == before


def test_pool_buffers_come_from_the_backends_allocators() -> None:
    with BufferPool(PAGE, 2) as pool, pool.acquire() as buf:
        if BACKEND == "kernel":  # dma-bufs from a heap or udmabuf
            assert buf.info().exporter in ("system", "udmabuf")
        else:
            assert buf.info().exporter == "pydmabuf-fallback"


def test_adopted_buffers_are_lent_and_closed_with_the_pool(heap: pydmabuf.Heap) -> None:
    mine = [heap.allocate(PAGE), heap.allocate(3 * PAGE)]
    pool = BufferPool.adopt(mine)
    assert (pool.count, pool.free, pool.size) == (2, 2, 3 * PAGE)
    assert {id(b) for b in pool.buffers} == {id(b) for b in mine}
    buf = pool.take()
    pool.release(buf)
    pool.close()
    assert all(b.closed for b in mine)


def test_an_adopted_buffer_closed_by_its_borrower_is_replaced_at_its_size(heap: pydmabuf.Heap) -> None:
    with BufferPool.adopt([heap.allocate(2 * PAGE)], name="a") as pool:
        with pool.acquire() as buf:
            buf.close()
        with pool.acquire() as fresh:
            assert fresh.size == 2 * PAGE and fresh.name == "a0" and fresh is not buf


def test_adopt_checks_what_it_is_given(heap: pydmabuf.Heap) -> None:
    with heap.allocate(PAGE) as buf:
        for bad in ([], [buf, buf], ["not a buffer"]):
            with pytest.raises(pydmabuf.InvalidArgumentError):
                BufferPool.adopt(bad)  # type: ignore[arg-type]
    with pytest.raises(pydmabuf.InvalidArgumentError, match="closed"):
        BufferPool.adopt([buf])
