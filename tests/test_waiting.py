"""wait_any / wait_all / FenceSet / merge_all on whichever backend is active
(socketpair fences natively, vgem fences in the real-kernel VM)."""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from _procs import fork, join
from conftest import IN_VM, TIMELINE_MISSING

import pydmabuf

pytestmark = pytest.mark.skipif(TIMELINE_MISSING is not None, reason=TIMELINE_MISSING or "")

GAP = 0.15 if IN_VM else 0.05  # between signals from another thread/process (TCG is slow)


@contextmanager
def independent_fences(n: int) -> Iterator[tuple[list[pydmabuf.Timeline], list[pydmabuf.SyncFile]]]:
    """n fences that can be signaled in any order: one Timeline each."""
    with ExitStack() as stack:
        timelines = [stack.enter_context(pydmabuf.Timeline()) for _ in range(n)]
        fences = [stack.enter_context(tl.fence(1)) for tl in timelines]
        yield timelines, fences


def signal_in_order(timelines: list[pydmabuf.Timeline], order: list[int]) -> None:
    for i in order:
        time.sleep(GAP)
        timelines[i].signal(1)


def collect_with_wait_any(fences: list[pydmabuf.SyncFile]) -> list[pydmabuf.SyncFile]:
    """Repeated wait_any over the unsignaled rest; returns fences in the order seen."""
    seen: list[pydmabuf.SyncFile] = []
    rest = list(fences)
    while rest:
        ready = pydmabuf.wait_any(rest, timeout=8)
        assert ready and all(f.signaled for f in ready)
        assert ready == [f for f in rest if f in ready]  # the order given
        seen += ready
        rest = [f for f in rest if f not in ready]
    return seen


