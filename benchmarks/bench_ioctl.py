"""Hot-path cost of the library next to the cheapest hand-written Python and C.

For cpu_access (SYNC START+END), allocate (+close), export_sync_file (+close),
SyncFile.signaled, Buffer.from_fd(own=False) (+close) and udmabuf_from_memfd (+close)
it times, in one run on one kernel: the C baseline (benchmarks/c/ioctl_bench.c,
compiled here), hand-written Python with fcntl.ioctl + struct, bare cffi on
preallocated structs where it applies, and pydmabuf. Variants take turns (interleaved
rounds, best of each) so drift hits them alike. Ratios are against the cheapest Python
and against C. The hand-written from_fd does what from_fd must: dup, one fstat to see
it is a dma-buf and how big, close.

The "thin obj" column is the same hand-written calls behind the thinnest API Python
allows (``object_floors``): a method that returns a three-line fd-owning object with
close() and a finalizer, a ``with`` bracket, a property. "thin/best" is what merely
being an object API costs; "pure/thin" is what pydmabuf's pure path adds on top (thread
holds, argument checks, both backends, typed errors).

pydmabuf runs twice in one command: "compiled" in this process (its compiled path,
when built) and "pure" in a process started with ``PYDMABUF_PURE=1`` (the path is
chosen at import). Each process times its own hand-written baselines and thin object
in the same interleaved rounds as its pydmabuf, and each ratio is taken within one
process, so the two processes' drift does not leak into it. "comp/best" is the
compiled path against the cheapest hand-written Python (the goal: at most 1.0).

Needs a real dma-heap. On a machine without one, run it in the real-kernel VM:
    python benchmarks/bench_ioctl.py --vm
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
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


class _Owned:
    """The least an fd-owning Python object can be: a slot, close(), a finalizer."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def object_floors(heap_fd: int, buf_fd: int, memfd: int, udmabuf_dev: int, sync_fd: int,
                  poller: select.poll) -> dict[str, Callable[[int], None]]:
    """The same hand-written calls, each behind the thinnest API a Python library can
    offer: a method returning an ``_Owned``, a ``with`` bracket, a property. What
    these cost over the bare calls is the price of any object API, before safety."""
    from pydmabuf.uapi import ffi as _ffi

    sync, alloc_nr, export_nr = _ffi.DMA_BUF_IOCTL_SYNC, _ffi.DMA_HEAP_IOCTL_ALLOC, _ffi.DMA_BUF_IOCTL_EXPORT_SYNC_FILE
    start, end = struct.pack("Q", 3), struct.pack("Q", 7)
    export_args = struct.pack("Ii", 3, -1)
    ioctl, unpack_from, pack, dup, fstat = fcntl.ioctl, struct.unpack_from, struct.pack, os.dup, os.fstat
    create_nr = _ffi.UDMABUF_CREATE

    class Thin:
        __slots__ = ("fd",)

        def __init__(self, fd: int) -> None:
            self.fd = fd

        def __enter__(self) -> Thin:
            ioctl(self.fd, sync, start)
            return self

        def __exit__(self, *exc: object) -> None:
            ioctl(self.fd, sync, end)

        def cpu_access(self) -> Thin:
            return self

        def allocate(self, size: int) -> _Owned:
            arg = pack("QIIQ", size, 0, os.O_RDWR | os.O_CLOEXEC, 0)
            return _Owned(unpack_from("I", ioctl(self.fd, alloc_nr, arg), 8)[0])

        def export_sync_file(self) -> _Owned:
            return _Owned(unpack_from("i", ioctl(self.fd, export_nr, export_args), 4)[0])

        @property
        def signaled(self) -> bool:
            return poller.poll(0) != []

        def from_fd(self, fd: int) -> _Owned:
            new = dup(fd)
            fstat(new)
            return _Owned(new)

        def udmabuf(self, memfd: int, offset: int, size: int) -> _Owned:
            return _Owned(ioctl(self.fd, create_nr, bytearray(pack("IIQQ", memfd, 1, offset, size)), True))

    buf, heap, dev = Thin(buf_fd), Thin(heap_fd), Thin(udmabuf_dev)

    def thin_sync(n: int) -> None:
        for _ in range(n):
            with buf.cpu_access():
                pass

    def thin_alloc(n: int) -> None:
        allocate = heap.allocate
        for _ in range(n):
            allocate(4096).close()

    def thin_export(n: int) -> None:
        export = buf.export_sync_file
        for _ in range(n):
            export().close()

    def thin_signaled(n: int) -> None:
        for _ in range(n):
            _ready = buf.signaled

    def thin_from_fd(n: int) -> None:
        from_fd = buf.from_fd
        for _ in range(n):
            from_fd(buf_fd).close()

    def thin_udmabuf(n: int) -> None:
        make = dev.udmabuf
        for _ in range(n):
            make(memfd, 0, 4096).close()

    return {"cpu_access": thin_sync, "allocate": thin_alloc, "export_sync_file": thin_export,
            "signaled": thin_signaled, "from_fd": thin_from_fd, "udmabuf_from_memfd": thin_udmabuf}


