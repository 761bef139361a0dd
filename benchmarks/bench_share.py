"""fd passing between processes: pydmabuf next to C and plain socket.send_fds, same run.

    python benchmarks/bench_share.py [--rtt N] [--frames N] [--repeat R]

rtt: one buffer fd goes to a forked echo process and back over SOCK_SEQPACKET;
microseconds per round trip (two sends, two receives, two closes).
  C          sendmsg/recvmsg + MSG_CMSG_CLOEXEC (benchmarks/c/fdpass.c, built now)
  send_fds   socket.send_fds / socket.recv_fds on raw ints (no close-on-exec)
  pydmabuf   pydmabuf.send / pydmabuf.recv on Buffer objects

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
import mmap
import os
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


def run_c(exe: str, *args: object) -> float:
    out = subprocess.run([exe, *map(str, args)], check=True, capture_output=True, text=True)
    return float(out.stdout)


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

def rtt_send_fds(buf: pydmabuf.Buffer, n: int) -> float:
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
    t0 = time.perf_counter()
    for _ in range(n):
        socket.send_fds(s, [payload], [fd])
        os.close(socket.recv_fds(s, 64, 1)[1][0])
    dt = time.perf_counter() - t0
    s.close()
    os.waitpid(pid, 0)
    return dt / n * 1e6


def rtt_pydmabuf(buf: pydmabuf.Buffer, n: int) -> float:
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
    t0 = time.perf_counter()
    for _ in range(n):
        send(s, buf)
        recv(s)[0].close()
    dt = time.perf_counter() - t0
    s.close()
    os.waitpid(pid, 0)
    return dt / n * 1e6


# --- channel ----------------------------------------------------------------------

def channel_send_fds(pool: list[pydmabuf.Buffer], size: int, n: int) -> float:
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
    t0 = time.perf_counter()
    for seq in range(n):
        while not free:
            free.append(SEQ.unpack(s.recv(8))[0] % POOL)
        slot = free.pop()
        socket.send_fds(s, [SEQ.pack(seq * POOL + slot)], [fds[slot]])
    for _ in range(POOL - len(free)):
        s.recv(8)
    dt = time.perf_counter() - t0
    s.close()
    os.waitpid(pid, 0)
    return n / dt


def channel_pydmabuf(pool: list[pydmabuf.Buffer], size: int, n: int) -> float:
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
        t0 = time.perf_counter()
        for _ in range(n):
            producer.submit(producer.acquire(timeout=30))
        while producer.free < len(dups):
            producer.poll(1.0)
        dt = time.perf_counter() - t0
    os.waitpid(pid, 0)
    return n / dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rtt", type=int, default=20000, help="round trips per run")
    p.add_argument("--frames", type=int, default=20000, help="4 KiB frames per run (8 MiB: a tenth)")
    p.add_argument("--repeat", type=int, default=5, help="runs of each; the best counts")
    args = p.parse_args()
    best = lambda f, key=min: key(f() for _ in range(args.repeat))  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp, pydmabuf.Heap("system") as heap:
        exe = build_c(tmp)
        print(f"backend {pydmabuf.backend}, {os.uname().release}, Python {sys.version.split()[0]}, "
              f"best of {args.repeat}")
        with heap.allocate(4096) as buf:
            c = best(lambda: run_c(exe, "rtt", args.rtt)) if exe else float("nan")
            plain = best(lambda: rtt_send_fds(buf, args.rtt))
            ours = best(lambda: rtt_pydmabuf(buf, args.rtt))
        print(f"\nfd round trip (us, lower is better), {args.rtt} per run")
        print(f"  C         {c:8.2f}")
        print(f"  send_fds  {plain:8.2f}   {plain / c:5.2f} x C")
        print(f"  pydmabuf  {ours:8.2f}   {ours / c:5.2f} x C   {ours / plain:5.2f} x send_fds")

        print("\nchannel (frames/s, higher is better; consumer maps, reads 2 bytes, unmaps, releases)")
        for size, n in ((4096, args.frames), (8 << 20, max(args.frames // 10, 100))):
            pool = [heap.allocate(size) for _ in range(POOL)]
            try:
                c = best(lambda: run_c(exe, "channel", n, size), max) if exe else float("nan")  # noqa: B023
                plain = best(lambda: channel_send_fds(pool, size, n), max)  # noqa: B023
                ours = best(lambda: channel_pydmabuf(pool, size, n), max)  # noqa: B023
            finally:
                for b in pool:
                    b.close()
            label = f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
            print(f"  {label:7} C {c:9.0f}   send_fds {plain:9.0f} ({c / plain:4.2f} x slower than C)"
                  f"   pydmabuf {ours:9.0f} ({c / ours:4.2f} x slower than C, "
                  f"{plain / ours:4.2f} x slower than send_fds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
