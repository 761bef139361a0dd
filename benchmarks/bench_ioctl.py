"""Hot-path cost of the library next to the cheapest hand-written Python and C.

For cpu_access (SYNC START+END), allocate (+close) and export_sync_file (+close) it
times, in one run on one kernel: the C baseline (benchmarks/c/ioctl_bench.c, compiled
here), hand-written Python with fcntl.ioctl + struct, bare cffi on preallocated
structs, and pydmabuf. Ratios are against the cheapest Python and against C.

Needs a real dma-heap. On a machine without one, run it in the real-kernel VM:
    python benchmarks/bench_ioctl.py --vm
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEAP = "/dev/dma_heap/system"


def best_ns(fn: Callable[[int], None], n: int, repeat: int = 5) -> float:
    """Best of ``repeat`` runs of n iterations, in ns per iteration."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def c_baseline(n: int) -> dict[str, float]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "ioctl_bench")
        subprocess.run([cc, "-O2", "-o", exe, str(HERE / "c" / "ioctl_bench.c")], check=True)
        best: dict[str, float] = {}
        for _ in range(3):
            out = subprocess.run([exe, HEAP, str(n)], check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                name, value = line.split()
                best[name] = min(best.get(name, float("inf")), float(value))
        return best


def python_baselines(heap_fd: int, buf_fd: int) -> dict[str, dict[str, Callable[[int], None]]]:
    from pydmabuf import _ffi
    from pydmabuf._ffi import ffi, lib

    sync, alloc_nr, export_nr = _ffi.DMA_BUF_IOCTL_SYNC, _ffi.DMA_HEAP_IOCTL_ALLOC, _ffi.DMA_BUF_IOCTL_EXPORT_SYNC_FILE
    start, end = struct.pack("Q", 3), struct.pack("Q", 7)
    alloc_args = struct.pack("QIIQ", 4096, 0, os.O_RDWR | os.O_CLOEXEC, 0)
    export_args = struct.pack("Ii", 3, -1)
    ioctl, close = fcntl.ioctl, os.close

    def fcntl_sync(n: int) -> None:
        for _ in range(n):
            ioctl(buf_fd, sync, start)
            ioctl(buf_fd, sync, end)

    def fcntl_alloc(n: int) -> None:
        for _ in range(n):
            close(struct.unpack_from("I", ioctl(heap_fd, alloc_nr, alloc_args), 8)[0])

    def fcntl_export(n: int) -> None:
        for _ in range(n):
            close(struct.unpack_from("i", ioctl(buf_fd, export_nr, export_args), 4)[0])

    c_start = ffi.new("struct dma_buf_sync *", {"flags": 3})
    c_end = ffi.new("struct dma_buf_sync *", {"flags": 7})
    c_alloc = ffi.new("struct dma_heap_allocation_data *")
    c_export = ffi.new("struct dma_buf_export_sync_file *")
    c_ioctl = lib.ioctl

    def cffi_sync(n: int) -> None:
        for _ in range(n):
            c_ioctl(buf_fd, sync, c_start)
            c_ioctl(buf_fd, sync, c_end)

    def cffi_alloc(n: int) -> None:
        for _ in range(n):
            c_alloc.len = 4096
            c_alloc.fd = 0
            c_alloc.fd_flags = os.O_RDWR | os.O_CLOEXEC
            c_ioctl(heap_fd, alloc_nr, c_alloc)
            close(c_alloc.fd)

    def cffi_export(n: int) -> None:
        for _ in range(n):
            c_export.flags = 3
            c_ioctl(buf_fd, export_nr, c_export)
            close(c_export.fd)

    return {
        "cpu_access": {"fcntl+struct": fcntl_sync, "bare cffi": cffi_sync},
        "allocate": {"fcntl+struct": fcntl_alloc, "bare cffi": cffi_alloc},
        "export_sync_file": {"fcntl+struct": fcntl_export, "bare cffi": cffi_export},
    }


def library(heap: object, buf: object) -> dict[str, Callable[[int], None]]:
    import pydmabuf

    assert isinstance(heap, pydmabuf.Heap) and isinstance(buf, pydmabuf.Buffer)

    def lib_sync(n: int) -> None:
        for _ in range(n):
            with buf.cpu_access():
                pass

    def lib_alloc(n: int) -> None:
        allocate = heap.allocate
        for _ in range(n):
            allocate(4096).close()

    def lib_export(n: int) -> None:
        export = buf.export_sync_file
        for _ in range(n):
            export().close()

    return {"cpu_access": lib_sync, "allocate": lib_alloc, "export_sync_file": lib_export}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000, help="iterations per timing")
    parser.add_argument("--vm", action="store_true", help="run inside the real-kernel VM")
    args = parser.parse_args()
    if args.vm:
        from pydmabuf import vm

        result = vm.run([sys.executable, str(Path(__file__)), "-n", str(args.n)],
                        env={"PYDMABUF_BACKEND": "kernel"}, stream=sys.stdout)
        return result.returncode
    if not os.path.exists(HEAP):
        print(f"{HEAP} not found: run with --vm to benchmark on a real kernel", file=sys.stderr)
        return 2

    import pydmabuf

    with pydmabuf.Heap("system", backend="kernel") as heap, heap.allocate(4096) as buf:
        baselines = python_baselines(heap.fileno(), buf.fileno())
        ours = library(heap, buf)
        c = c_baseline(args.n)
        print(f"kernel {os.uname().release}; best of 5 x {args.n} iterations; ns per operation")
        print(f"{'operation':18} {'C':>8} {'fcntl':>8} {'cffi':>8} {'pydmabuf':>9} {'vs best Py':>10} {'vs C':>6}")
        worst = 0.0
        for op, fns in baselines.items():
            py = {name: best_ns(fn, args.n) for name, fn in fns.items()}
            mine = best_ns(ours[op], args.n)
            cheapest = min(py.values())
            ratio = mine / cheapest
            worst = max(worst, ratio)
            c_ns = c.get(op, float("nan"))
            print(f"{op:18} {c_ns:8.0f} {py['fcntl+struct']:8.0f} {py['bare cffi']:8.0f} {mine:9.0f} "
                  f"{ratio:9.2f}x {mine / c_ns:5.2f}x")
        print(f"worst overhead over the cheapest hand-written Python: {100 * (worst - 1):+.0f}% (bar: +15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
