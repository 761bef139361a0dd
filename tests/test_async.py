"""asyncio: SyncFile.wait_async / Buffer.wait_async and pydmabuf.aio (wait_any,
wait_all, as_completed) on the active backend. A waiter adds no fd: the loop watches
the objects' own fds, one registration per fd for all the coroutines waiting on it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from _procs import fence_from_child, join
from conftest import BACKEND, IN_VM, TIMELINE_MISSING, open_fds

import pydmabuf
import pydmabuf.aio

pytestmark = pytest.mark.skipif(TIMELINE_MISSING is not None, reason=TIMELINE_MISSING or "")

QUICK = 2.0 if IN_VM else 0.5  # "promptly", allowing for TCG
GAP = 0.1 if IN_VM else 0.02  # between signals (TCG is slow)


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


def test_signaled_by_another_process() -> None:
    # Only the process that made a Timeline signals it: the child makes one, sends
    # its fence, and signals it once told to.
    pid, ours, fence = fence_from_child(delay=0.1)
    with ours, fence:
        assert not fence.signaled
        ours.send(b"g")
        asyncio.run(asyncio.wait_for(fence.wait_async(), 8))
        assert fence.info().status == 1  # signaled by the child, not orphaned
    assert join(pid) == 0


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



# --- a waiter adds no fd (issue 16, item 9) -------------------------------------------

def test_many_waiters_on_one_fence_share_one_registration_and_add_no_fd(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with timeline.fence(1) as fence:
            before_map, before_fds = watched_fds(loop), open_fds()
            tasks = [asyncio.create_task(fence.wait_async(timeout=8)) for _ in range(50)]
            others = asyncio.create_task(pydmabuf.aio.wait_any([fence], timeout=8))
            await asyncio.sleep(0.05)
            assert (watched_fds(loop), open_fds()) == (before_map + 1, before_fds)
            for t in tasks[:25]:  # half of them give up: the rest keep the registration
                t.cancel()
            await asyncio.gather(*tasks[:25], return_exceptions=True)
            assert watched_fds(loop) == before_map + 1
            loop.call_later(0.02, timeline.signal, 1)
            await asyncio.gather(*tasks[25:])
            assert await others == [fence]
            assert watched_fds(loop) == before_map and open_fds() <= before_fds

    asyncio.run(main())


def test_closing_wakes_every_waiter_of_a_shared_registration(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        fence = timeline.fence(1)
        tasks = [asyncio.create_task(fence.wait_async()) for _ in range(5)]
        any_task = asyncio.create_task(pydmabuf.aio.wait_any([fence]))
        await asyncio.sleep(0.02)
        fence.close()
        results = await asyncio.gather(*tasks, any_task, return_exceptions=True)
        assert all(isinstance(r, pydmabuf.ClosedError) for r in results), results
        assert watched_fds(loop) == before

    asyncio.run(main())
    timeline.signal(1)


def test_close_from_another_thread_keeps_the_number_until_the_loop_lets_go(
        timeline: pydmabuf.Timeline) -> None:
    """A close() from another thread while the loop watches the number: the thread at
    once makes files that would take the number if it were free. The loop must never
    be left with a stale number: registering each new file works, every time."""
    rounds = 30 if IN_VM else 200

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        for _ in range(rounds):
            fence = timeline.fence(2**31 - 1)
            made: list[int] = []

            def close_and_reuse(fence: pydmabuf.SyncFile = fence, made: list[int] = made) -> None:
                fence.close()
                made.extend(os.pipe())

            waiter = asyncio.create_task(fence.wait_async(timeout=8))
            await asyncio.sleep(0)
            closer = threading.Thread(target=close_and_reuse)
            closer.start()
            with pytest.raises(pydmabuf.ClosedError):
                await waiter
            await asyncio.to_thread(closer.join)
            for fd in made:  # add_reader fails (EEXIST/ENOENT) on a number the selector still has
                loop.add_reader(fd, lambda: None)
                loop.remove_reader(fd)
                os.close(fd)
            assert watched_fds(loop) == before

    asyncio.run(main())


def test_closing_after_the_loop_was_closed_under_a_waiter(timeline: pydmabuf.Timeline) -> None:
    """A loop closed with a coroutine still waiting (never cancelled): the fence's
    close() later, in this thread or another, just closes it."""
    for closer in ("here", "thread"):
        fence = timeline.fence(1)
        loop = asyncio.new_event_loop()
        task = loop.create_task(fence.wait_async())
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        if closer == "here":
            fence.close()
        else:
            t = threading.Thread(target=fence.close)
            t.start()
            t.join()
        assert fence.closed and fence._cell == []  # the number is closed
        del task
    timeline.signal(1)


def test_detach_is_refused_while_a_coroutine_awaits(timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        with timeline.fence(1) as fence:
            task = asyncio.create_task(fence.wait_async(timeout=8))
            await asyncio.sleep(0.02)
            with pytest.raises(pydmabuf.BusyError) as refused:
                fence.detach()
            assert refused.value.errno == errno.EBUSY
            assert not fence.closed
            timeline.signal(1)
            await task
            os.close(fence.detach())  # nobody waits now

    asyncio.run(main())


def test_buffer_wait_async_fds(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    """Kernel: a dma-buf is polled itself, no fd added. Fallback: each waiter waits on
    a snapshot fence of the buffer's implicit fences (one fd, closed with the wait)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before_map, before_fds = watched_fds(loop), open_fds()
        with heap.allocate(4096) as buf, timeline.fence(1) as w:
            buf.import_sync_file(w, write=True)
            settled = open_fds()
            waiters = [asyncio.create_task(buf.wait_async(timeout=8)) for _ in range(3)]
            await asyncio.sleep(0.05)
            if BACKEND == "kernel":
                assert (watched_fds(loop), open_fds()) == (before_map + 1, settled)
            else:
                assert (watched_fds(loop), open_fds()) == (before_map + 3, settled + 3)
            timeline.signal(1)
            await asyncio.gather(*waiters)
        assert (watched_fds(loop), open_fds()) == (before_map, before_fds)

    asyncio.run(main())


