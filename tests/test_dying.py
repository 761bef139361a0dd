"""kill -9 of the process that owns a fence: no waiter may hang on a dead peer.

A forked child makes a Timeline (so it alone can signal its fences), sends a fence
to the parent and then waits to be killed. What the parent's fence does when the
child dies with SIGKILL depends on where it came from, and each case is asserted:

- fallback: the fence is a socketpair end whose other end died with the child: it
  signals at once with status -ENOENT (``info().status < 0``);
- kernel, vgem: the child's DRM fd is closed as it exits, and vgem's postclose
  signals every fence still pending, without an error (status 1) — well before
  vgem's own ~10 s timer;
- kernel, sw_sync (not built by Debian): closing the timeline signals with -ENOENT.

(Producers and consumers of the channel dying are covered in tests/test_channel.py.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator

import pytest
from _procs import fork, join, kill9
from conftest import BACKEND, needs_timeline

import pydmabuf

PAGE = 4096
# Bounds, not speed: a dead owner's fence signals at once; vgem's own timer fires at
# ~10 s, so a wait bounded well below that tells the two apart.
SIGNALS_WITHIN = 5.0
DEAD_OWNER_STATUS = {"fallback": -errno.ENOENT, "sw_sync": -errno.ENOENT, "vgem": 1}

pytestmark = needs_timeline


def _timeline_kind() -> str:
    with pydmabuf.Timeline() as tl:
        return tl.kind


KIND = _timeline_kind()


def _serve(sock: socket.socket, make: Callable[[pydmabuf.Timeline], list[pydmabuf.SyncFile]]) -> int:
    """The child: own a Timeline, send the fences ``make`` returns, wait to be killed."""
    timeline = pydmabuf.Timeline()  # only this process can signal it
    fences = make(timeline)
    pydmabuf.send(sock, *fences)
    for fence in fences:
        fence.close()
    while True:
        signal.pause()


def _kill_unless_reaped(pid: int) -> None:
    """Clean up after a test that failed before its kill9 (which reaps the child)."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # reaped already: the number may belong to someone else now
    if not done:
        os.kill(pid, signal.SIGKILL)
        join(pid)


@contextlib.contextmanager
def child_owning(make: Callable[[pydmabuf.Timeline], list[pydmabuf.SyncFile]]
                 ) -> Iterator[tuple[int, list[pydmabuf.SyncFile]]]:
    """(pid, the fences it sent); the child is killed and reaped at the end in any case."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = fork(lambda: _serve(theirs, make))
    theirs.close()
    received: list[pydmabuf.SyncFile] = []
    try:
        with ours:
            objs = pydmabuf.recv(ours, timeout=20)
        received = [o for o in objs if isinstance(o, pydmabuf.SyncFile)]
        assert len(received) == len(objs)
        yield pid, received
    finally:
        for fence in received:
            fence.close()
        _kill_unless_reaped(pid)


@pytest.fixture
def pending_from_child() -> Iterator[tuple[int, list[pydmabuf.SyncFile]]]:
    with child_owning(lambda tl: [tl.fence(1)]) as child:
        yield child


def test_fence_of_a_killed_owner_signals_with_the_documented_status(
        pending_from_child: tuple[int, list[pydmabuf.SyncFile]]) -> None:
    pid, [fence] = pending_from_child
    assert not fence.signaled
    assert fence.info().status == 0
    kill9(pid)
    fence.wait(timeout=SIGNALS_WITHIN)
    info = fence.info()
    assert info.status == DEAD_OWNER_STATUS[KIND], (KIND, info)
    assert info.signaled
    assert all(f.status == info.status for f in info.fences), info


def test_waiters_in_other_threads_and_wait_any_wake_when_the_owner_dies(
        pending_from_child: tuple[int, list[pydmabuf.SyncFile]]) -> None:
    import threading

    pid, [fence] = pending_from_child
    woke: list[BaseException | None] = []

    def waiter() -> None:
        try:
            fence.wait(timeout=SIGNALS_WITHIN * 2)
            woke.append(None)
        except BaseException as exc:
            woke.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    kill9(pid)
    assert pydmabuf.wait_any([fence], timeout=SIGNALS_WITHIN) == [fence]
    thread.join(SIGNALS_WITHIN * 2)
    assert woke == [None]


def _two_pending(tl: pydmabuf.Timeline) -> list[pydmabuf.SyncFile]:
    return [tl.fence(1), tl.fence(2)]


def _merging_child(sock: socket.socket) -> int:
    """Receive two fences, merge them, send the merge back, wait to be killed."""
    a, b = pydmabuf.recv(sock, timeout=20)
    assert isinstance(a, pydmabuf.SyncFile) and isinstance(b, pydmabuf.SyncFile)
    merged = a.merge(b)
    a.close()
    b.close()
    pydmabuf.send(sock, merged)
    merged.close()
    while True:
        signal.pause()


def test_merged_fence_whose_merging_process_dies(timeline: pydmabuf.Timeline) -> None:
    # The parent owns the inputs; a child merges them and dies before they signal.
    # Fallback: the merge's signal end lived in the child's merge thread, so the merge
    # signals at once with -ENOENT. Kernel: a merge is a fence array that belongs to no
    # process; it signals (status 1) when its inputs do.
    first, second = timeline.fence(1), timeline.fence(2)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = fork(lambda: _merging_child(theirs))
    theirs.close()
    merged = None
    try:
        with ours:
            pydmabuf.send(ours, first, second)
            [merged] = pydmabuf.recv(ours, timeout=20)
        assert isinstance(merged, pydmabuf.SyncFile)
        assert not merged.signaled
        kill9(pid)
        if BACKEND == "fallback":
            merged.wait(timeout=SIGNALS_WITHIN)
            assert merged.info().status == -errno.ENOENT
            assert not first.signaled and not second.signaled
        else:
            with pytest.raises(pydmabuf.TimeoutError):
                merged.wait(timeout=0.2)
            timeline.signal(2)
            merged.wait(timeout=SIGNALS_WITHIN)
            assert merged.info().status == 1
    finally:
        timeline.signal(2)
        for fence in (first, second, merged):
            if fence is not None:
                fence.close()
        _kill_unless_reaped(pid)


def test_merge_of_fences_from_a_killed_owner_signals() -> None:
    # Both inputs belong to the child; the parent merges them. The merge signals once
    # both have, which they do when their owner dies.
    with child_owning(_two_pending) as (pid, (a, b)):
        merged = a.merge(b)
        try:
            assert not merged.signaled
            kill9(pid)
            merged.wait(timeout=SIGNALS_WITHIN)
            assert a.info().status == b.info().status == DEAD_OWNER_STATUS[KIND]
            assert merged.signaled
        finally:
            merged.close()


@pytest.mark.parametrize("write", [True, False], ids=["write-fence", "read-fence"])
def test_buffer_busy_with_a_killed_owners_fence_becomes_idle(heap: pydmabuf.Heap, write: bool) -> None:
    with child_owning(lambda tl: [tl.fence(1)]) as (pid, [fence]), heap.allocate(PAGE) as buf:
        buf.import_sync_file(fence, write=write)
        with pytest.raises(pydmabuf.TimeoutError):
            buf.wait(write=True, timeout=0)
        kill9(pid)
        buf.wait(write=True, timeout=SIGNALS_WITHIN)
        buf.wait(timeout=0)
        with buf.cpu_access(timeout=SIGNALS_WITHIN), buf.map() as m:
            m[:4] = b"free"
        with buf.export_sync_file() as snapshot:
            assert snapshot.signaled
        assert pydmabuf.wait_all([buf, fence], timeout=0, write=True) is None
