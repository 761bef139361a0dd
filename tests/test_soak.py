"""Bounded resources: nothing accumulates over many buffer lifetimes, waits on busy
buffers open no fd, and nothing breaks past 1024 open fds.

The soak is ``benchmarks/soak.py``'s (``python benchmarks/soak.py`` runs the
100,000-cycle version and prints the samples); here a bounded run asserts that the
fd count comes back to where it started and RSS stays flat after a warm-up.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from pathlib import Path

import pytest
from _procs import fork, join
from conftest import BACKEND, IN_VM, load_script, needs_timeline, open_fds

import pydmabuf

PAGE = 4096
# ~6 s natively; the emulated VM is ~10x slower, and the kernel's fences cost more.
CYCLES = 2_000 if IN_VM else 20_000
EVERY = CYCLES // 10
RSS_GROWTH_LIMIT = 8 << 20  # generous: a per-buffer leak of 400 bytes would show
# Closed buffers whose fence signaled a moment ago may still hold fence fds until the
# fallback's merge thread runs: a backlog of a few dozen, never a trend.
FD_BACKLOG_LIMIT = 256


soak = load_script(Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py", "pydmabuf_soak")


@needs_timeline
def test_soak_keeps_fds_and_rss_flat() -> None:
    result = soak.soak(CYCLES, EVERY)
    low, high = result.fd_range
    samples = [(s.cycle, s.fds, round(s.rss / 2**20, 2)) for s in result.samples]
    print(f"\nsoak on {BACKEND}: {CYCLES} cycles; fds {result.fds_before} before, {low}..{high} while "
          f"running, {result.fds_after} after; RSS {result.rss_growth(EVERY) / 2**20:+.2f} MiB after "
          f"{EVERY} cycles; samples (cycle, fds, RSS MiB): {samples}")
    assert result.fds_after == result.fds_before, samples
    assert high - result.fds_before < FD_BACKLOG_LIMIT, samples
    assert result.rss_growth(EVERY) < RSS_GROWTH_LIMIT, samples


@needs_timeline
def test_closing_a_busy_buffer_releases_its_fence_fds(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    # The kernel drops a buffer's fences with the buffer. The fallback must too: a
    # fence that never signals (a stalled producer) must not pin fds per buffer closed.
    with timeline.fence(1) as fence:
        before = open_fds()
        for _ in range(50):
            buf = heap.allocate(PAGE)
            buf.import_sync_file(fence)
            buf.close()
        after = open_fds()
        timeline.signal(1)
    assert after == before, f"{after - before} fds left behind by 50 closed busy buffers"


def _run(child: Callable[[], int], timeout: float = 60) -> None:
    pid = fork(child)
    assert join(pid, timeout) == 0, "the child failed (its traceback is in the captured output)"


@needs_timeline
def test_waits_on_a_busy_buffer_open_no_fd(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    # 2,000 polls under RLIMIT_NOFILE=64: each one TimeoutError, never EMFILE.
    fence = timeline.fence(1)
    buf = heap.allocate(PAGE)
    buf.import_sync_file(fence)

    def child() -> int:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        before = open_fds()
        for i in range(2_000):
            for what, attempt in (("wait", lambda: buf.wait(timeout=0)),
                                  ("wait(write=True)", lambda: buf.wait(write=True, timeout=0)),
                                  ("cpu_access", lambda: buf.cpu_access(timeout=0).__enter__())):
                try:
                    attempt()
                except pydmabuf.TimeoutError:
                    continue
                except OSError as exc:
                    print(f"poll {i}: {what} raised {exc!r}" +
                          (" (EMFILE: a wait opened fds)" if exc.errno == errno.EMFILE else ""))
                    return 1
                print(f"poll {i}: {what} on a busy buffer did not time out")
                return 1
        return 0 if open_fds() == before else 2

    try:
        _run(child)
    finally:
        timeline.signal(1)
        buf.close()
        fence.close()


def test_cpu_access_and_waits_past_1024_fds(heap: pydmabuf.Heap) -> None:
    # select() cannot watch an fd >= 1024 (FD_SETSIZE); poll/epoll can.
    def child() -> int:
        need = 1300
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))  # root (the VM) may
        elif soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        null = os.open(os.devnull, os.O_RDONLY)
        padding = [os.dup(null) for _ in range(1100)]
        assert padding[-1] >= 1024
        with pydmabuf.Timeline() as timeline, heap.allocate(PAGE) as buf, buf.map() as m:
            fence = timeline.fence(1)
            assert buf.fileno() > 1024 and fence.fileno() > 1024
            buf.import_sync_file(fence)
            with pytest.raises(pydmabuf.TimeoutError), buf.cpu_access(timeout=0.05):
                pass
            with pytest.raises(pydmabuf.TimeoutError):
                pydmabuf.wait_any([fence, buf], timeout=0.05)
            timeline.signal(1)
            with buf.cpu_access(timeout=5):
                m[:4] = b"1024"
            buf.wait(write=True, timeout=5)
            fence.wait(timeout=5)
            assert pydmabuf.wait_all([fence, buf], timeout=5) is None
            with pydmabuf.FenceSet([fence, buf]) as waiting:
                assert waiting.wait_any(timeout=5) == [fence, buf]
            fence.close()
        return 0

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1300 and os.geteuid() != 0:
        pytest.fail("the hard RLIMIT_NOFILE is below 1300 and we are not root: cannot open 1100 fds")
    _run(child)


@needs_timeline
def test_the_soak_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    # benchmarks/soak.py's command line, tiny, on the default backend.
    assert soak.main(["--cycles", "20", "--every", "10", "--backend", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"on the {BACKEND} backend" in out and "fds:" in out and "RSS:" in out
