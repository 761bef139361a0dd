"""pydmabuf's own Python cost on the hot paths, natively, on a machine without dma-bufs.

bench_ioctl.py measures the real ioctls, so it needs a real kernel (the VM, where
emulation inflates interpreter costs about tenfold next to syscalls). This measures
the same code paths natively with each kernel ioctl replaced by a real, equally
cheap syscall of the same call shape, so the ratio to hand-written Python shows what
pydmabuf adds:

- cpu_access: SYNC START/END -> fcntl.ioctl(FIONREAD) on a pipe, twice
- export_sync_file + close: EXPORT_SYNC_FILE (one call that returns a new fd) ->
  fcntl.fcntl(F_DUPFD_CLOEXEC) on the pipe, then close
- signaled: poll(0) on a ready eventfd (the same poll either way)
- from_fd(own=False) + close: dup + fstat + close; the eventfd's anonymous-inode
  filesystem stands in for the dma-buf one

The "thin obj" column runs the same stand-in calls behind the thinnest API Python
allows (a ``with`` bracket, a method returning a three-line fd-owning object, a
property): "thin/hand" is what being an object API costs, "vs thin" what pydmabuf adds.

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
from pydmabuf.backends import get_backend
from pydmabuf.buffer import new_buffer
from pydmabuf.uapi import fdkind as _fdkind

FIONREAD = termios.FIONREAD


def best_ns(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t0) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    stand_in = os.eventfd(1, os.EFD_CLOEXEC)  # readable: poll reports POLLIN
    pipe_r, pipe_w = os.pipe()  # FIONREAD works on pipes
    kernel = get_backend("kernel")
    arg4 = bytes(4)
    # The kernel backend's calls, pointed at the stand-in syscall.
    kernel.sync_call = lambda flags: (fcntl.ioctl, FIONREAD, arg4, arg4)  # type: ignore[method-assign,assignment,return-value]

    # fcntl.fcntl has ioctl's call shape and F_DUPFD_CLOEXEC returns a new fd, as the
    # export does; (2**31).__rdivmod__ turns that fd into the (flags, fd) pair unpack gives.
    kernel.export_call = (fcntl.fcntl, fcntl.F_DUPFD_CLOEXEC, {3: 0}, (2**31).__rdivmod__)  # type: ignore[assignment]
    _fdkind.DMA_BUF_DEVS[os.fstat(stand_in).st_dev] = True
    buf = new_buffer(os.dup(pipe_r), 4096, kernel)
    fence = pydmabuf.SyncFile(os.dup(stand_in), kernel)
    ioctl, close, dup, fstat = fcntl.ioctl, os.close, os.dup, os.fstat
    poller = select.poll()
    poller.register(stand_in, select.POLLIN)

    def hand_sync(n: int) -> None:
        for _ in range(n):
            ioctl(pipe_r, FIONREAD, arg4)
            ioctl(pipe_r, FIONREAD, arg4)

    def lib_sync(n: int) -> None:
        for _ in range(n):
            with buf.cpu_access():
                pass

    dupfd, F_DUPFD_CLOEXEC = fcntl.fcntl, fcntl.F_DUPFD_CLOEXEC

    def hand_export(n: int) -> None:
        for _ in range(n):
            close(dupfd(pipe_r, F_DUPFD_CLOEXEC, 0))

    def lib_export(n: int) -> None:
        export = buf.export_sync_file
        for _ in range(n):
            export().close()

    def hand_signaled(n: int) -> None:
        p = poller.poll
        for _ in range(n):
            p(0)

    def lib_signaled(n: int) -> None:
        for _ in range(n):
            _ready = fence.signaled

    def hand_from_fd(n: int) -> None:
        for _ in range(n):
            new = dup(stand_in)
            _size = fstat(new).st_size
            close(new)

    def lib_from_fd(n: int) -> None:
        from_fd = pydmabuf.Buffer.from_fd
        for _ in range(n):
            from_fd(stand_in, own=False).close()

    class Thin:  # the same stand-in calls behind the thinnest API: a bracket, methods, a property
        def __enter__(self) -> Thin:
            ioctl(pipe_r, FIONREAD, arg4)
            return self

        def __exit__(self, *exc: object) -> None:
            ioctl(pipe_r, FIONREAD, arg4)

        def cpu_access(self) -> Thin:
            return self

        def export_sync_file(self) -> Owned:
            return Owned(dupfd(pipe_r, F_DUPFD_CLOEXEC, 0))

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

    rows = {"cpu_access": (hand_sync, thin_sync, lib_sync), "export_sync_file": (hand_export, thin_export, lib_export),
            "signaled": (hand_signaled, thin_signaled, lib_signaled),
            "from_fd": (hand_from_fd, thin_from_fd, lib_from_fd)}
    print(f"Python {sys.version.split()[0]}, {os.uname().machine}; best of {args.rounds} interleaved rounds "
          f"x {args.n}; ns per operation (stand-in syscalls, see the docstring)")
    print(f"{'operation':18} {'hand':>8} {'thin obj':>9} {'pydmabuf':>9} {'ratio':>7} {'thin/hand':>9} {'vs thin':>8}")
    for op, variants in rows.items():
        best = [float("inf")] * len(variants)
        for _ in range(args.rounds):
            for i, fn in enumerate(variants):
                best[i] = min(best[i], best_ns(fn, args.n))
        hand_ns, thin_ns, lib_ns = best
        print(f"{op:18} {hand_ns:8.0f} {thin_ns:9.0f} {lib_ns:9.0f} {lib_ns / hand_ns:6.2f}x "
              f"{thin_ns / hand_ns:8.2f}x {lib_ns / thin_ns:7.2f}x")
    buf.close()
    fence.close()
    for fd in (stand_in, pipe_r, pipe_w):
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
