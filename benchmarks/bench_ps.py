"""How long `pydmabuf ps` takes on a busy system.

Forks PROCS processes holding BUFFERS buffers between them (every other one also
mapped), then times ``accounting.snapshot()`` in this process and the whole
``python -m pydmabuf ps`` command (interpreter start included), best of a few runs,
in wall-clock and CPU seconds.

    python benchmarks/bench_ps.py [--procs 200] [--buffers 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pydmabuf
from pydmabuf.tools import accounting


def _hold(count: int, stop_r: int, ready_w: int) -> None:
    """Child: allocate ``count`` buffers, map every other one, wait for EOF on stop_r."""
    with pydmabuf.Heap() as heap:
        bufs = [heap.allocate(4096, name=f"bench-{os.getpid()}-{i}") for i in range(count)]
    maps = [b.map() for b in bufs[::2]]
    os.write(ready_w, b"x")
    os.read(stop_r, 1)
    for m in maps:
        m.close()
    for b in bufs:
        b.close()


@contextmanager
def holders(procs: int, buffers: int) -> Iterator[list[int]]:
    pydmabuf.Heap().close()  # load the backend once, before forking, not in every child
    stop_r, stop_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pids = []
    try:
        for i in range(procs):
            count = buffers // procs + (1 if i < buffers % procs else 0)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(stop_w)
                    os.close(ready_r)
                    _hold(count, stop_r, ready_w)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for _ in range(procs):
            if not os.read(ready_r, 1):
                raise RuntimeError("a holder process died")
        yield pids
    finally:
        os.close(stop_w)
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in (stop_r, ready_r, ready_w):
            os.close(fd)


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children: unlike wall time,
    barely disturbed by other jobs on a shared machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _best(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds over ``runs`` calls."""
    wall = cpu = float("inf")
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), _cpu()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _cpu() - start_cpu)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--procs", type=int, default=200)
    parser.add_argument("--buffers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "pydmabuf", "ps"]
    with holders(args.procs, args.buffers):
        snap = accounting.snapshot()
        seen = sum(1 for b in snap.buffers if (b.name or "").startswith("bench-"))
        t_snapshot = _best(args.runs, accounting.snapshot)
        t_cli = _best(args.runs, lambda: subprocess.run(cmd, check=True, capture_output=True))
        t_python = _best(args.runs, lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    result = {"procs": args.procs, "buffers": args.buffers, "buffers_seen": seen,
              "processes_scanned": snap.scanned, "backend": pydmabuf.backend,
              "snapshot_s": round(t_snapshot[0], 4), "snapshot_cpu_s": round(t_snapshot[1], 4),
              "ps_command_s": round(t_cli[0], 4), "ps_command_cpu_s": round(t_cli[1], 4),
              "python_start_s": round(t_python[0], 4), "python_start_cpu_s": round(t_python[1], 4)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")
    return 0 if seen == args.buffers else 1


if __name__ == "__main__":
    sys.exit(main())
