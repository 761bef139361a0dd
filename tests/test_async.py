"""asyncio: SyncFile.wait_async / Buffer.wait_async on the active backend."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest
from conftest import IN_VM, TIMELINE_MISSING

import pydmabuf

pytestmark = pytest.mark.skipif(TIMELINE_MISSING is not None, reason=TIMELINE_MISSING or "")

QUICK = 2.0 if IN_VM else 0.5  # "promptly", allowing for TCG


def watched_fds(loop: asyncio.AbstractEventLoop) -> int:
    """How many fds the loop's selector watches (its self-pipe included)."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        pytest.skip("the loop has no selector to inspect")
    return len(selector.get_map())


async def ticker(stop: asyncio.Event) -> int:
    ticks = 0
    while not stop.is_set():
        ticks += 1
        await asyncio.sleep(0.005)
    return ticks


def test_wait_async_under_asyncio_run(timeline: pydmabuf.Timeline) -> None:
    async def main() -> int:
        # Only another task on this loop signals the fence, after it has run five
        # times: a wait that blocked the loop would never be woken (TimeoutError).
        stop = asyncio.Event()

        async def tick_then_signal() -> int:
            ticks = 0
            while not stop.is_set():
                ticks += 1
                if ticks == 5:
                    timeline.signal(1)
                await asyncio.sleep(0.005)
            return ticks

        with timeline.fence(1) as fence:
            tick_task = asyncio.create_task(tick_then_signal())
            await fence.wait_async(timeout=5)
            assert fence.signaled
        stop.set()
        return await tick_task

    assert asyncio.run(main()) >= 5


def test_wait_async_on_a_default_loop(timeline: pydmabuf.Timeline) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with timeline.fence(1) as fence:
            loop.call_later(0.05, timeline.signal, 1)
            loop.run_until_complete(fence.wait_async())
            assert fence.signaled
            loop.run_until_complete(fence.wait_async(timeout=0))  # signaled: at once
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_many_fences_signaled_in_random_order_by_a_thread() -> None:
    n = 16
    order = random.Random(3).sample(range(n), n)
    timelines = [pydmabuf.Timeline() for _ in range(n)]
    fences = [tl.fence(1) for tl in timelines]

    def producer() -> None:
        for i in order:
            time.sleep(0.01)
            timelines[i].signal(1)

    async def main() -> list[int]:
        done: list[int] = []

        async def one(i: int) -> None:
            await fences[i].wait_async(timeout=8)
            done.append(i)

        thread = threading.Thread(target=producer)
        thread.start()
        try:
            await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await asyncio.to_thread(thread.join)
        return done

    try:
        done = asyncio.run(main())
        assert sorted(done) == list(range(n))
    finally:
        for f in fences:
            f.close()
        for tl in timelines:
            tl.close()


def test_signaled_by_another_process(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                time.sleep(0.1)
                timeline.signal(1)
                code = 0
            finally:
                os._exit(code)
        try:
            asyncio.run(asyncio.wait_for(fence.wait_async(), 8))
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert fence.signaled


def test_two_waiters_on_one_fence(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        with timeline.fence(1) as fence:
            asyncio.get_running_loop().call_later(0.05, timeline.signal, 1)
            await asyncio.gather(fence.wait_async(5), fence.wait_async(5))

    asyncio.run(main())


def test_timeout_raises_and_removes_the_reader(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        with timeline.fence(1) as fence:
            start = time.monotonic()
            with pytest.raises(pydmabuf.TimeoutError):
                await fence.wait_async(timeout=0.1)
            assert 0.09 <= time.monotonic() - start < 0.1 + QUICK
            with pytest.raises(pydmabuf.TimeoutError):
                await fence.wait_async(timeout=0)
            with pytest.raises(pydmabuf.InvalidArgumentError):
                await fence.wait_async(timeout=-1)
            assert watched_fds(loop) == before
            timeline.signal(1)

    asyncio.run(main())


def test_cancellation_removes_the_reader(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        with timeline.fence(1) as fence:
            task = asyncio.create_task(fence.wait_async())
            await asyncio.sleep(0.05)
            assert watched_fds(loop) == before + 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert watched_fds(loop) == before
            # The fence is untouched and can still be awaited.
            loop.call_later(0.02, timeline.signal, 1)
            await fence.wait_async(5)

    asyncio.run(main())


def test_close_while_waiting_wakes_the_waiter(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        fence = timeline.fence(1)
        loop.call_later(0.05, fence.close)
        start = time.monotonic()
        with pytest.raises(pydmabuf.ClosedError, match="closed while a coroutine waited"):
            await asyncio.wait_for(fence.wait_async(), 8)
        assert time.monotonic() - start < QUICK
        assert watched_fds(loop) == before
        with pytest.raises(pydmabuf.ClosedError):
            await fence.wait_async()

    asyncio.run(main())
    timeline.signal(1)


def test_close_from_another_thread_wakes_the_waiter(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        fence = timeline.fence(1)
        closer = threading.Timer(0.05, fence.close)
        closer.start()
        start = time.monotonic()
        try:
            with pytest.raises(pydmabuf.ClosedError):
                await asyncio.wait_for(fence.wait_async(), 8)
        finally:
            closer.join()
        assert time.monotonic() - start < QUICK

    asyncio.run(main())
    timeline.signal(1)


def test_buffer_wait_async(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        with heap.allocate(4096) as buf, timeline.fence(1) as w, timeline.fence(2) as r:
            buf.import_sync_file(w, write=True)
            with pytest.raises(pydmabuf.TimeoutError):
                await buf.wait_async(timeout=0.05)
            asyncio.get_running_loop().call_later(0.05, timeline.signal, 1)
            await buf.wait_async(timeout=5)
            buf.import_sync_file(r, write=False)
            await buf.wait_async(timeout=0)  # readers need not wait for readers
            asyncio.get_running_loop().call_later(0.05, timeline.signal, 2)
            await buf.wait_async(write=True, timeout=5)

    asyncio.run(main())


def test_buffer_closed_while_waiting(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        buf = heap.allocate(4096)
        with timeline.fence(1) as fence:
            buf.import_sync_file(fence, write=True)
            asyncio.get_running_loop().call_later(0.05, buf.close)
            with pytest.raises(pydmabuf.ClosedError):
                await asyncio.wait_for(buf.wait_async(), 8)
            timeline.signal(1)

    asyncio.run(main())