# --- pydmabuf.aio.wait_any / wait_all / as_completed ----------------------------------

@contextlib.contextmanager
def independent_fences(n: int) -> Iterator[tuple[list[pydmabuf.Timeline], list[pydmabuf.SyncFile]]]:
    with ExitStack() as stack:
        timelines = [stack.enter_context(pydmabuf.Timeline()) for _ in range(n)]
        fences = [stack.enter_context(tl.fence(1)) for tl in timelines]
        yield timelines, fences


def test_aio_wait_any_returns_the_ready_ones_in_the_order_given() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        with independent_fences(4) as (timelines, fences):
            timelines[2].signal(1)
            assert await pydmabuf.aio.wait_any(fences, timeout=0) == [fences[2]]
            timelines[0].signal(1)
            assert await pydmabuf.aio.wait_any(fences[::-1]) == [fences[2], fences[0]]
            rest = fences[1::2]
            with pytest.raises(pydmabuf.TimeoutError):
                await pydmabuf.aio.wait_any(rest, timeout=0.05)
            assert watched_fds(loop) == before
            loop.call_later(0.05, timelines[3].signal, 1)
            assert await pydmabuf.aio.wait_any(rest, timeout=8) == [fences[3]]
            with pytest.raises(pydmabuf.InvalidArgumentError):
                await pydmabuf.aio.wait_any([])
            with pytest.raises(pydmabuf.InvalidArgumentError):
                await pydmabuf.aio.wait_any([fences[0], 3])  # type: ignore[list-item]
            with pytest.raises(TypeError):
                await pydmabuf.aio.wait_any(fences, timeout="1")  # type: ignore[arg-type]
            timelines[1].signal(1)
            assert watched_fds(loop) == before

    asyncio.run(main())


def test_aio_wait_all_and_cancellation() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        with independent_fences(3) as (timelines, fences):
            with pytest.raises(pydmabuf.TimeoutError):
                await pydmabuf.aio.wait_all(fences, timeout=0.05)
            task = asyncio.create_task(pydmabuf.aio.wait_all(fences))
            await asyncio.sleep(0.02)
            assert watched_fds(loop) == before + 3
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert watched_fds(loop) == before
            for i, tl in enumerate(timelines):
                loop.call_later(0.01 * (i + 1), tl.signal, 1)
            await pydmabuf.aio.wait_all(fences, timeout=8)
            await pydmabuf.aio.wait_all([])
            assert all(f.signaled for f in fences)

    asyncio.run(main())


def test_aio_as_completed_yields_in_signal_order() -> None:
    n = 8
    order = random.Random(4).sample(range(n), n)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        with independent_fences(n) as (timelines, fences):
            timelines[order[0]].signal(1)  # ready before: comes first
            for k, i in enumerate(order[1:]):
                loop.call_later(GAP * (k + 1), timelines[i].signal, 1)
            seen = [f async for f in pydmabuf.aio.as_completed(fences, timeout=20)]
            assert seen == [fences[i] for i in order]
            assert watched_fds(loop) == before

    asyncio.run(main())


def test_aio_as_completed_timeout_close_and_early_exit() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = watched_fds(loop)
        with independent_fences(3) as (timelines, fences):
            timelines[1].signal(1)
            got = []
            with pytest.raises(pydmabuf.TimeoutError):
                async for f in pydmabuf.aio.as_completed(fences, timeout=0.1):
                    got.append(f)
            assert got == [fences[1]] and watched_fds(loop) == before
            # Leaving early: aclosing() stops watching at once.
            async with contextlib.aclosing(pydmabuf.aio.as_completed(fences)) as it:
                async for f in it:
                    assert f is fences[1]
                    assert watched_fds(loop) == before + 2
                    break
            assert watched_fds(loop) == before
            # A fence closed meanwhile: ClosedError.
            victim = fences[0].dup()
            loop.call_later(0.02, victim.close)
            with pytest.raises(pydmabuf.ClosedError):
                async for _f in pydmabuf.aio.as_completed([victim, fences[2]]):
                    pass
            assert watched_fds(loop) == before
            for tl in timelines:
                tl.signal(1)
            assert [f async for f in pydmabuf.aio.as_completed([])] == []

    asyncio.run(main())


