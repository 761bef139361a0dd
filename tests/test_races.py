"""Thread races: one thread closes an object while another is inside its methods.

The contract (docs/objects.md, "Threads"): a method racing a ``close()`` either completes on
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

import contextlib
import errno
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
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


# --- FenceSet.add racing close (issue 16, item 5) -----------------------------------

FENCE_SET_ROUNDS = 600 if IN_VM else 3000


def _epoll_targets(epoll_fd: int) -> dict[int, int]:
    """{watched fd number: inode of the file registered under it}, as the kernel
    lists them in the epoll fd's fdinfo."""
    targets = {}
    with open(f"/proc/self/fdinfo/{epoll_fd}", encoding="ascii") as f:
        for line in f:
            if line.startswith("tfd:"):
                fields = line.split()
                ino = next(x for x in fields if x.startswith("ino:"))
                targets[int(fields[1])] = int(ino[4:], 16)
    return targets


def _fence_set_rounds(kind: str, rounds: int) -> Stats:
    """Thread A adds a ready object (a signaled fence, a buffer without fences) to a
    FenceSet, checks what the set registered and discards it, over and over, while we
    close the object and at once make victims that may get its number: pending
    fences, buffers with a pending write fence, a pipe, a memfd. A dup of the object's
    fd keeps its file (and so the set's registration of it) alive, so after every add
    that succeeded the set must report exactly the object ready, and the file
    registered under its number must be the object's."""
    rng = random.Random(12)
    stats: Stats = {"rounds": 0, "deferred": 0, "added": 0, "wrong_file": 0, "unexpected": 0,
                    "details": []}
    with contextlib.ExitStack() as stack:
        timeline = stack.enter_context(pydmabuf.Timeline())
        heap = stack.enter_context(pydmabuf.Heap("system")) if kind == "buffer" else None
        timeline.signal(1)
        pending_point = 2**31 - 1  # never signaled during the rounds
        for i in range(rounds):
            obj: pydmabuf.Buffer | pydmabuf.SyncFile = heap.allocate(PAGE) if heap else timeline.fence(1)
            keep = os.dup(obj.fileno())
            ino = os.fstat(keep).st_ino
            victims: list[pydmabuf.Buffer | pydmabuf.SyncFile] = []
            files: list[int] = []
            fs = pydmabuf.FenceSet()
            wrong: list[str] = []

            def add_check_discard(fs: pydmabuf.FenceSet = fs, obj: pydmabuf.Buffer | pydmabuf.SyncFile = obj,
                                  ino: int = ino, wrong: list[str] = wrong) -> None:
                fs.add(obj)
                stats["added"] += 1
                _seq, fd, _events, new = fs._entries[obj]
                try:
                    ready = fs.wait_any(timeout=0)
                except pydmabuf.TimeoutError:
                    ready = []
                if ready != [obj]:
                    wrong.append(f"the set reports {ready!r} ready")
                elif not new and _epoll_targets(fs._epoll.fileno()).get(fd) != ino:
                    wrong.append(f"another file registered under fd {fd}")
                fs.discard(obj)

            def victim() -> pydmabuf.Buffer | pydmabuf.SyncFile:
                fence = timeline.fence(pending_point)
                if heap is None:
                    return fence
                with fence:
                    buf = heap.allocate(PAGE)
                    buf.import_sync_file(fence, write=True)
                    return buf

            def reuse(i: int = i, victims: list[pydmabuf.Buffer | pydmabuf.SyncFile] = victims,
                      files: list[int] = files) -> None:
                makers = [lambda: victims.append(victim()), lambda: files.extend(os.pipe()),
                          lambda: files.append(_memfd(PAGE))]
                for k in range(len(makers)):
                    makers[(i + k) % len(makers)]()

            try:
                for problem in _race([add_check_discard], obj, reuse, rng, stats):
                    _note(stats, "unexpected", f"round {i}: {problem}")
                for problem in wrong:
                    _note(stats, "wrong_file", f"round {i}: {problem}")
            finally:
                fs.close()
                os.close(keep)
                for v in victims:
                    v.close()
                for fd in files:
                    os.close(fd)
            stats["rounds"] += 1
    return stats


