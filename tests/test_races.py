"""Thread races: one thread closes an object while another is inside its methods.

The contract (README, "Threads"): a method racing a ``close()`` either completes on
the object's own file or raises ``ClosedError``; it never acts on a file that reused
the fd number. Each round, thread A loops over every method of a fresh object while
the main thread closes it at a random moment and at once creates *victims*, files
that are likely to get the old number: new buffers (zero-filled, unnamed), a memfd,
a pipe, fences. Afterwards no victim may be renamed or written, and A may have seen
nothing but success and ``ClosedError``.

The rounds run in a forked child, so a SIGBUS (a mapping of the wrong file) fails
the test instead of killing the run; the child reports its counts through a pipe.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _procs import fork, join
from conftest import BACKEND, IN_VM, TIMELINE_MISSING, needs_timeline, open_fds

import pydmabuf

PAGE = 4096
# Rounds per race: a few seconds natively; the emulated VM is ~10x slower.
ROUNDS = 400 if IN_VM else 1500
MARK = "raced"
MARK_BYTES = b"RACED!!!"
NAME_XATTR = "user.pydmabuf.name"  # where the fallback's set_name lands on a memfd
MAX_REPORTED = 8  # keep the child's report well inside one pipe buffer
Stats = dict[str, Any]


def _run_in_child(body: Callable[[], Stats], timeout: float) -> Stats:
    """``body()`` in a forked child; its result dict, or a failure saying how it died."""
    r, w = os.pipe()

    def child() -> int:
        os.close(r)
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: more races
        before = open_fds()
        stats = body()
        stats["fds_left"] = open_fds() - before  # every deferred close happened
        data = json.dumps(stats).encode()
        os.write(w, data)
        return 0

    pid = fork(child)
    os.close(w)
    try:
        status = join(pid, timeout)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
    died = f" (killed by signal {-status})" if status < 0 else ""
    assert status == 0, f"the racing child failed: exit status {status}{died}"
    result: Stats = json.loads(b"".join(chunks))
    return result


def _note(stats: Stats, key: str, detail: str) -> None:
    stats[key] += 1
    if len(stats["details"]) < MAX_REPORTED:
        stats["details"].append(f"{key}: {detail}")


def _hammer(ops: list[Callable[[], object]], unexpected: list[str]) -> None:
    """Thread A: every op, over and over, until the object is closed."""
    while True:
        for op in ops:
            try:
                op()
            except pydmabuf.ClosedError:
                return
            except BaseException as exc:
                unexpected.append(f"{getattr(op, '__name__', op)}: {exc!r}")
                return


def _race(ops: list[Callable[[], object]], target: pydmabuf.Buffer | pydmabuf.SyncFile | pydmabuf.Heap,
          reuse: Callable[[], None], rng: random.Random, stats: Stats) -> list[str]:
    """One round: A hammers, we close at a random moment and reuse the number at once."""
    unexpected: list[str] = []
    a = threading.Thread(target=_hammer, args=(ops, unexpected))
    a.start()
    time.sleep(rng.random() * 300e-6)
    target.close()
    # A was inside a method: close() left the number to A's release (the race this
    # file is about actually happened).
    stats["deferred"] += bool(getattr(target, "_cell", None))
    reuse()
    a.join()
    return unexpected


def _zero_filled(buf: pydmabuf.Buffer) -> bool:
    with buf.map(write=False) as m:
        return m[:] == bytes(len(m))


def _memfd(size: int) -> int:
    fd = os.memfd_create("race-victim", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _buffer_ops(buf: pydmabuf.Buffer) -> list[Callable[[], object]]:
    def set_name() -> None:
        buf.set_name(MARK)

    def map_write() -> None:
        with buf.map() as m:
            m[:len(MARK_BYTES)] = MARK_BYTES

    def cpu_access() -> None:
        with buf.cpu_access():
            pass

    def export_sync_file() -> None:
        buf.export_sync_file().close()

    def name() -> object:
        return buf.name

    def wait() -> None:
        buf.wait(timeout=0)

    return [set_name, map_write, cpu_access, export_sync_file, name, buf.info, wait]


def _buffer_rounds(rounds: int) -> Stats:
    rng = random.Random(9)
    stats: Stats = {"rounds": 0, "deferred": 0, "renamed": 0, "written": 0, "unexpected": 0, "details": []}
    with pydmabuf.Heap("system") as heap:
        for i in range(rounds):
            buf = heap.allocate(PAGE)
            victims: list[pydmabuf.Buffer] = []
            files: list[int] = []

            def reuse(i: int = i, victims: list[pydmabuf.Buffer] = victims, files: list[int] = files) -> None:
                # Whichever is made first gets the old number if close() released it.
                makers = [lambda: victims.append(heap.allocate(PAGE)),
                          lambda: files.append(_memfd(PAGE)),
                          lambda: files.extend(os.pipe())]
                for k in range(len(makers)):
                    makers[(i + k) % len(makers)]()
                victims.append(heap.allocate(PAGE))

            for problem in _race(_buffer_ops(buf), buf, reuse, rng, stats):
                _note(stats, "unexpected", problem)
            for v in victims:
                if v.name is not None:
                    _note(stats, "renamed", f"round {i}: victim buffer named {v.name!r}")
                if not _zero_filled(v):
                    _note(stats, "written", f"round {i}: victim buffer written")
                v.close()
            memfd = _victim_memfd(files)
            for fd in files:
                if fd == memfd:
                    if os.pread(fd, PAGE, 0) != bytes(PAGE):
                        _note(stats, "written", f"round {i}: victim memfd written")
                    try:
                        os.getxattr(fd, NAME_XATTR)
                        _note(stats, "renamed", f"round {i}: victim memfd got a name xattr")
                    except OSError:
                        pass
                os.close(fd)
            stats["rounds"] += 1
    return stats


def _victim_memfd(files: list[int]) -> int:
    for fd in files:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
            return fd
    raise AssertionError("no memfd among the victims")


def _report(what: str, stats: Stats) -> None:
    print(f"\n{what} on {BACKEND}: {stats['rounds']} rounds, " +
          ", ".join(f"{k} {v}" for k, v in stats.items() if k not in ("rounds", "details")))


def test_buffer_methods_racing_close_never_touch_a_reused_number() -> None:
    stats = _run_in_child(lambda: _buffer_rounds(ROUNDS), timeout=240)
    _report("Buffer vs close", stats)
    assert stats["rounds"] == ROUNDS
    assert (stats["renamed"], stats["written"], stats["unexpected"]) == (0, 0, 0), stats["details"]
    assert stats["fds_left"] == 0


def _sync_file_rounds(rounds: int) -> Stats:
    rng = random.Random(10)
    stats: Stats = {"rounds": 0, "deferred": 0, "wrong_target": 0, "unexpected": 0, "details": []}
    with pydmabuf.Timeline() as timeline:
        timeline.signal(1)
        pending_point = 2**31 - 1  # never signaled during the rounds
        for i in range(rounds):
            fence = timeline.fence(1)  # signaled: a wrong target (pending, a pipe) shows
            victims: list[pydmabuf.SyncFile] = []
            files: list[int] = []
            seen: list[str] = []

            def signaled(fence: pydmabuf.SyncFile = fence, seen: list[str] = seen) -> None:
                if not fence.signaled:
                    seen.append("signaled is False")

            def wait(fence: pydmabuf.SyncFile = fence, seen: list[str] = seen) -> None:
                try:
                    fence.wait(timeout=0)
                except pydmabuf.TimeoutError:
                    seen.append("wait timed out")

            def info(fence: pydmabuf.SyncFile = fence, seen: list[str] = seen) -> None:
                status = fence.info().status
                if status != 1:
                    seen.append(f"info().status {status}")

            def reuse(i: int = i, victims: list[pydmabuf.SyncFile] = victims, files: list[int] = files) -> None:
                makers = [lambda: victims.append(timeline.fence(pending_point)),
                          lambda: files.extend(os.pipe()),
                          lambda: files.append(_memfd(PAGE))]
                for k in range(len(makers)):
                    makers[(i + k) % len(makers)]()

            for problem in _race([signaled, wait, info], fence, reuse, rng, stats):
                _note(stats, "unexpected", problem)
            for problem in seen:
                _note(stats, "wrong_target", f"round {i}: {problem}")
            for v in victims:
                if v.signaled:
                    _note(stats, "wrong_target", f"round {i}: a victim fence signaled")
                v.close()
            for fd in files:
                os.close(fd)
            stats["rounds"] += 1
    return stats


@needs_timeline
def test_sync_file_methods_racing_close_never_touch_a_reused_number() -> None:
    assert TIMELINE_MISSING is None
    stats = _run_in_child(lambda: _sync_file_rounds(ROUNDS), timeout=240)
    _report("SyncFile vs close", stats)
    assert stats["rounds"] == ROUNDS
    assert (stats["wrong_target"], stats["unexpected"]) == (0, 0), stats["details"]
    assert stats["fds_left"] == 0


def _heap_rounds(rounds: int) -> Stats:
    rng = random.Random(11)
    stats: Stats = {"rounds": 0, "deferred": 0, "unexpected": 0, "details": []}
    for i in range(rounds):
        heap = pydmabuf.Heap("system")
        files: list[int] = []

        def allocate(heap: pydmabuf.Heap = heap) -> None:
            heap.allocate(PAGE).close()

        def reuse(i: int = i, files: list[int] = files) -> None:
            # A pipe or memfd under the heap's old number makes a wrong ioctl fail
            # (ENOTTY on the kernel), which A reports as unexpected.
            makers = [lambda: files.extend(os.pipe()), lambda: files.append(_memfd(PAGE))]
            for k in range(len(makers)):
                makers[(i + k) % len(makers)]()

        for problem in _race([allocate], heap, reuse, rng, stats):
            _note(stats, "unexpected", f"round {i}: {problem}")
        for fd in files:
            os.close(fd)
        stats["rounds"] += 1
    return stats


def test_heap_allocate_racing_close_never_touches_a_reused_number() -> None:
    rounds = ROUNDS // 2
    stats = _run_in_child(lambda: _heap_rounds(rounds), timeout=240)
    _report("Heap.allocate vs close", stats)
    assert stats["rounds"] == rounds
    assert stats["unexpected"] == 0, stats["details"]
    assert stats["fds_left"] == 0