def test_aio_takes_buffers(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    async def main() -> None:
        with heap.allocate(4096) as buf, timeline.fence(1) as w, timeline.fence(2) as other:
            buf.import_sync_file(w, write=False)  # a read fence: only writers wait
            assert await pydmabuf.aio.wait_any([other, buf], timeout=0) == [buf]
            with pytest.raises(pydmabuf.TimeoutError):
                await pydmabuf.aio.wait_any([other, buf], timeout=0.05, write=True)
            asyncio.get_running_loop().call_later(0.05, timeline.signal, 1)
            assert await pydmabuf.aio.wait_any([other, buf], timeout=8, write=True) == [buf]
            timeline.signal(2)
            assert [x async for x in pydmabuf.aio.as_completed([buf, other], write=True)] == [buf, other]

    asyncio.run(main())


def test_aio_is_reachable_from_the_package() -> None:
    import pydmabuf as pkg

    assert pkg.aio.as_completed is pydmabuf.aio.as_completed
    assert "aio" in dir(pkg) and "aio" in pkg.__all__


# --- under the default limit of 1024 fds (in a child process) --------------------------

# 900 sync_files (one fd each) on the kernel; 450 fallback fences (two fds each: the
# fence end, and the signal end that the Timeline keeps).
LIMIT_FENCES = 900 if BACKEND == "kernel" else 450

_LIMIT_SCRIPT = textwrap.dedent("""
    import asyncio, errno, json, os, resource, sys, time
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    import pydmabuf, pydmabuf.aio

    n = int(sys.argv[1])
    out = {}
    tl = pydmabuf.Timeline()
    start = time.monotonic()
    fences = [tl.fence(i + 1) for i in range(n)]
    out["made_s"] = time.monotonic() - start

    async def main():
        loop = asyncio.get_running_loop()
        out["fds"] = len(os.listdir("/proc/self/fd"))
        assert not any(f.signaled for f in fences)
        waiters = [asyncio.create_task(f.wait_async(timeout=30)) for f in fences]
        first = asyncio.create_task(pydmabuf.aio.wait_any(fences, timeout=30))
        order = []

        async def collect():
            async for f in pydmabuf.aio.as_completed(fences, timeout=30):
                order.append(f)
        collecting = asyncio.create_task(collect())
        await asyncio.sleep(0.1)
        out["watched"] = len(loop._selector.get_map())
        out["fds_waiting"] = len(os.listdir("/proc/self/fd"))
        # Fill the fd table up: waiting must still need none.
        filler = []
        try:
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        out["filled"] = len(filler)
        start = time.monotonic()
        loop.call_later(0.05, tl.signal, n // 2)
        assert await first == fences[:n // 2]
        loop.call_later(0.05, tl.signal, n)
        await asyncio.gather(*waiters)
        await collecting
        out["await_s"] = time.monotonic() - start
        out["in_order"] = order == fences
        out["statuses"] = sorted({f.info().status for f in fences})
        out["watched_after"] = len(loop._selector.get_map())
        # Past the limit (signaling closed the fallback's signal ends: fill up again), a
        # new fence is a library error naming the limit.
        try:
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        try:
            tl.fence(n + 1).close()
            out["past_limit"] = "no error"
        except pydmabuf.Error as exc:
            out["past_limit"] = [type(exc).__name__, exc.errno, str(exc)]
        except OSError as exc:
            out["past_limit"] = ["bare " + type(exc).__name__, exc.errno, str(exc)]
        for fd in filler:
            os.close(fd)

    asyncio.run(main())
    for f in fences:
        f.close()
    tl.close()
    print(json.dumps(out))
""")


def test_fences_awaited_at_once_under_the_default_fd_limit() -> None:
    proc = subprocess.run([sys.executable, "-c", _LIMIT_SCRIPT, str(LIMIT_FENCES)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{LIMIT_FENCES} fences on {BACKEND} under RLIMIT_NOFILE 1024: {out}")
    per_fence = 1 if BACKEND == "kernel" else 2
    assert out["fds"] >= LIMIT_FENCES * per_fence
    assert out["fds_waiting"] == out["fds"]  # no fd per waiter
    assert out["watched"] == LIMIT_FENCES + 1  # one registration per fence, and the self-pipe
    assert out["filled"] > 0 and out["in_order"] and out["statuses"] == [1]
    assert out["watched_after"] == 1
    kind, code, message = out["past_limit"]
    assert code == errno.EMFILE and not kind.startswith("bare"), out["past_limit"]
    assert "RLIMIT_NOFILE" in message
