"""pydmabuf's own Python cost on the hot paths, natively, on a machine without dma-bufs.

bench_ioctl.py measures the real ioctls, so it needs a real kernel (the VM, where
emulation inflates interpreter costs about tenfold next to syscalls). This measures
the same code paths natively with each kernel ioctl replaced by a real, equally
cheap syscall of the same call shape, so the ratio to hand-written Python shows what
pydmabuf adds:

- cpu_access: SYNC START/END -> an ioctl on a pipe (FIONREAD), twice
- export_sync_file + close: EXPORT_SYNC_FILE, an ioctl that returns a new fd ->
  NS_GET_USERNS on a namespace fd (the one ioctl every Linux has that returns a new
  fd), then close
- signaled: poll(0) on a ready eventfd (the same poll either way)
- from_fd(own=False) + close: dup + fstat + close; the eventfd's anonymous-inode
  filesystem stands in for the dma-buf one

Columns: "hand" is hand-written fcntl/os code; "thin obj" runs the same stand-in calls
behind the thinnest API Python allows (a ``with`` bracket, a method returning a
three-line fd-owning object, a property); "pure" is pydmabuf's pure path and
"compiled" its compiled path (``pydmabuf.uapi._fastops``, when built), both in this
one process: only the leaf calls differ, so each is pointed at the stand-ins. The
ratios: pure/thin (what pydmabuf adds to the floor of an object API) and
compiled/hand (the goal: at most 1.0).

    python benchmarks/bench_overhead.py [-n 200000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import sys
import termios
import time
from collections.abc import Callable

from bench_ioctl import _Owned as Owned  # the least an fd-owning object can be

import pydmabuf
from pydmabuf import buffer as _buffer
from pydmabuf.backends.kernel import KernelBackend
from pydmabuf.buffer import new_buffer
from pydmabuf.syncfile import SyncFile
from pydmabuf.uapi import fast as _fast
from pydmabuf.uapi import fdkind as _fdkind
from pydmabuf.uapi import ops as _ops

FIONREAD = termios.FIONREAD
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): a new fd for the namespace's owning user namespace


def best_ns(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t0) / n


def use_compiled(on: bool) -> None:
    """Point the module-level leaves (from_fd's statx, signaled's poll) at one path."""
    compiled = on and _fast.lib is not None
    _buffer._size_on = _fast.lib.pdb_size_on if compiled else None
    _buffer._cached_stat = _ops._cached_stat_compiled if compiled else _ops._cached_stat_pure
    SyncFile.signaled = property(SyncFile._signaled_compiled if compiled else SyncFile._signaled_pure)  # type: ignore[method-assign,assignment]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    lib = _fast.lib
    stand_in = os.eventfd(1, os.EFD_CLOEXEC)  # readable: poll reports POLLIN
    pipe_r, pipe_w = os.pipe()  # FIONREAD works on pipes
    ns = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    arg4 = bytes(4)
    # Two kernel backends, one per path, with their calls pointed at the stand-ins.
    pure_k, comp_k = KernelBackend(), KernelBackend()
    pure_k.sync_call = lambda flags: (fcntl.ioctl, FIONREAD, arg4, arg4)  # type: ignore[method-assign,assignment,return-value]
    # fcntl.ioctl with an int argument returns the ioctl's result, the new fd;
    # (2**31).__rdivmod__ turns it into the (flags, fd) pair that unpack gives.
    pure_k.export_call = (fcntl.ioctl, NS_GET_USERNS, {3: 0}, (2**31).__rdivmod__)  # type: ignore[assignment]
    if lib is not None:
        comp_k.sync_call = lambda flags: (lib.pdb_sync, FIONREAD, 0, 0)  # type: ignore[method-assign,assignment,return-value]
        comp_k.export_call = (lib.pdb_export_sync_file, NS_GET_USERNS, {3: 3}, None)
    _fdkind.DMA_BUF_DEVS[os.fstat(stand_in).st_dev] = True
    bufs = {k: new_buffer(os.dup(pipe_r), 4096, k) for k in (pure_k, comp_k)}
    ns_bufs = {k: new_buffer(os.dup(ns), 4096, k) for k in (pure_k, comp_k)}
    fence = pydmabuf.SyncFile(os.dup(stand_in), pure_k)
    ioctl, close, dup, fstat = fcntl.ioctl, os.close, os.dup, os.fstat
    poller = select.poll()
    poller.register(stand_in, select.POLLIN)

    def hand_sync(n: int) -> None:
        for _ in range(n):
            ioctl(pipe_r, FIONREAD, arg4)
            ioctl(pipe_r, FIONREAD, arg4)

    def lib_sync(kernel: KernelBackend) -> Callable[[int], None]:
        buf = bufs[kernel]

        def run(n: int) -> None:
            for _ in range(n):
                with buf.cpu_access():
                    pass

        return run

    def hand_export(n: int) -> None:
        for _ in range(n):
            close(ioctl(ns, NS_GET_USERNS, 0))

    def lib_export(kernel: KernelBackend) -> Callable[[int], None]:
        export = ns_bufs[kernel].export_sync_file

        def run(n: int) -> None:
            for _ in range(n):
                export().close()

        return run

    def hand_signaled(n: int) -> None:
        p = poller.poll
        for _ in range(n):
            p(0)

    def lib_signaled(compiled: bool) -> Callable[[int], None]:
        def run(n: int) -> None:
            use_compiled(compiled)
            for _ in range(n):
                _ready = fence.signaled

        return run

    def hand_from_fd(n: int) -> None:
        for _ in range(n):
            new = dup(stand_in)
            _size = fstat(new).st_size
            close(new)

    def lib_from_fd(compiled: bool) -> Callable[[int], None]:
        from_fd = pydmabuf.Buffer.from_fd

        def run(n: int) -> None:
            use_compiled(compiled)
            for _ in range(n):
                from_fd(stand_in, own=False).close()

        return run

    class Thin:  # the same stand-in calls behind the thinnest API: a bracket, methods, a property
        def __enter__(self) -> Thin:
            ioctl(pipe_r, FIONREAD, arg4)
            return self

        def __exit__(self, *exc: object) -> None:
            ioctl(pipe_r, FIONREAD, arg4)

        def cpu_access(self) -> Thin:
            return self

        def export_sync_file(self) -> Owned:
            return Owned(ioctl(ns, NS_GET_USERNS, 0))

        @property
        def signaled(self) -> bool:
            return poller.poll(0) != []

        def from_fd(self, fd: int) -> Owned:
            new = dup(fd)
            fstat(new)
            return Owned(new)

    thin = Thin()

    def thin_sync(n: int) -> None:
        for _ in range(n):
            with thin.cpu_access():
                pass

    def thin_export(n: int) -> None:
        export = thin.export_sync_file
        for _ in range(n):
            export().close()

    def thin_signaled(n: int) -> None:
        for _ in range(n):
            _ready = thin.signaled

    def thin_from_fd(n: int) -> None:
        from_fd = thin.from_fd
        for _ in range(n):
            from_fd(stand_in).close()

    rows: dict[str, tuple[Callable[[int], None], ...]] = {
        "cpu_access": (hand_sync, thin_sync, lib_sync(pure_k), lib_sync(comp_k)),
        "export_sync_file": (hand_export, thin_export, lib_export(pure_k), lib_export(comp_k)),
        "signaled": (hand_signaled, thin_signaled, lib_signaled(False), lib_signaled(True)),
        "from_fd": (hand_from_fd, thin_from_fd, lib_from_fd(False), lib_from_fd(True)),
    }
    if lib is None:  # a pure install: no compiled column to measure
        rows = {op: variants[:3] for op, variants in rows.items()}
    print(f"Python {sys.version.split()[0]}, {os.uname().machine}; best of {args.rounds} interleaved rounds "
          f"x {args.n}; ns per operation (stand-in syscalls, see the docstring); "
          f"compiled path {'built' if lib is not None else 'not built (pure install): no compiled column'}")
    print(f"{'operation':18} {'hand':>8} {'thin obj':>9} {'pure':>8} {'compiled':>9} "
          f"{'thin/hand':>9} {'pure/thin':>9} {'pure/hand':>9} {'comp/hand':>9}")
    for op, variants in rows.items():
        best = [float("inf")] * len(variants)
        for _ in range(args.rounds):
            for i, fn in enumerate(variants):
                best[i] = min(best[i], best_ns(fn, args.n))
        hand_ns, thin_ns, pure_ns = best[:3]
        comp = f"{best[3]:9.0f}" if len(best) > 3 else f"{'-':>9}"
        comp_ratio = f"{best[3] / hand_ns:8.2f}x" if len(best) > 3 else f"{'-':>9}"
        print(f"{op:18} {hand_ns:8.0f} {thin_ns:9.0f} {pure_ns:8.0f} {comp} {thin_ns / hand_ns:8.2f}x "
              f"{pure_ns / thin_ns:8.2f}x {pure_ns / hand_ns:8.2f}x {comp_ratio}")
    use_compiled(_fast.lib is not None)
    for buf in (*bufs.values(), *ns_bufs.values()):
        buf.close()
    fence.close()
    for fd in (stand_in, pipe_r, pipe_w, ns):
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
