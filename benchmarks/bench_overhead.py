"""pydmabuf's own Python cost on the hot paths, natively, on a machine without dma-bufs.

bench_ioctl.py measures the real ioctls, so it needs a real kernel (the VM, where
emulation inflates interpreter costs about tenfold next to syscalls). This measures
the same code paths natively with each kernel ioctl replaced by a real, equally
cheap syscall of the same call shape, so the ratio to hand-written Python shows what
pydmabuf adds:

- cpu_access: SYNC START/END -> fcntl.ioctl(FIONREAD) on a pipe, twice
- export_sync_file + close: EXPORT_SYNC_FILE -> fcntl.ioctl(FIONREAD), dup, close
- signaled: poll(0) on a ready eventfd (the same poll either way)
- from_fd(own=False) + close: dup + fstat + close; the eventfd's anonymous-inode
  filesystem stands in for the dma-buf one

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
    kernel.sync_call = lambda flags: (fcntl.ioctl, FIONREAD, arg4, arg4)  # type: ignore[method-assign]

    def stand_in_export(fd: int, flags: int) -> int:
        fcntl.ioctl(fd, FIONREAD, arg4)
        return os.dup(fd)

    kernel.export_sync_file = stand_in_export  # type: ignore[method-assign]
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

    def hand_export(n: int) -> None:
        for _ in range(n):
            ioctl(pipe_r, FIONREAD, arg4)
            close(dup(pipe_r))

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

    rows = {"cpu_access": (hand_sync, lib_sync), "export_sync_file": (hand_export, lib_export),
            "signaled": (hand_signaled, lib_signaled), "from_fd": (hand_from_fd, lib_from_fd)}
    print(f"Python {sys.version.split()[0]}, {os.uname().machine}; best of {args.rounds} interleaved rounds "
          f"x {args.n}; ns per operation (stand-in syscalls, see the docstring)")
    print(f"{'operation':18} {'hand':>8} {'pydmabuf':>9} {'ratio':>7}")
    for op, (hand, lib) in rows.items():
        best = [float("inf"), float("inf")]
        for _ in range(args.rounds):
            best[0] = min(best[0], best_ns(hand, args.n))
            best[1] = min(best[1], best_ns(lib, args.n))
        print(f"{op:18} {best[0]:8.0f} {best[1]:9.0f} {best[1] / best[0]:6.2f}x")
    buf.close()
    fence.close()
    for fd in (stand_in, pipe_r, pipe_w):
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
