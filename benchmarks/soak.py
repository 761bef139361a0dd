"""Soak: many buffer lifetimes in a row, with the fd count and RSS sampled as it goes.

Each cycle allocates a page-sized buffer, maps it and writes it inside a CPU-access
bracket, makes it busy with a pending Timeline fence (the "device" writing it),
exports a snapshot fence, checks that ``wait(timeout=0)`` says busy, closes the
buffer, and only then signals the fence (the device finishing late). Nothing in this
loop should accumulate: the fd count and RSS must stay flat.

    python benchmarks/soak.py                      # 100,000 cycles on the fallback
    python benchmarks/soak.py --cycles 20000 --every 2000 --backend kernel

Prints one line per sample (cycle, fds, RSS) and a summary: the growth after the
first sample (warm-up), and the exit status is 1 if the fd count did not return to
where it started. ``tests/test_soak.py`` runs a bounded version of ``soak()``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass, field

import pydmabuf

PAGE = 4096
PAYLOAD = b"soak" * 16


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    """This process's resident set in bytes (/proc/self/statm's second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cycle(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline, point: int) -> None:
    """One buffer's whole life; ``point`` is a Timeline point not signaled yet."""
    buf = heap.allocate(PAGE)
    with buf.map() as m, buf.cpu_access(read=False, write=True, timeout=1):
        m[:len(PAYLOAD)] = PAYLOAD
    fence = timeline.fence(point)
    buf.import_sync_file(fence)
    buf.export_sync_file().close()
    try:
        buf.wait(timeout=0)
    except pydmabuf.TimeoutError:
        pass
    else:
        raise AssertionError("wait(timeout=0) on a busy buffer returned")
    buf.close()
    timeline.signal(point)
    fence.close()


@dataclass
class Sample:
    cycle: int
    fds: int
    rss: int
    seconds: float


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    fds_before: int = 0
    fds_after: int = 0

    @property
    def fd_range(self) -> tuple[int, int]:
        counts = [s.fds for s in self.samples]
        return min(counts), max(counts)

    def rss_growth(self, after_cycle: int = 0) -> int:
        """RSS growth from the first sample at or after ``after_cycle`` to the last."""
        base = next(s for s in self.samples if s.cycle >= after_cycle)
        return self.samples[-1].rss - base.rss


def settled_fds(before: int, grace: float = 2.0) -> int:
    """The fd count once the fallback's merge thread has closed what it watched."""
    until = time.monotonic() + grace
    while True:
        now = open_fds()
        if now == before or time.monotonic() > until:
            return now
        time.sleep(0.01)


def soak(cycles: int, every: int, backend: str | None = None, report: bool = False) -> Soak:
    """Run ``cycles`` cycles, sampling fds and RSS every ``every`` cycles (and at 0)."""
    result = Soak()
    gc.collect()
    result.fds_before = open_fds()
    start = time.monotonic()
    with pydmabuf.Heap("system", backend=backend) as heap, pydmabuf.Timeline(backend=backend) as timeline:
        for i in range(cycles + 1):
            if i % every == 0:
                sample = Sample(i, open_fds(), rss(), time.monotonic() - start)
                result.samples.append(sample)
                if report:
                    print(f"{sample.cycle:>9} {sample.fds:>5} {sample.rss / 2**20:>9.2f} {sample.seconds:>8.1f}",
                          flush=True)
            if i < cycles:
                # Points only grow, and a Timeline point is at most 2**31 - 1.
                cycle(heap, timeline, i + 1)
    gc.collect()
    result.fds_after = settled_fds(result.fds_before)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample every N cycles")
    parser.add_argument("--backend", default="fallback", help="fallback (default), kernel or auto")
    parser.add_argument("--warmup", type=int, default=None, help="cycles before the RSS baseline (default: --every)")
    args = parser.parse_args(argv)
    backend = None if args.backend == "auto" else args.backend
    warmup = args.every if args.warmup is None else args.warmup
    print(f"soak: {args.cycles} cycles on the {pydmabuf.get_backend(backend).name} backend, "
          f"pid {os.getpid()}, python {sys.version.split()[0]}")
    print(f"{'cycle':>9} {'fds':>5} {'RSS MiB':>9} {'seconds':>8}")
    result = soak(args.cycles, args.every, backend, report=True)
    low, high = result.fd_range
    elapsed = result.samples[-1].seconds
    print(f"fds: {result.fds_before} before, {low}..{high} while running, {result.fds_after} after")
    print(f"RSS: {result.samples[0].rss / 2**20:.2f} MiB at start, {result.samples[-1].rss / 2**20:.2f} MiB at "
          f"the end, {result.rss_growth(warmup) / 2**20:+.2f} MiB after the first {warmup} cycles")
    print(f"{args.cycles / elapsed:,.0f} cycles/s ({elapsed:.1f} s)")
    return 0 if result.fds_after == result.fds_before else 1


if __name__ == "__main__":
    sys.exit(main())
