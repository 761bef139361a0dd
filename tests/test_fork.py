"""Timelines across fork(): only the process that made a Timeline keeps what signals
its fences, so a fence signals when that process dies even if it forked children.

The owner is a child of the test (so that it can be killed with SIGKILL): it makes a
Timeline and a fence, sends the fence here, forks a grandchild that inherits both
(the fallback's signal ends, the kernel's vgem or sw_sync fd) and lives on, and is
then killed. What the fence does next depends on where it came from:

- fallback: the owner's signal end closes with it, and the grandchild closed its copy
  at fork: the fence signals at once with status -ENOENT;
- kernel, vgem: the grandchild closed its copy of the DRM fd at fork, so the owner's
  exit releases the file and vgem's postclose signals the fence at once, without an
  error (status 1). Had the grandchild kept its copy, the fence would have stayed
  pending until vgem's own timer (~10 s, also status 1);
- kernel, sw_sync: closing the timeline signals with -ENOENT.

In the grandchild the Timeline is closed: ``closed`` is True, ``signal()`` and
``fence()`` raise ClosedError saying why, and closing it (or exiting) signals nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from _procs import fence_from_child, fork, join, kill9
from conftest import IN_VM, needs_timeline

import pydmabuf

pytestmark = needs_timeline

# vgem's own timer fires at ~10 s: a bound well below tells "signaled because the
# owner died" from "signaled by the timer".
SIGNALS_WITHIN = 5.0
QUICK = 2.0 if IN_VM else 0.5
DEAD_OWNER_STATUS = {"fallback": -errno.ENOENT, "sw_sync": -errno.ENOENT, "vgem": 1}


def _kind() -> str:
    with pydmabuf.Timeline() as tl:
        return tl.kind


KIND = _kind()


def _in_forked_child(tl: pydmabuf.Timeline) -> dict[str, object]:
    """What a forked child sees of its parent's Timeline."""
    report: dict[str, object] = {"closed": tl.closed}
    for name, op in (("signal", lambda: tl.signal(1)), ("fence", lambda: tl.fence(2).close())):
        try:
            op()
            report[name] = "no error"
        except pydmabuf.ClosedError as exc:
            report[name] = str(exc)
        except BaseException as exc:
            report[name] = f"unexpected {exc!r}"
    return report


def _owner(sock: socket.socket) -> int:
    """The owner (a child of the test): Timeline and fence, the fence sent to the test,
    a grandchild forked that holds everything inherited and reports what it sees."""
    tl = pydmabuf.Timeline()
    fence = tl.fence(1)
    pydmabuf.send(sock, fence)

    def grandchild() -> int:
        sock.send(json.dumps(_in_forked_child(tl)).encode())
        while True:  # holds the fence and whatever fork gave it, until killed
            signal.pause()

    pid = fork(grandchild)
    sock.send(struct.pack("=i", pid))
    while True:
        signal.pause()


def test_fence_signals_when_its_owner_dies_though_a_forked_child_lives_on() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    owner = fork(lambda: _owner(theirs))
    theirs.close()
    grandchild = 0
    try:
        with ours:
            [fence] = pydmabuf.recv(ours, timeout=20)
            assert isinstance(fence, pydmabuf.SyncFile)
            messages = [ours.recv(4096) for _ in range(2)]  # the report and the pid, any order
        report = json.loads(next(m for m in messages if m.startswith(b"{")))
        grandchild = struct.unpack("=i", next(m for m in messages if not m.startswith(b"{")))[0]
        with fence:
            assert report["closed"] is True, report
            for op in ("signal", "fence"):
                assert "forked child" in str(report[op]), report
            assert not fence.signaled  # the grandchild signaled nothing
            kill9(owner)
            start = time.monotonic()
            fence.wait(timeout=SIGNALS_WITHIN)
            took = time.monotonic() - start
            info = fence.info()
            print(f"\n{KIND}: the fence signaled {took * 1000:.0f} ms after its owner's SIGKILL, "
                  f"status {info.status}, a forked child alive")
            assert took < QUICK
            assert info.status == DEAD_OWNER_STATUS[KIND], (KIND, info)
    finally:
        if not grandchild:  # failed before its pid arrived: ask the kernel, or it outlives the run
            with contextlib.suppress(OSError, ValueError):
                grandchild = int(Path(f"/proc/{owner}/task/{owner}/children").read_text().split()[0])
        if grandchild:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(owner, signal.SIGKILL)
            os.waitpid(owner, 0)


def test_a_forked_child_closing_its_copy_signals_nothing(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence:
        def child() -> int:
            report = _in_forked_child(timeline)
            timeline.close()  # nothing to do here: the parent's fences are its own
            assert report["closed"] and "forked child" in str(report["signal"]), report
            return 0

        assert join(fork(child)) == 0
        assert not fence.signaled and not timeline.closed
        timeline.signal(1)  # the parent still can
        fence.wait(timeout=5)
        assert fence.info().status == 1


def test_a_child_signals_with_a_timeline_of_its_own() -> None:
    """What a child that should signal does instead: make a Timeline and send the fence."""
    pid, ours, fence = fence_from_child()
    with ours, fence:
        ours.send(b"g")
        fence.wait(timeout=10)
        assert fence.info().status == 1
    assert join(pid) == 0


def test_fork_while_other_threads_make_fences() -> None:
    """fork() takes every Timeline's lock, so it waits for a fence being made in
    another thread, and the child inherits no fence half made. No deadlock, and every
    child finds its copy closed."""
    stop = threading.Event()
    timelines = [pydmabuf.Timeline() for _ in range(2)]
    errors: list[BaseException] = []

    def churn(tl: pydmabuf.Timeline) -> None:
        point = 0
        try:
            while not stop.is_set():
                point += 1
                tl.fence(point).close()
                tl.signal(point)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(tl,)) for tl in timelines]
    for t in threads:
        t.start()
    try:
        for _ in range(10 if IN_VM else 40):
            pid = fork(lambda: 0 if all(tl.closed for tl in timelines) else 3)
            assert join(pid, 30) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
        for tl in timelines:
            tl.close()
    assert not errors, errors


@pytest.mark.parametrize("method", ["fork"])
def test_multiprocessing_fork_child_cannot_signal(method: str, timeline: pydmabuf.Timeline) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    with timeline.fence(1) as fence:
        p = ctx.Process(target=_try_to_signal, args=(timeline,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        p.close()
        assert not fence.signaled
        timeline.signal(1)
        assert fence.signaled


def _try_to_signal(tl: pydmabuf.Timeline) -> None:
    with pytest.raises(pydmabuf.ClosedError, match="forked child"):
        tl.signal(1)