@needs_timeline
def test_fence_set_add_racing_close_never_registers_a_reused_number() -> None:
    stats = _run_in_child(lambda: _fence_set_rounds("sync_file", FENCE_SET_ROUNDS), timeout=240)
    _report("FenceSet.add(SyncFile) vs close", stats)
    assert stats["rounds"] == FENCE_SET_ROUNDS
    assert (stats["wrong_file"], stats["unexpected"]) == (0, 0), stats["details"]
    assert stats["added"] > FENCE_SET_ROUNDS and stats["deferred"]  # close() met an add in flight
    assert stats["fds_left"] == 0


@needs_timeline
def test_fence_set_add_of_buffers_racing_close_never_registers_a_reused_number() -> None:
    stats = _run_in_child(lambda: _fence_set_rounds("buffer", FENCE_SET_ROUNDS), timeout=240)
    _report("FenceSet.add(Buffer) vs close", stats)
    assert stats["rounds"] == FENCE_SET_ROUNDS
    assert (stats["wrong_file"], stats["unexpected"]) == (0, 0), stats["details"]
    assert stats["added"] > FENCE_SET_ROUNDS and stats["deferred"]
    assert stats["fds_left"] == 0


# --- detach() while another thread is inside cpu_access (issue 16, item 6) ------------

def test_detach_is_refused_while_a_thread_is_inside_cpu_access() -> None:
    with pydmabuf.Heap("system") as heap, heap.allocate(PAGE) as buf:
        inside, leave = threading.Event(), threading.Event()

        def bracket() -> None:
            with buf.cpu_access():
                inside.set()
                leave.wait(10)

        a = threading.Thread(target=bracket)
        a.start()
        try:
            assert inside.wait(10)
            with pytest.raises(pydmabuf.BusyError) as refused:
                buf.detach()
            assert refused.value.errno == errno.EBUSY and "detach" in str(refused.value)
            assert not isinstance(refused.value, pydmabuf.ClosedError)
            assert not buf.closed  # refused: still open and usable
            buf.set_name("still-mine")
        finally:
            leave.set()
            a.join()
        fd = buf.detach()  # nothing inside any more
        try:
            assert buf.closed
            with pytest.raises(pydmabuf.ClosedError):
                buf.detach()
        finally:
            os.close(fd)


def _detach_rounds(rounds: int) -> Stats:
    """Thread A brackets CPU access over and over; we detach at a random moment (again
    until it is not refused), close the number we got and at once make victims that
    may get it. A bracket whose END landed on a victim fails (ENOTTY on a pipe, EINVAL
    on another buffer), which A reports as unexpected."""
    rng = random.Random(13)
    stats: Stats = {"rounds": 0, "refused": 0, "unexpected": 0, "details": []}
    with pydmabuf.Heap("system") as heap:
        for i in range(rounds):
            buf = heap.allocate(PAGE)
            ino = os.fstat(buf.fileno()).st_ino
            unexpected: list[str] = []

            def brackets(buf: pydmabuf.Buffer = buf, unexpected: list[str] = unexpected) -> None:
                # With a pause between brackets: detach() refuses while one is open,
                # so a thread that is always inside one would refuse it forever.
                while True:
                    try:
                        with buf.cpu_access():
                            time.sleep(0)  # let the others run while inside
                    except pydmabuf.ClosedError:
                        return
                    except BaseException as exc:
                        unexpected.append(repr(exc))
                        return
                    time.sleep(0)

            a = threading.Thread(target=brackets)
            a.start()
            time.sleep(rng.random() * 300e-6)
            deadline = time.monotonic() + 10
            while True:
                try:
                    fd = buf.detach()
                    break
                except pydmabuf.Error as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    stats["refused"] += 1
                    time.sleep(20e-6)
            if os.fstat(fd).st_ino != ino:
                _note(stats, "unexpected", f"round {i}: detach() handed out another file")
            os.close(fd)
            victim = heap.allocate(PAGE)
            files = [_memfd(PAGE), *os.pipe()]
            a.join()
            for problem in unexpected:
                _note(stats, "unexpected", f"round {i}: {problem}")
            victim.close()
            for f in files:
                os.close(f)
            stats["rounds"] += 1
    return stats


def test_detach_racing_cpu_access_never_hands_out_a_used_number() -> None:
    rounds = ROUNDS
    stats = _run_in_child(lambda: _detach_rounds(rounds), timeout=240)
    _report("detach vs cpu_access", stats)
    assert stats["rounds"] == rounds
    assert stats["unexpected"] == 0, stats["details"]
    assert stats["refused"]  # the race happened
    assert stats["fds_left"] == 0
