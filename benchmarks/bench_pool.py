"""What a pooled buffer costs next to a fresh one: 8 MiB frames.

- pooled: ``with pool.acquire() as buf:`` and back (BufferPool of 4 x 8 MiB);
- fresh: ``heap.allocate(8 MiB)`` then ``close()`` on an open "system" Heap (on a
  kernel the heap zeroes every page; on the fallback a sealed memfd is made);
- fresh, first touch: the same plus writing one byte per page through a mapping,
  which is when the fallback (and udmabuf) pay for their pages.

Variants take turns (interleaved rounds, best of each, each round at least
``--min-time`` seconds). The goal: pooled >= 50x faster than fresh. Natively this
measures the active backend (the fallback without dma-heaps); on a real kernel:
    python benchmarks/bench_pool.py --vm
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

SIZE = 8 << 20
GOAL = 50.0


def per_op_ns(fn: Callable[[int], None], min_time: float) -> float:
    """ns per operation of ``fn(n)``, n grown until a run lasts ``min_time``."""
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        fn(n)
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= min_time * 1e9 or n >= 1 << 24:
            return elapsed / n
        n *= 4 if elapsed < min_time * 1e8 else 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed run (default 0.2)")
    parser.add_argument("--vm", action="store_true", help="run inside the real-kernel VM")
    args = parser.parse_args()
    if args.vm:
        from pydmabuf import vm

        result = vm.run([sys.executable, str(Path(__file__)), "--rounds", str(args.rounds),
                         "--min-time", str(args.min_time)], env={"PYDMABUF_BACKEND": "kernel"}, stream=sys.stdout)
        return result.returncode

    import pydmabuf
    from pydmabuf.pool import BufferPool

    with pydmabuf.Heap("system") as heap, BufferPool(SIZE, 4, name="bench") as pool:
        acquire = pool.acquire
        allocate = heap.allocate

        def pooled(n: int) -> None:
            for _ in range(n):
                with acquire():
                    pass

        def fresh(n: int) -> None:
            for _ in range(n):
                allocate(SIZE).close()

        def fresh_touched(n: int) -> None:
            for _ in range(n):
                with allocate(SIZE) as buf, buf.map() as m, buf.cpu_access(read=False):
                    for offset in range(0, SIZE, mmap.PAGESIZE):
                        m[offset] = 1

        variants = {"pooled acquire+return": pooled, "fresh allocate+close": fresh,
                    "fresh + first touch": fresh_touched}
        best = {name: float("inf") for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                best[name] = min(best[name], per_op_ns(fn, args.min_time))
        print(f"backend {pydmabuf.backend}, kernel {os.uname().release}, Python "
              f"{sys.version.split()[0]}; 8 MiB buffers; best of {args.rounds} interleaved rounds")
        base = best["pooled acquire+return"]
        for name, ns in best.items():
            faster = "" if name.startswith("pooled") else f"  pooled is {ns / base:,.0f}x faster"
            print(f"  {name:24} {ns / 1000:12.2f} us{faster}")
        ratio = best["fresh allocate+close"] / base
        print(f"goal: pooled >= {GOAL:.0f}x faster than fresh allocate+close: "
              f"{'met' if ratio >= GOAL else 'MISSED'} ({ratio:,.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