Timings = dict[str, Callable[[int], None]]


def python_baselines(heap_fd: int, buf_fd: int) -> tuple[dict[str, Timings], Timings, int]:
    from pydmabuf.uapi import ffi as _ffi
    from pydmabuf.uapi.ffi import ffi, lib

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

    sync_fd = struct.unpack_from("i", ioctl(buf_fd, export_nr, export_args), 4)[0]
    poller = select.poll()
    poller.register(sync_fd, select.POLLIN)

    def poll_signaled(n: int) -> None:
        p = poller.poll
        for _ in range(n):
            p(0)

    def dup_fstat(n: int) -> None:
        dup, fstat = os.dup, os.fstat
        for _ in range(n):
            new = dup(buf_fd)
            _size = fstat(new).st_size
            close(new)

    memfd = os.memfd_create("bench", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, 4096)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    udmabuf_dev = os.open("/dev/udmabuf", os.O_RDWR | os.O_CLOEXEC)
    create_nr = _ffi.UDMABUF_CREATE

    def fcntl_udmabuf(n: int) -> None:
        pack = struct.Struct("IIQQ").pack
        for _ in range(n):
            close(ioctl(udmabuf_dev, create_nr, bytearray(pack(memfd, 1, 0, 4096)), True))

    c_create = ffi.new("struct udmabuf_create *", {"memfd": memfd, "flags": 1, "size": 4096})

    def cffi_udmabuf(n: int) -> None:
        for _ in range(n):
            close(c_ioctl(udmabuf_dev, create_nr, c_create))

    floors = object_floors(heap_fd, buf_fd, memfd, udmabuf_dev, sync_fd, poller)
    return {
        "cpu_access": {"fcntl+struct": fcntl_sync, "bare cffi": cffi_sync},
        "allocate": {"fcntl+struct": fcntl_alloc, "bare cffi": cffi_alloc},
        "export_sync_file": {"fcntl+struct": fcntl_export, "bare cffi": cffi_export},
        "signaled": {"fcntl+struct": poll_signaled},
        "from_fd": {"fcntl+struct": dup_fstat},
        "udmabuf_from_memfd": {"fcntl+struct": fcntl_udmabuf, "bare cffi": cffi_udmabuf},
    }, floors, memfd


def library(heap: object, buf: object, memfd: int) -> dict[str, Callable[[int], None]]:
    import pydmabuf

    assert isinstance(heap, pydmabuf.Heap) and isinstance(buf, pydmabuf.Buffer)
    fence = buf.export_sync_file()
    buf_fd = buf.fileno()

    def lib_signaled(n: int) -> None:
        for _ in range(n):
            _ready = fence.signaled

    def lib_from_fd(n: int) -> None:
        from_fd = pydmabuf.Buffer.from_fd
        for _ in range(n):
            from_fd(buf_fd, own=False).close()

    def lib_udmabuf(n: int) -> None:
        make = pydmabuf.udmabuf_from_memfd
        for _ in range(n):
            make(memfd, 0, 4096).close()

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

    return {"cpu_access": lib_sync, "allocate": lib_alloc, "export_sync_file": lib_export,
            "signaled": lib_signaled, "from_fd": lib_from_fd, "udmabuf_from_memfd": lib_udmabuf}


