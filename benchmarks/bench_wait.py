"""Fence wakeup latency: pydmabuf's waits next to a C poll()/epoll baseline, same run.

A forked child (which makes the Timeline and sends its fences: only a Timeline's
maker signals it) signals one fence per round (after DELAY, so the parent is already
asleep); the latency is the parent's CLOCK_MONOTONIC return time minus the fence's
own signal timestamp (``info()``; the C baseline's child writes its clock into the
eventfd the same way). The other N-1 fences never signal. "call" is the cost of
one call when a fence is already signaled (setup and teardown included).

    python benchmarks/bench_wait.py [--rounds R] [--counts 1,16,256,1024]

Fences come from Timeline: socketpair fences on the fallback backend, vgem fences on a kernel
(which expire after ~10 s, so keep R small in a slow VM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from pathlib import Path

import pydmabuf

HERE = Path(__file__).resolve().parent
Row = tuple[str, int, float, float, float, int]  # what, n, median us, p90 us, call us, missed


def child_signals(sock: socket.socket, go: int, rounds: int, delay: float) -> None:
    """In the child: make the Timeline (only its maker signals it) and the round's
    fences, send them to the parent, then per byte received sleep ``delay`` and
    signal the next point."""
    code = 1
    try:
        with pydmabuf.Timeline() as timeline:
            fences = [timeline.fence(r + 1) for r in range(rounds)]
            for start in range(0, rounds, pydmabuf.share.MAX_OBJECTS):
                pydmabuf.send(sock, *fences[start:start + pydmabuf.share.MAX_OBJECTS])
            for fence in fences:
                fence.close()
            for r in range(rounds):
                if not os.read(go, 1):
                    break
                time.sleep(delay)
                timeline.signal(r + 1)
        code = 0
    finally:
        os._exit(code)


def measure(what: str, n: int, rounds: int, delay: float,
            wait: Callable[[pydmabuf.SyncFile], None], call: Callable[[], object],
            after: Callable[[pydmabuf.SyncFile], None] = lambda f: None) -> Row:
    """``wait(active)`` blocks until round r's fence signals; run it ``rounds`` times.
    ``after(active)`` (untimed) tidies up each round."""
    with ExitStack() as stack:
        go_r, go_w = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            ours.close()
            child_signals(theirs, go_r, rounds, delay)
        os.close(go_r)
        theirs.close()
        with ours:
            actives: list[pydmabuf.SyncFile] = []
            while len(actives) < rounds:
                actives += [stack.enter_context(f) for f in pydmabuf.recv(ours, timeout=60)]  # type: ignore[misc]
        lat, missed = [], 0
        try:
            for fence in actives:
                before = time.monotonic_ns()
                os.write(go_w, b"g")
                wait(fence)
                ret = time.monotonic_ns()
                after(fence)
                stamp = fence.info().fences[0].timestamp_ns
                missed += stamp < before  # signaled before we slept: not a real wakeup
                lat.append((ret - stamp) / 1000)
        finally:
            os.close(go_w)
            os.waitpid(pid, 0)
        calls = 0
        start = time.perf_counter()
        while calls < 50 or time.perf_counter() - start < 0.05:
            call()
            calls += 1
        call_us = (time.perf_counter() - start) / calls * 1e6
    lat.sort()
    return what, n, statistics.median(lat), lat[len(lat) * 9 // 10], call_us, missed


@contextmanager
def fences(n_idle: int) -> Iterator[tuple[list[pydmabuf.SyncFile], pydmabuf.SyncFile]]:
    """``n_idle`` fences that stay pending, and one signaled fence (for call costs).
    Made afresh per measurement: vgem fences expire ~10 s after they are made."""
    with ExitStack() as stack:
        idle_tl = stack.enter_context(pydmabuf.Timeline())
        idle = [stack.enter_context(idle_tl.fence(1)) for _ in range(n_idle)]
        done_tl = stack.enter_context(pydmabuf.Timeline())
        done = stack.enter_context(done_tl.fence(1))
        done_tl.signal(1)
        yield idle, done
        assert not any(f.signaled for f in idle), "idle fences signaled during the run"


def python_rows(n: int, rounds: int, delay: float) -> list[Row]:
    rows = []
    with fences(n - 1) as (idle, done), pydmabuf.FenceSet(idle) as fs:

        def set_wait(fence: pydmabuf.SyncFile) -> None:
            fs.add(fence)  # before the child signals: not part of the wakeup
            ready = fs.wait_any()
            assert ready == [fence], f"an idle fence signaled (vgem expiry?): {ready}"

        def set_call() -> None:
            fs.add(done)
            fs.wait_any()
            fs.discard(done)

        rows.append(measure("FenceSet.wait_any", n, rounds, delay, set_wait, set_call, fs.discard))

    with fences(n - 1) as (idle, done), pydmabuf.Timeline() as tl, tl.fence(1) as never:
        one_shot = [*idle, done]

        def any_wait(fence: pydmabuf.SyncFile) -> None:
            assert pydmabuf.wait_any([*idle, fence]) == [fence]

        def blocking_setup() -> None:  # register all, sleep the minimum 1 ms, tear down
            with suppress(pydmabuf.TimeoutError):
                pydmabuf.wait_any([*idle, never], timeout=1e-6)

        # The child must signal only once the parent sleeps in epoll.
        setup = min(_time(blocking_setup) for _ in range(3))
        rows.append(measure("wait_any(list)", n, rounds, delay + 2 * setup, any_wait,
                            lambda: pydmabuf.wait_any(one_shot)))
        tl.signal(1)

    if n == 1:
        with fences(0) as (_idle, done), closing(asyncio.new_event_loop()) as loop:
            rows.append(measure("SyncFile.wait", n, rounds, delay, lambda f: f.wait(), done.wait))
            rows.append(measure("await wait_async", n, rounds, delay,
                                lambda f: loop.run_until_complete(f.wait_async()),
                                lambda: loop.run_until_complete(done.wait_async())))
    return rows


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def c_rows(counts: list[int], rounds: int, delay: float) -> list[Row]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        print("no C compiler: C baseline skipped", file=sys.stderr)
        return []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "pollwait")
        subprocess.run([cc, "-O2", "-o", exe, str(HERE / "c" / "pollwait.c")], check=True)
        for mode in ("poll", "epoll"):
            for n in counts:
                out = subprocess.run([exe, mode, str(n), str(rounds), str(int(delay * 1e6))],
                                     check=True, capture_output=True, text=True).stdout.split()
                rows.append((f"C {mode}()", n, int(out[2]) / 1000, int(out[3]) / 1000,
                             int(out[4]) / 1000, 0))
    return rows


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    try:  # raising the hard limit needs root (as in the VM)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--counts", default="1,16,256,1024")
    ap.add_argument("--delay-us", type=float, default=300.0, help="child's sleep before signaling")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    _raise_fd_limit(2 * max(counts) + args.rounds + 64)
    delay = args.delay_us / 1e6
    rows: list[Row] = []
    with pydmabuf.Timeline() as tl:
        kind = tl.kind
    print(f"backend={pydmabuf.backend} fences={kind} rounds={args.rounds} python={sys.version.split()[0]}")
    for n in counts:
        rows += python_rows(n, args.rounds, delay)
    rows += c_rows(counts, args.rounds, delay)
    print(f"{'wait':<20}{'fences':>7}{'wakeup median us':>18}{'p90 us':>9}{'call us':>10}{'missed':>8}")
    for what, n, med, p90, call, missed in sorted(rows, key=lambda r: (r[0], r[1])):
        print(f"{what:<20}{n:>7}{med:>18.1f}{p90:>9.1f}{call:>10.1f}{missed:>8}")


if __name__ == "__main__":
    main()
