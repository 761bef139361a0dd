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
"compiled" its compiled path (``pydmabuf.compiled``, when built) in this process, and
"pure" the pure path in a process started with ``PYDMABUF_PURE=1`` (the path is chosen
at import). Each process times its own hand-written and thin variants in the same
interleaved rounds as its pydmabuf, and each ratio is taken within one process. Both
point the kernel backend's leaf calls at the stand-ins. The ratios: pure/thin (what
pydmabuf adds to the floor of an object API) and compiled/hand (the goal: at most 1.0).

    python benchmarks/bench_overhead.py [-n 200000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

from bench_ioctl import _Owned as Owned  # the least an fd-owning object can be

import pydmabuf
from pydmabuf.backends.kernel import KernelBackend
from pydmabuf.buffer import new_buffer
from pydmabuf.uapi import fast as _fast
from pydmabuf.uapi import fdkind as _fdkind

FIONREAD = termios.FIONREAD
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): a new fd for the namespace's owning user namespace


def best_ns(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t0) / n


def library(stand_in: int, pipe_r: int, ns: int) -> dict[str, Callable[[int], None]]:
    """pydmabuf's variants on whichever path this process runs, with the kernel
    backend's calls pointed at the stand-ins."""
    lib = _fast.lib
    arg4 = bytes(4)
    kernel = KernelBackend()
    if lib is None:
        kernel.sync_call = lambda flags: (fcntl.ioctl, FIONREAD, arg4, arg4)  # type: ignore[method-assign,assignment,return-value]
        # fcntl.ioctl with an int argument returns the ioctl's result, the new fd;
        # (2**31).__rdivmod__ turns it into the (flags, fd) pair that unpack gives.
        kernel.export_call = (fcntl.ioctl, NS_GET_USERNS, {3: 0}, (2**31).__rdivmod__)  # type: ignore[assignment]
    else:
        kernel.sync_call = lambda flags: (lib.pdb_sync, FIONREAD, 0, 0)  # type: ignore[method-assign,assignment,return-value]
        kernel.export_call = (lib.pdb_export_sync_file, NS_GET_USERNS, {3: 3}, None)
    _fdkind.DMA_BUF_DEVS[os.fstat(stand_in).st_dev] = True
    buf = new_buffer(os.dup(pipe_r), 4096, kernel)
    ns_buf = new_buffer(os.dup(ns), 4096, kernel)
    fence = pydmabuf.SyncFile(os.dup(stand_in), kernel)

    def lib_sync(n: int) -> None:
        for _ in range(n):
            with buf.cpu_access():
                pass

    def lib_export(n: int) -> None:
        export = ns_buf.export_sync_file
        for _ in range(n):
            export().close()

    def lib_signaled(n: int) -> None:
        for _ in range(n):
            _ready = fence.signaled

    def lib_from_fd(n: int) -> None:
        from_fd = pydmabuf.Buffer.from_fd
        for _ in range(n):
            from_fd(stand_in, own=False).close()

    return {"cpu_access": lib_sync, "export_sync_file": lib_export, "signaled": lib_signaled, "from_fd": lib_from_fd}


def stand_ins() -> tuple[int, int, int, int]:
    """(ready eventfd, pipe read end, pipe write end, namespace fd)."""
    pipe_r, pipe_w = os.pipe()  # FIONREAD works on pipes
    return (os.eventfd(1, os.EFD_CLOEXEC), pipe_r, pipe_w,  # the eventfd is readable: poll reports POLLIN
            os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="measure this process's path only, as JSON")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.n, args.rounds)))
        return 0
    compiled = pydmabuf.compiled
    # Each path in its own process (the path is chosen at import), whose ratios are
    # taken against that process's own baselines: the pure one first.
    pure = json.loads(subprocess.run(
        [sys.executable, str(Path(__file__)), "-n", str(args.n), "--rounds", str(args.rounds), "--json"],
        env={**os.environ, "PYDMABUF_PURE": "1"}, check=True, capture_output=True, text=True).stdout) \
        if compiled else None
    mine = measure(args.n, args.rounds)
    if pure is None:
        pure, mine = mine, {}
    print(f"Python {sys.version.split()[0]}, {os.uname().machine}; best of {args.rounds} interleaved rounds "
          f"x {args.n}; ns per operation (stand-in syscalls, see the docstring); "
          f"compiled path {'built' if compiled else 'not built (pure install): no compiled column'}")
    print(f"{'operation':18} {'hand':>8} {'thin obj':>9} {'pure':>8} {'compiled':>9} "
          f"{'thin/hand':>9} {'pure/thin':>9} {'pure/hand':>9} {'comp/hand':>9}")
    for op, p in pure.items():
        m = mine.get(op, p)  # the compiled process's baselines where there is one
        comp = m["pydmabuf"] if mine else float("nan")
        print(f"{op:18} {m['hand']:8.0f} {m['thin']:9.0f} {p['pydmabuf']:8.0f} {comp:9.0f} "
              f"{m['thin'] / m['hand']:8.2f}x {p['pydmabuf'] / p['thin']:8.2f}x {p['pydmabuf'] / p['hand']:8.2f}x "
              f"{comp / m['hand']:8.2f}x")
    return 0


def measure(n: int, rounds: int) -> dict[str, dict[str, float]]:
    """op -> hand/thin/pydmabuf -> best ns per operation, in this process, on its path."""
    stand_in, pipe_r, pipe_w, ns = stand_ins()
    ours = library(stand_in, pipe_r, ns)
    arg4 = bytes(4)
    ioctl, close, dup, fstat = fcntl.ioctl, os.close, os.dup, os.fstat
    poller = select.poll()
    poller.register(stand_in, select.POLLIN)

    def hand_sync(n: int) -> None:
        for _ in range(n):
            ioctl(pipe_r, FIONREAD, arg4)
            ioctl(pipe_r, FIONREAD, arg4)

    def hand_export(n: int) -> None:
        for _ in range(n):
            close(ioctl(ns, NS_GET_USERNS, 0))

    def hand_signaled(n: int) -> None:
        p = poller.poll
        for _ in range(n):
            p(0)

    def hand_from_fd(n: int) -> None:
        for _ in range(n):
            new = dup(stand_in)
            _size = fstat(new).st_size
            close(new)

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

    hand = {"cpu_access": hand_sync, "export_sync_file": hand_export, "signaled": hand_signaled,
            "from_fd": hand_from_fd}
    thins = {"cpu_access": thin_sync, "export_sync_file": thin_export, "signaled": thin_signaled,
             "from_fd": thin_from_fd}
    results: dict[str, dict[str, float]] = {}
    for op in hand:
        variants = {"hand": hand[op], "thin": thins[op], "pydmabuf": ours[op]}
        best = {name: float("inf") for name in variants}
        for _ in range(rounds):  # take turns: drift and noise hit every variant
            for name, fn in variants.items():
                best[name] = min(best[name], best_ns(fn, n))
        results[op] = best
    for fd in (stand_in, pipe_r, pipe_w, ns):
        os.close(fd)
    return results


if __name__ == "__main__":
    sys.exit(main())