def measure(n: int, rounds: int) -> dict[str, dict[str, float]]:
    """op -> variant -> best ns per operation, in this process, on its path."""
    import pydmabuf

    with pydmabuf.Heap("system", backend="kernel") as heap, heap.allocate(4096) as buf:
        baselines, floors, memfd = python_baselines(heap.fileno(), buf.fileno())
        ours = library(heap, buf, memfd)
        results: dict[str, dict[str, float]] = {}
        for op, fns in baselines.items():
            variants = {**fns, "thin": floors[op], "pydmabuf": ours[op]}
            best = {name: float("inf") for name in variants}
            for _ in range(rounds):  # take turns: drift and noise hit every variant
                for name, fn in variants.items():
                    best[name] = min(best[name], best_ns(fn, n, repeat=1))
            results[op] = best
    return results


def measure_pure(n: int, rounds: int) -> dict[str, dict[str, float]]:
    """``measure`` in a process started with PYDMABUF_PURE=1 (the path is chosen at import)."""
    out = subprocess.run([sys.executable, str(Path(__file__)), "-n", str(n), "--rounds", str(rounds), "--json"],
                         env={**os.environ, "PYDMABUF_PURE": "1"}, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000, help="iterations per timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per operation")
    parser.add_argument("--vm", action="store_true", help="run inside the real-kernel VM")
    parser.add_argument("--json", action="store_true", help="measure this process's path only, as JSON")
    args = parser.parse_args()
    if args.vm:
        from pydmabuf import vm

        result = vm.run([sys.executable, str(Path(__file__)), "-n", str(args.n), "--rounds", str(args.rounds)],
                        env={"PYDMABUF_BACKEND": "kernel",  # and the host's choice of path
                             **{k: v for k, v in os.environ.items() if k == "PYDMABUF_PURE"}},
                        stream=sys.stdout)
        return result.returncode
    if not os.path.exists(HEAP):
        print(f"{HEAP} not found: run with --vm to benchmark on a real kernel", file=sys.stderr)
        return 2

    import pydmabuf

    if args.json:
        print(json.dumps(measure(args.n, args.rounds)))
        return 0
    compiled = pydmabuf.compiled
    # Each path in its own process, whose ratios are taken against that process's own
    # hand-written baselines (one boot, one command): the pure one first.
    pure = measure_pure(args.n, args.rounds) if compiled else None
    mine = measure(args.n, args.rounds)
    if pure is None:
        pure, mine = mine, {}
    c = c_baseline(args.n)
    print(f"kernel {os.uname().release}; best of {args.rounds} interleaved rounds x {args.n} iterations; "
          f"ns per operation; compiled path {'built' if compiled else 'not built: no compiled column'}")
    print("ratios: against the same process's cheapest hand-written Python (best) and thin object API")
    print(f"{'operation':20} {'C':>8} {'fcntl':>8} {'cffi':>8} {'thin obj':>9} {'pure':>8} {'compiled':>9} "
          f"{'thin/best':>9} {'pure/thin':>9} {'pure/best':>9} {'comp/best':>9} {'comp/C':>6}")
    worst = worst_thin = 0.0
    for op, p in pure.items():
        m = mine.get(op, p)  # the baselines of the compiled process where there is one
        hand = {k: v for k, v in m.items() if k not in ("thin", "pydmabuf")}
        cheapest = min(hand.values())
        pure_best = min(v for k, v in p.items() if k not in ("thin", "pydmabuf"))
        comp = m["pydmabuf"] if mine else float("nan")
        c_ns = c.get(op, float("nan"))
        print(f"{op:20} {c_ns:8.0f} {hand['fcntl+struct']:8.0f} {hand.get('bare cffi', float('nan')):8.0f} "
              f"{m['thin']:9.0f} {p['pydmabuf']:8.0f} {comp:9.0f} {m['thin'] / cheapest:8.2f}x "
              f"{p['pydmabuf'] / p['thin']:8.2f}x {p['pydmabuf'] / pure_best:8.2f}x {comp / cheapest:8.2f}x "
              f"{comp / c_ns:5.2f}x")
        if mine:
            worst = max(worst, comp / cheapest)
        worst_thin = max(worst_thin, p["pydmabuf"] / p["thin"])
    if mine:
        print(f"worst compiled path against the cheapest hand-written Python: {worst:.2f}x (goal: 1.00x)")
    print(f"worst pure path against the thin object API: {worst_thin:.2f}x (goal: 1.10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
