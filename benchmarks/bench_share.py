"""fd passing between processes: pydmabuf next to C and plain socket.send_fds, same run.

    python benchmarks/bench_share.py [--rtt N] [--frames N] [--repeat R] [--verify N]

rtt: one buffer fd goes to a forked echo process and back over SOCK_SEQPACKET;
microseconds per round trip (two sends, two receives, two closes).
  C          sendmsg/recvmsg + MSG_CMSG_CLOEXEC (benchmarks/c/fdpass.c, built now)
  send_fds   socket.send_fds / socket.recv_fds on raw ints (no close-on-exec)
  pydmabuf   pydmabuf.send / pydmabuf.recv on Buffer objects (recv verifies every fd)
  unverified the same with recv's fd classification replaced by a constant, so the
             difference to pydmabuf is what the always-on verification costs (twice
             per round trip: both ends receive)

verification: the per-fd check recv runs, alone, in this process (ns per fd): what
buffer_backend() costs on a buffer fd of the default backend and on a fallback memfd,
and fence_backend() on a fence, next to one bare os.fstat().

channel: a pool of 4 buffers; the producer sends one per frame, the consumer maps
it read-only, reads its first and last byte, unmaps, and releases it; the producer
reuses released buffers. Frames per second, 4 KiB and 8 MiB frames.
  C          the same loop in C
  send_fds   the same loop by hand in Python (send_fds + mmap + a release message)
  pydmabuf   pydmabuf.channel Producer/Consumer (Frame.map, Frame.release)

The best of --repeat runs is reported for each, and the ratio to C and to send_fds.
Buffers come from the default backend: dma-heap on a kernel, memfds on the fallback.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydmabuf
from pydmabuf import share
from pydmabuf.backends import buffer_backend, fence_backend
from pydmabuf.channel import Consumer, Producer

HERE = Path(__file__).resolve().parent
POOL = 4
SEQ = struct.Struct("<Q")


def build_c(tmp: str) -> str | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    exe = os.path.join(tmp, "fdpass")
    subprocess.run([cc, "-O2", "-o", exe, str(HERE / "c" / "fdpass.c")], check=True)
    return exe


Result = tuple[float, float]  # (us per round trip or frames/s, CPU us per item of both processes)


def run_c(exe: str, *args: object) -> Result:
    out = subprocess.run([exe, *map(str, args)], check=True, capture_output=True, text=True)
    value, cpu = out.stdout.split()
    return float(value), float(cpu)


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_child(pid: int) -> float:
    """Wait for the child; its CPU seconds."""
    ru = os.wait4(pid, 0)[2]
    return ru.ru_utime + ru.ru_stime


def forked(child: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            a.close()
            child(b)
            code = 0
        finally:
            os._exit(code)
    b.close()
    return pid, a


# --- round trips ------------------------------------------------------------------

def rtt_send_fds(buf: pydmabuf.Buffer, n: int) -> Result:
    def echo(s: socket.socket) -> None:
        while True:
            msg, fds, _f, _a = socket.recv_fds(s, 64, 1)
            if not msg:
                return
            socket.send_fds(s, [msg], fds)
            os.close(fds[0])

    pid, s = forked(echo)
    fd = buf.fileno()
    payload = bytes(36)  # pydmabuf's one-buffer message is 36 bytes too
    c0, t0 = cpu_self(), time.perf_counter()
    for _ in range(n):
        socket.send_fds(s, [payload], [fd])
        os.close(socket.recv_fds(s, 64, 1)[1][0])
    dt, cpu = time.perf_counter() - t0, cpu_self() - c0
    s.close()
    return dt / n * 1e6, (cpu + cpu_child(pid)) / n * 1e6


def rtt_pydmabuf(buf: pydmabuf.Buffer, n: int, verify: bool = True) -> Result:
    if verify:
        return _rtt_pydmabuf(buf, n)
    known = buffer_backend(buf.fileno())  # every fd here is this buffer's file
    share.buffer_backend = lambda fd: known  # type: ignore[attr-defined]
    try:
        return _rtt_pydmabuf(buf, n)  # the echo child is forked with the stub too
    finally:
        share.buffer_backend = buffer_backend  # type: ignore[attr-defined]


def _rtt_pydmabuf(buf: pydmabuf.Buffer, n: int) -> Result:
    def echo(s: socket.socket) -> None:
        while True:
            try:
                (got,) = pydmabuf.recv(s)
            except EOFError:
                return
            pydmabuf.send(s, got)
            got.close()

    pid, s = forked(echo)
    send, recv = pydmabuf.send, pydmabuf.recv
    c0, t0 = cpu_self(), time.perf_counter()
    for _ in range(n):
        send(s, buf)
        recv(s)[0].close()
    dt, cpu = time.perf_counter() - t0, cpu_self() - c0
    s.close()
    return dt / n * 1e6, (cpu + cpu_child(pid)) / n * 1e6


# --- verification alone -------------------------------------------------------------

def per_call_ns(fn: Callable[[int], object], fd: int, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(fd)
    return (time.perf_counter_ns() - t0) / n


def verification(heap: pydmabuf.Heap, n: int, repeat: int) -> None:
    with contextlib.ExitStack() as stack:
        native = stack.enter_context(heap.allocate(4096))
        fallback_heap = stack.enter_context(pydmabuf.Heap("system", backend="fallback"))
        memfd = stack.enter_context(fallback_heap.allocate(4096))
        rows: list[tuple[str, Callable[[int], object], int]] = [
            (f"buffer_backend, {native.backend} buffer", buffer_backend, native.fileno()),
        ]
        if native.backend != "fallback":
            rows.append(("buffer_backend, fallback memfd", buffer_backend, memfd.fileno()))
        try:
            timeline = stack.enter_context(pydmabuf.Timeline())
            fence = stack.enter_context(timeline.fence(1))
            rows.append((f"fence_backend, {fence.backend} fence", fence_backend, fence.fileno()))
        except pydmabuf.UnsupportedError:
            pass
        rows.append(("os.fstat alone (one syscall)", os.fstat, native.fileno()))
        print(f"\nverification alone, per fd ({n} calls per run, best of {repeat}; ns)")
        for label, fn, fd in rows:
            print(f"    {label:34} {min(per_call_ns(fn, fd, n) for _ in range(repeat)):8.0f} ns")


# --- channel ----------------------------------------------------------------------

def channel_send_fds(pool: list[pydmabuf.Buffer], size: int, n: int) -> Result:
    def consumer(s: socket.socket) -> None:
        while True:
            msg, fds, _f, _a = socket.recv_fds(s, 64, 1)
            if not msg:
                return
            with mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                m[0] ^ m[size - 1]
            os.close(fds[0])
            s.send(msg)

    pid, s = forked(consumer)
    fds = [b.fileno() for b in pool]
    free = list(range(len(fds)))
    c0, t0 = cpu_self(), time.perf_counter()
    for seq in range(n):
        while not free:
            free.append(SEQ.unpack(s.recv(8))[0] % POOL)
        slot = free.pop()
        socket.send_fds(s, [SEQ.pack(seq * POOL + slot)], [fds[slot]])
    for _ in range(POOL - len(free)):
        s.recv(8)
    dt, cpu = time.perf_counter() - t0, cpu_self() - c0
    s.close()
    return n / dt, (cpu + cpu_child(pid)) / n * 1e6


def channel_pydmabuf(pool: list[pydmabuf.Buffer], size: int, n: int) -> Result:
    address = f"@pydmabuf-bench-{os.getpid()}-{size}-{time.monotonic_ns()}"
    dups = [b.dup() for b in pool]  # the producer owns (and closes) what it is given
    with Producer(address, buffers=dups) as producer:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with Consumer.connect(address) as consumer:
                    while (frame := consumer.receive()) is not None:
                        m = frame.map()
                        m[0] ^ m[size - 1]
                        frame.release()
                code = 0
            finally:
                os._exit(code)
        producer.wait_for_consumers(1, timeout=30)
        c0, t0 = cpu_self(), time.perf_counter()
        for _ in range(n):
            producer.submit(producer.acquire(timeout=30))
        while producer.free < len(dups):
            producer.poll(1.0)
        dt, cpu = time.perf_counter() - t0, cpu_self() - c0
    return n / dt, (cpu + cpu_child(pid)) / n * 1e6


def interleaved(runs: dict[str, Callable[[], Result]], repeat: int, better: Callable[..., float]
                ) -> dict[str, Result]:
    """Best value and least CPU of each, the variants taking turns so that a burst of
    load on a shared machine does not land on one of them only."""
    got: dict[str, list[Result]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            got[name].append(run())
    return {name: (better(v for v, _ in rs), min(c for _, c in rs)) for name, rs in got.items()}


def report(results: dict[str, Result], unit: str, lower_is_better: bool) -> None:
    c_value, _c_cpu = results["C"]
    plain_value, plain_cpu = results["send_fds"]
    for name, (value, cpu) in results.items():
        line = f"    {name:10} {value:10.2f} {unit:9} CPU {cpu:6.2f} us"
        if name != "C":
            ratio = value / c_value if lower_is_better else c_value / value
            line += f"   {ratio:4.2f} x C"
        if name in ("pydmabuf", "unverified"):
            ratio = value / plain_value if lower_is_better else plain_value / value
            line += f", {ratio:4.2f} x send_fds (CPU {cpu / plain_cpu:4.2f} x)"
        print(line)
    if "unverified" in results:
        (value, cpu), (bare, bare_cpu) = results["pydmabuf"], results["unverified"]
        print(f"    verification: {value - bare:+.2f} {unit} per round trip, "
              f"CPU {cpu - bare_cpu:+.2f} us (two receives, one fd each)")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rtt", type=int, default=20000, help="round trips per run")
    p.add_argument("--frames", type=int, default=20000, help="4 KiB frames per run (8 MiB: a tenth)")
    p.add_argument("--repeat", type=int, default=5, help="runs of each; the best counts")
    p.add_argument("--verify", type=int, default=100000, help="calls per run of the per-fd verification")
    args = p.parse_args()
    nan = (float("nan"), float("nan"))

    with tempfile.TemporaryDirectory() as tmp, pydmabuf.Heap("system") as heap:
        exe = build_c(tmp)
        print(f"backend {pydmabuf.backend}, {os.uname().release}, Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, best of {args.repeat}; CPU = both processes' CPU time per item")
        with heap.allocate(4096) as buf:
            results = interleaved({
                "C": (lambda: run_c(exe, "rtt", args.rtt)) if exe else lambda: nan,
                "send_fds": lambda: rtt_send_fds(buf, args.rtt),
                "pydmabuf": lambda: rtt_pydmabuf(buf, args.rtt),
                "unverified": lambda: rtt_pydmabuf(buf, args.rtt, verify=False),
            }, args.repeat, min)
        print(f"\nfd round trip ({args.rtt} per run; lower is better)")
        report(results, "us", True)
        verification(heap, args.verify, args.repeat)

        print("\nchannel (consumer maps read-only, reads 2 bytes, unmaps, releases; higher is better)")
        for size, n in ((4096, args.frames), (8 << 20, max(args.frames // 10, 100))):
            pool = [heap.allocate(size) for _ in range(POOL)]
            try:
                results = interleaved({
                    "C": (lambda: run_c(exe, "channel", n, size)) if exe else lambda: nan,  # noqa: B023
                    "send_fds": lambda: channel_send_fds(pool, size, n),  # noqa: B023
                    "pydmabuf": lambda: channel_pydmabuf(pool, size, n),  # noqa: B023
                }, args.repeat, max)
            finally:
                for b in pool:
                    b.close()
            print(f"  {size >> 10} KiB frames, {n} per run" if size < 1 << 20
                  else f"  {size >> 20} MiB frames, {n} per run")
            report(results, "frames/s", False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
