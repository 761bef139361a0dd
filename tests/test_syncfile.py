"""Explicit fences: mirrors the kernel's selftests/sync behaviour on both backends."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time

import pytest
from conftest import BACKEND, open_fds

import pydmabuf


def test_fence_signals_at_its_point(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(2) as fence:
        assert not fence.signaled
        timeline.signal(1)
        assert not fence.signaled
        timeline.signal(2)
        assert fence.signaled
        fence.wait(0)


def test_fence_for_a_past_point_is_signaled(timeline: pydmabuf.Timeline) -> None:
    timeline.signal(5)
    with timeline.fence(3) as fence:
        assert fence.signaled


def test_signal_default_advances_by_one(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        timeline.signal()
        assert timeline.value == 1
        assert fence.signaled


def test_wait_timeout(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        start = time.monotonic()
        with pytest.raises(pydmabuf.TimeoutError) as exc:
            fence.wait(0.2)
        elapsed = time.monotonic() - start
        assert 0.19 <= elapsed < 2.0
        assert isinstance(exc.value, TimeoutError)
        assert exc.value.errno == errno.ETIMEDOUT
        with pytest.raises(pydmabuf.TimeoutError):
            fence.wait(0)
        timeline.signal(1)


def test_wait_is_woken_by_another_thread(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        timer = threading.Timer(0.1, timeline.signal, args=(1,))
        timer.start()
        start = time.monotonic()
        fence.wait(5)
        assert time.monotonic() - start < 4
        timer.join()


def test_wait_deadline_holds_under_signals(timeline: pydmabuf.Timeline) -> None:
    # libsync restarts with the full timeout after EINTR; we must not.
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        with timeline.fence(1) as fence:
            start = time.monotonic()
            with pytest.raises(pydmabuf.TimeoutError):
                fence.wait(0.5)
            elapsed = time.monotonic() - start
            timeline.signal(1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(hits) >= 3
    assert 0.49 <= elapsed < 1.5


def test_poll_on_fileno(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        assert select.select([fence], [], [], 0)[0] == []
        timeline.signal(1)
        assert select.select([fence], [], [], 1)[0] == [fence]


def test_merge_signals_only_when_both_have(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as a, timeline.fence(2) as b, a.merge(b, name="both") as merged:
        assert not merged.signaled
        timeline.signal(1)
        assert a.signaled and not merged.signaled
        timeline.signal(2)
        merged.wait(5)
        info = merged.info()
        assert info.signaled


def test_merge_with_itself(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as a, a.merge(a) as merged:
        assert not merged.signaled
        timeline.signal(1)
        merged.wait(5)


def test_merge_of_signaled_inputs_is_signaled(timeline: pydmabuf.Timeline) -> None:
    timeline.signal(2)
    with timeline.fence(1) as a, timeline.fence(2) as b, a.merge(b) as merged:
        assert merged.signaled


def test_merge_two_timelines(timeline: pydmabuf.Timeline) -> None:
    with pydmabuf.Timeline() as other, timeline.fence(1) as a, other.fence(1) as b, a.merge(b) as merged:
        other.signal(1)
        assert not merged.signaled
        timeline.signal(1)
        merged.wait(5)


def test_merge_rejects_non_syncfile(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as a:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            a.merge(3)  # type: ignore[arg-type]
        timeline.signal(1)


def test_info_counts_and_status(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        info = fence.info()
        assert info.status == 0 and not info.signaled
        assert len(info.fences) >= 1
        assert all(f.timestamp_ns == 0 for f in info.fences)
        timeline.signal(1)
        info = fence.info()
        assert info.status == 1
        stamp = info.fences[0].timestamp_ns
        assert 0 < stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def test_info_of_merged_fences(timeline: pydmabuf.Timeline) -> None:
    with pydmabuf.Timeline() as other, timeline.fence(1) as a, other.fence(1) as b, \
            a.merge(b, name="pair") as merged:
        info = merged.info()
        if BACKEND == "kernel":  # the sync_file keeps the merge's name and lists both fences
            assert info.name == "pair"
            assert [f.status for f in info.fences] == [0, 0]
        else:  # the fallback's merge is one fence of its own that signals after both
            assert [f.status for f in info.fences] == [0]
        assert info.status == 0
        timeline.signal(1)
        statuses = sorted(f.status for f in merged.info().fences)
        assert statuses == ([0, 1] if BACKEND == "kernel" else [0])
        assert merged.info().status == 0
        other.signal(1)
        merged.wait(timeout=5)  # the fallback's merge signals from its reactor thread
        assert merged.info().status == 1


def test_repr_shows_state(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        assert "pending" in repr(fence)
        timeline.signal(1)
        assert "signaled" in repr(fence)
    assert "closed" in repr(fence)


def test_closed_syncfile_refuses(timeline: pydmabuf.Timeline) -> None:
    fence = timeline.fence(1)
    fence.close()
    fence.close()
    for call in (fence.wait, lambda: fence.signaled, fence.info, fence.dup, lambda: fence.merge(fence),
                 lambda: fence.set_deadline(1)):
        with pytest.raises(pydmabuf.ClosedError):
            call()


def test_from_fd_checks_type(timeline: pydmabuf.Timeline) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.SyncFile.from_fd(r)
    finally:
        os.close(r)
        os.close(w)
    with timeline.fence(1) as fence, pydmabuf.SyncFile.from_fd(fence.fileno(), own=False) as other:
        timeline.signal(1)
        assert other.signaled


def test_from_fd_borrowing_refusals_name_the_callers_fd_and_close_the_dup(timeline: pydmabuf.Timeline) -> None:
    other = "fallback" if BACKEND == "kernel" else "kernel"
    r, w = os.pipe()
    with timeline.fence(1) as fence:
        before = open_fds()
        with pytest.raises(pydmabuf.InvalidArgumentError, match=f"fd {r} "):
            pydmabuf.SyncFile.from_fd(r, own=False)
        with pytest.raises(pydmabuf.InvalidArgumentError, match=f"fd {fence.fileno()} is"):
            pydmabuf.SyncFile.from_fd(fence.fileno(), own=False, backend=other)
        assert open_fds() == before
        os.close(r)
        os.close(w)
        with pytest.raises(pydmabuf.Error) as exc:
            pydmabuf.SyncFile.from_fd(r, own=False)
        assert exc.value.errno == errno.EBADF
        assert open_fds() == before - 2


def test_dup_shares_the_fence(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence, fence.dup() as copy:
        timeline.signal(1)
        assert copy.signaled


def test_set_deadline(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        try:
            fence.set_deadline(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 1_000_000)
        except pydmabuf.UnsupportedError:
            pytest.skip("SYNC_IOC_SET_DEADLINE needs Linux 6.8")
        finally:
            timeline.signal(1)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            fence.set_deadline(-1)


def test_closing_timeline_signals_pending(timeline: pydmabuf.Timeline) -> None:
    tl = pydmabuf.Timeline()
    with tl.fence(1) as fence:
        tl.close()
        tl.close()
        fence.wait(5)
        with pytest.raises(pydmabuf.ClosedError):
            tl.fence(2)


@pytest.mark.parametrize("point", [0, -1, 2**31, 1.5])
def test_bad_points(timeline: pydmabuf.Timeline, point: object) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        timeline.fence(point)  # type: ignore[arg-type]


def test_many_fences_no_leak(timeline: pydmabuf.Timeline) -> None:
    before = open_fds()
    fences = [timeline.fence(i) for i in range(1, 33)]
    merged = fences[0]
    for f in fences[1:]:
        nxt = merged.merge(f)
        if merged is not fences[0]:
            merged.close()
        merged = nxt
    timeline.signal(32)
    merged.wait(10)
    merged.close()
    for f in fences:
        f.close()
    deadline = time.monotonic() + 2
    while open_fds() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_fds() == before


def test_timeline_kind() -> None:
    try:
        with pydmabuf.Timeline() as tl:
            assert tl.kind in (("fallback",) if BACKEND == "fallback" else ("sw_sync", "vgem"))
            assert "Timeline" in repr(tl)
    except pydmabuf.UnsupportedError as exc:
        assert "vgem" in str(exc)