@contextmanager
def fences_from_a_child(n: int, order: list[int]) -> Iterator[list[pydmabuf.SyncFile]]:
    """n independent fences made by a forked child (only the process that made a
    Timeline signals it), which signals them in ``order`` once they have arrived
    here; its exit status is checked when the block ends."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child() -> int:
        ours.close()
        with independent_fences(n) as (timelines, fences):
            pydmabuf.send(theirs, *fences)
            theirs.recv(1)  # here they are: go
            signal_in_order(timelines, order)
        return 0

    pid = fork(child)
    theirs.close()
    received: list[pydmabuf.SyncFile] = []
    try:
        with ours:
            received = [f for f in pydmabuf.recv(ours, timeout=20) if isinstance(f, pydmabuf.SyncFile)]
            assert len(received) == n and not any(f.signaled for f in received)
            ours.send(b"g")
        yield received
    finally:
        for fence in received:
            fence.close()
        assert join(pid, 30) == 0


# --- correctness with signals from elsewhere ------------------------------------------

def test_wait_any_random_order_from_a_thread() -> None:
    rng = random.Random(5)
    with independent_fences(6) as (timelines, fences):
        order = rng.sample(range(6), 6)
        t = threading.Thread(target=signal_in_order, args=(timelines, order))
        t.start()
        try:
            seen = collect_with_wait_any(fences)
        finally:
            t.join()
        assert seen == [fences[i] for i in order]


def test_wait_any_random_order_from_another_process() -> None:
    order = random.Random(6).sample(range(6), 6)
    with fences_from_a_child(6, order) as fences:
        seen = collect_with_wait_any(fences)
        assert seen == [fences[i] for i in order]


def test_wait_all_random_order_from_a_thread() -> None:
    rng = random.Random(7)
    with independent_fences(5) as (timelines, fences):
        order = rng.sample(range(5), 5)
        t = threading.Thread(target=signal_in_order, args=(timelines, order))
        start = time.monotonic()
        t.start()
        try:
            pydmabuf.wait_all(fences, timeout=8)
        finally:
            t.join()
        assert all(f.signaled for f in fences)
        assert time.monotonic() - start >= 5 * GAP * 0.9


def test_wait_all_random_order_from_another_process() -> None:
    order = random.Random(8).sample(range(5), 5)
    with fences_from_a_child(5, order) as fences:
        # Until the last one signals, wait_all must not return.
        with pytest.raises(pydmabuf.TimeoutError):
            pydmabuf.wait_all(fences, timeout=GAP * 2.5)
        pydmabuf.wait_all(fences, timeout=8)
        assert all(f.signaled for f in fences)
        assert all(f.info().status == 1 for f in fences)  # signaled, not orphaned


# --- semantics -----------------------------------------------------------------------

def test_wait_any_returns_ready_ones_in_given_order(timeline: pydmabuf.Timeline) -> None:
    with ExitStack() as stack:
        fences = [stack.enter_context(timeline.fence(p)) for p in (3, 1, 4, 2, 5)]
        with pytest.raises(pydmabuf.TimeoutError):
            pydmabuf.wait_any(fences, timeout=0)
        timeline.signal(2)
        assert pydmabuf.wait_any(fences, timeout=5) == [fences[1], fences[3]]
        assert pydmabuf.wait_any(reversed(fences), timeout=0) == [fences[3], fences[1]]
        assert pydmabuf.wait_any([fences[0], fences[1], fences[1]], 0) == [fences[1], fences[1]]
        timeline.signal(5)
        pydmabuf.wait_all(fences, timeout=0)
        assert pydmabuf.wait_any(fences, timeout=0) == fences


def test_wait_any_over_many_fences(timeline: pydmabuf.Timeline) -> None:
    n = 256
    with ExitStack() as stack:
        fences = [stack.enter_context(timeline.fence(p)) for p in range(1, n + 1)]
        timeline.signal(n // 2)
        assert pydmabuf.wait_any(fences, timeout=5) == fences[: n // 2]
        with pytest.raises(pydmabuf.TimeoutError):
            pydmabuf.wait_all(fences, timeout=0.05)
        timeline.signal(n)
        pydmabuf.wait_all(fences, timeout=5)


def test_empty_and_bad_arguments(timeline: pydmabuf.Timeline) -> None:
    pydmabuf.wait_all([], timeout=0)
    pydmabuf.wait_all([])
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.wait_any([])
    with timeline.fence(1) as fence:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.wait_any([fence, 3])  # type: ignore[list-item]
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.wait_all([fence], timeout=-1)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.wait_any([fence], timeout=float("nan"))
        timeline.signal(1)
    with pytest.raises(pydmabuf.ClosedError):
        pydmabuf.wait_any([fence])


def test_buffers_wait_for_their_implicit_fences(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as written, heap.allocate(4096) as read, \
            timeline.fence(1) as w, timeline.fence(2) as r, timeline.fence(3) as other:
        written.import_sync_file(w, write=True)  # everyone waits
        read.import_sync_file(r, write=False)  # only writers wait
        assert pydmabuf.wait_any([written, read, other], timeout=5) == [read]
        with pytest.raises(pydmabuf.TimeoutError):
            pydmabuf.wait_any([written, read], timeout=0.05, write=True)
        timeline.signal(1)
        assert pydmabuf.wait_any([written, read, other], timeout=5) == [written, read]
        assert pydmabuf.wait_any([written, read, other], timeout=5, write=True) == [written]
        timeline.signal(3)
        pydmabuf.wait_all([written, read, other], timeout=5, write=True)


# --- deadlines under signals ---------------------------------------------------------

@contextmanager
def timer_signal(interval: float, handler: Callable[[int, object], None]) -> Iterator[None]:
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("how", ["wait_any", "wait_all", "FenceSet.wait_any"])
def test_deadline_holds_under_timer_signals(timeline: pydmabuf.Timeline, how: str) -> None:
    hits: list[int] = []
    with timeline.fence(1) as a, timeline.fence(2) as b:
        timeline.signal(1)  # for wait_all one is ready, the other never
        waiters = {
            "wait_any": lambda: pydmabuf.wait_any([b], timeout=0.5),
            "wait_all": lambda: pydmabuf.wait_all([a, b], timeout=0.5),
        }
        with timer_signal(0.03, lambda *_: hits.append(1)):
            start = time.monotonic()
            with pytest.raises(pydmabuf.TimeoutError):
                if how == "FenceSet.wait_any":
                    with pydmabuf.FenceSet([b]) as fs:
                        fs.wait_any(0.5)
                else:
                    waiters[how]()
            elapsed = time.monotonic() - start
        timeline.signal(2)
    assert len(hits) >= 5, "the timer must have interrupted the wait several times"
    assert 0.49 <= elapsed < (2.0 if IN_VM else 1.0)


def test_signal_interruptions_do_not_lose_the_wakeup() -> None:
    hits: list[int] = []
    with independent_fences(3) as (timelines, fences), \
            timer_signal(0.02, lambda *_: hits.append(1)):
        t = threading.Timer(0.3, timelines[1].signal, args=(1,))
        t.start()
        start = time.monotonic()
        try:
            assert pydmabuf.wait_any(fences, timeout=8) == [fences[1]]
        finally:
            t.join()
        elapsed = time.monotonic() - start
    assert len(hits) >= 5
    assert 0.29 <= elapsed < 4


def test_exception_from_signal_handler_propagates_without_leaks(timeline: pydmabuf.Timeline) -> None:
    def boom(*_: object) -> None:
        raise KeyboardInterrupt

    with timeline.fence(1) as fence, timer_signal(0.05, boom), pytest.raises(KeyboardInterrupt):
        pydmabuf.wait_all([fence], timeout=5)
    timeline.signal(1)


# --- FenceSet -------------------------------------------------------------------------

def test_fence_set_per_frame_loop(timeline: pydmabuf.Timeline) -> None:
    # The in-flight-frames pattern: add each new fence, wait, discard what finished.
    with pydmabuf.FenceSet() as frames, ExitStack() as stack:
        fences = [stack.enter_context(timeline.fence(p)) for p in range(1, 9)]
        for f in fences[:4]:
            frames.add(f)
        frames.add(fences[0])  # a repeat is ignored
        assert len(frames) == 4 and fences[0] in frames
        done = []
        for nxt in [*fences[4:], None, None, None, None]:
            timeline.signal(timeline.value + 1)
            ready = frames.wait_any(5)
            assert ready == [fences[len(done)]]
            for f in ready:
                frames.discard(f)
                done.append(f)
            if nxt is not None:
                frames.add(nxt)
        assert done == fences and len(frames) == 0
        with pytest.raises(pydmabuf.InvalidArgumentError):
            frames.wait_any(0)
        frames.discard(fences[0])  # absent: nothing happens


def test_fence_set_add_of_a_closed_object(timeline: pydmabuf.Timeline) -> None:
    # The number is read under a hold (see test_races for a close() from another thread).
    fence = timeline.fence(1)
    fence.close()
    with pydmabuf.FenceSet() as waiting:
        with pytest.raises(pydmabuf.ClosedError):
            waiting.add(fence)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            waiting.add(3)  # type: ignore[arg-type]
        assert len(waiting) == 0 and fence not in waiting


def test_fence_set_wait_all_keeps_members(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as a, timeline.fence(2) as b, pydmabuf.FenceSet([a, b]) as fs:
        timeline.signal(1)
        with pytest.raises(pydmabuf.TimeoutError):
            fs.wait_all(0.05)
        assert fs.wait_any(0) == [a]  # the muted member is reported again afterwards
        timeline.signal(2)
        fs.wait_all(5)
        assert fs.wait_any(0) == [a, b] and len(fs) == 2
    assert "closed" in repr(fs)
    for call in (lambda: fs.add(a), fs.wait_any, fs.wait_all):
        with pytest.raises(pydmabuf.ClosedError):
            call()


def test_fence_set_of_buffers_closes_its_fds(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    # On the fallback each buffer is watched through an exported eventfd the set owns.
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        with pydmabuf.FenceSet([buf], write=True) as fs:
            with pytest.raises(pydmabuf.TimeoutError):
                fs.wait_any(0.05)
            timeline.signal(1)
            assert fs.wait_any(5) == [buf]
            fs.discard(buf)
            fs.add(buf)
        # A set dropped without close() still releases the fds it made.
        dropped = pydmabuf.FenceSet([buf])
        del dropped


# --- merge_all, info, repr ------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_merge_all(timeline: pydmabuf.Timeline, n: int) -> None:
    with ExitStack() as stack:
        fences = [stack.enter_context(timeline.fence(p)) for p in range(1, n + 1)]
        with pydmabuf.SyncFile.merge_all(fences, name="frame") as merged:
            assert merged not in fences
            if n > 1:
                timeline.signal(n - 1)
            assert not merged.signaled
            timeline.signal(n)
            merged.wait(5)
        assert not any(f.closed for f in fences)


def test_merge_all_rejects_bad_input(timeline: pydmabuf.Timeline) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.SyncFile.merge_all([])
    with timeline.fence(1) as f, pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.SyncFile.merge_all([f, "x"])  # type: ignore[list-item]


def test_merge_all_of_independent_timelines() -> None:
    with independent_fences(5) as (timelines, fences), \
            pydmabuf.SyncFile.merge_all(fences, name="all") as merged:
        for tl in timelines[:-1]:
            tl.signal(1)
        assert not merged.signaled
        timelines[-1].signal(1)
        merged.wait(5)


def test_info_timestamps_are_clock_monotonic_ns(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        timeline.signal(1)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        (leaf,) = fence.info().fences
        assert before <= leaf.timestamp_ns <= after


def test_repr_shows_status_and_fence_names(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        text = repr(fence)
        leaf = fence.info().fences[0]
        assert "pending" in text and f"{leaf.driver_name}/{leaf.obj_name}" in text
        timeline.signal(1)
        assert "signaled" in repr(fence)
