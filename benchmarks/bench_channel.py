"""The channel at a target frame rate, next to raw socket.send_fds in the same run.

    python benchmarks/bench_channel.py [--rate 2000] [--frames 4000] [--quick] [--vm]

channel: a Producer (a pool of 8 buffers of 4 KiB, max_pending=4) submits frames at
--rate to 1 and to 8 consumer processes, under each slow-consumer policy. Frame i is
due at t0 + i/rate, as a camera delivers them; a producer that is late (a sleep that
overslept) catches up at twice the rate. Each consumer receives, notes the submit-to-receive latency
(the submit time rides in the frame's meta; CLOCK_MONOTONIC is one clock for all
processes) and releases at once. One warm-up frame goes first and is not counted.

send_fds: the same schedule by hand, the floor the channel is measured against: the
producer process sends a memfd (one of 8, in turn) with the timestamp to each
receiver over its own SOCK_SEQPACKET socketpair with socket.send_fds, and reads the
releases receivers send back; receivers recv_fds, close the fd and send a 9-byte
release. No pool bookkeeping, no verification, nothing dropped.

Columns: frames/s is what the producer achieved (the target, unless the machine is too
slow); delivered counts frames received over frames submitted, summed over consumers,
and missed the difference (skipped for a consumer that fell behind, or not sent after
it was evicted); evicted counts consumers disconnected for falling behind; latency is
over every frame every consumer received, in microseconds.

round trips (unpaced, microseconds each): send_fds of a memfd to an echo process and
back; the channel with a pool of one buffer (submit, the consumer receives and
releases, acquire gets the buffer back).

On a machine without dma-buf devices this measures the fallback; on a real kernel:
    python benchmarks/bench_channel.py --vm
"""

from __future__ import annotations

import argparse
import array
import contextlib
import os
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

SIZE = 4096
POOL = 8
MAX_PENDING = 4
STAMP = struct.Struct("<QQ")  # seq, submit time (monotonic ns)
RELEASE = struct.Struct("<cQ")


def fork(fn: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child {pid} failed with status {os.waitstatus_to_exitcode(status)}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Pacer:
    """Frame i is due at t0 + i * interval; a late producer catches up at twice the
    rate (never two frames closer than half an interval), as a camera's queued frames
    are handed over quickly but not all in one burst."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate
        self.t0 = self.last = time.monotonic()

    def wait(self, i: int) -> None:
        due = max(self.t0 + i * self.interval, self.last + self.interval / 2)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.last = time.monotonic()

    def rate(self, frames: int) -> float:
        return frames / (time.monotonic() - self.t0)


class Row:
    def __init__(self, variant: str, policy: str, consumers: int, rate: float, frames: int) -> None:
        self.variant, self.policy, self.consumers = variant, policy, consumers
        self.target, self.frames = rate, frames
        self.achieved = 0.0
        self.delivered = 0
        self.evicted = 0
        self.latencies: list[float] = []  # us

    def line(self) -> str:
        lat = self.latencies
        expected = self.frames * self.consumers
        return (f"{self.variant:9} {self.policy:10} {self.consumers:>3} {self.target:>7.0f} {self.achieved:>9.0f} "
                f"{self.delivered:>7}/{expected:<7} {expected - self.delivered:>7} {self.evicted:>7} "
                f"{percentile(lat, 0.5):>8.0f} {percentile(lat, 0.99):>8.0f} {max(lat, default=float('nan')):>8.0f}")


HEADER = (f"{'variant':9} {'policy':10} {'n':>3} {'target':>7} {'frames/s':>9} {'delivered':>15} "
          f"{'missed':>7} {'evicted':>7} {'p50 us':>8} {'p99 us':>8} {'max us':>8}")


def _write_latencies(path: str, values: array.array[float]) -> None:
    with open(path, "wb") as f:
        values.tofile(f)


def _read_latencies(path: str) -> list[float]:
    values = array.array("d")
    with open(path, "rb") as f:
        values.frombytes(f.read())
    return values.tolist()


def _collected(row: Row, outputs: list[str]) -> Row:
    """``row`` with what each consumer wrote to its output file added."""
    for out in outputs:
        got = _read_latencies(out)
        row.delivered += len(got)
        row.latencies += got
    return row


# --- the channel ------------------------------------------------------------------------

def channel_run(policy: str, consumers: int, rate: float, frames: int, tmp: str) -> Row:
    from pydmabuf.channel import Consumer, Producer

    row = Row("channel", policy, consumers, rate, frames)
    path = f"@pydmabuf-bench-channel-{os.getpid()}-{time.monotonic_ns()}"
    outputs = [os.path.join(tmp, f"channel-{policy}-{consumers}-{i}") for i in range(consumers)]

    def consume(out: str) -> None:
        latencies = array.array("d")
        now = time.monotonic_ns
        unpack = STAMP.unpack
        with Consumer.connect(path, timeout=30) as consumer:
            while (frame := consumer.receive(timeout=30)) is not None:
                seq, sent = unpack(frame.meta)
                if seq:  # 0 is the warm-up
                    latencies.append((now() - sent) / 1000)
                frame.release()
        _write_latencies(out, latencies)

    with Producer(path, size=SIZE, count=POOL, max_pending=MAX_PENDING, slow_consumer=policy) as producer:
        pids = [fork(lambda out=out: consume(out)) for out in outputs]  # type: ignore[misc]
        try:
            producer.wait_for_consumers(consumers, timeout=30)
            producer.submit(producer.acquire(timeout=30), meta=STAMP.pack(0, time.monotonic_ns()))
            while producer.free < POOL:  # the warm-up frame is back from everyone
                producer.poll(1.0)
            acquire, submit, pack, now = producer.acquire, producer.submit, STAMP.pack, time.monotonic_ns
            pacer = Pacer(rate)
            for i in range(frames):
                pacer.wait(i)
                buf = acquire(timeout=30)
                submit(buf, meta=pack(i + 1, now()))
            row.achieved = pacer.rate(frames)
            row.evicted = sum(event.kind == "evicted" for event in producer.events)
        finally:
            producer.close()  # end of stream: the consumers write their figures and exit
            for pid in pids:
                reap(pid)
    return _collected(row, outputs)


def channel_round_trip(n: int) -> float:
    """us per frame through a channel with a pool of one: submit, receive, release, acquire."""
    from pydmabuf.channel import Consumer, Producer

    path = f"@pydmabuf-bench-rtt-{os.getpid()}-{time.monotonic_ns()}"

    def consume() -> None:
        with Consumer.connect(path, timeout=30) as consumer:
            while (frame := consumer.receive(timeout=30)) is not None:
                frame.release()

    with Producer(path, size=SIZE, count=1) as producer:
        pid = fork(consume)
        try:
            producer.wait_for_consumers(1, timeout=30)
            producer.submit(producer.acquire(timeout=30))  # warm-up
            t0 = time.perf_counter()
            for _ in range(n):
                producer.submit(producer.acquire(timeout=30))
            producer.acquire(timeout=30)
            return (time.perf_counter() - t0) / (n + 1) * 1e6
        finally:
            producer.close()
            reap(pid)


# --- raw send_fds -----------------------------------------------------------------------

def _memfds(count: int) -> list[int]:
    fds = []
    for i in range(count):
        fd = os.memfd_create(f"bench{i}", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        fds.append(fd)
    return fds


def send_fds_run(consumers: int, rate: float, frames: int, tmp: str) -> Row:
    row = Row("send_fds", "-", consumers, rate, frames)
    outputs = [os.path.join(tmp, f"send_fds-{consumers}-{i}") for i in range(consumers)]
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(consumers)]

    def receive(s: socket.socket, out: str) -> None:
        for a, b in pairs:
            if b is not s:
                b.close()
            a.close()
        latencies = array.array("d")
        now = time.monotonic_ns
        unpack = STAMP.unpack
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(s, 64, 1)
            except ConnectionResetError:  # it closed with our last releases unread: read on
                continue
            if not msg:
                break
            seq, sent = unpack(msg)
            if seq:
                latencies.append((now() - sent) / 1000)
            for fd in fds:
                os.close(fd)
            s.send(RELEASE.pack(b"R", seq))
        _write_latencies(out, latencies)

    pids = [fork(lambda s=b, out=out: receive(s, out)) for (_a, b), out in zip(pairs, outputs, strict=True)]  # type: ignore[misc]
    ours = [a for a, _b in pairs]
    for _a, b in pairs:
        b.close()
    memfds = _memfds(POOL)
    try:
        send_fds, pack, now = socket.send_fds, STAMP.pack, time.monotonic_ns
        for s in ours:  # warm-up, and its release
            send_fds(s, [pack(0, now())], [memfds[0]])
            s.recv(64)
            s.setblocking(False)
        pacer = Pacer(rate)
        for i in range(frames):
            pacer.wait(i)
            data = [pack(i + 1, now())]
            fds = [memfds[i % POOL]]
            for s in ours:
                send_fds(s, data, fds)
                with contextlib.suppress(BlockingIOError):  # the releases that are there
                    while s.recv(64):
                        pass
        row.achieved = pacer.rate(frames)
        for s in ours:  # end of stream; the receivers' last releases are read to their EOF
            s.shutdown(socket.SHUT_WR)
        for s in ours:
            s.setblocking(True)
            while s.recv(64):
                pass
    finally:
        for s in ours:
            s.close()
        for fd in memfds:
            os.close(fd)
        for pid in pids:
            reap(pid)
    return _collected(row, outputs)


def send_fds_round_trip(n: int) -> float:
    """us per round trip: a memfd to an echo process and back, socket.send_fds/recv_fds."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def echo() -> None:
        a.close()
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(b, 64, 1)
            if not msg:
                return
            socket.send_fds(b, [msg], fds)
            for fd in fds:
                os.close(fd)

    pid = fork(echo)
    b.close()
    (memfd,) = _memfds(1)
    payload = bytes(STAMP.size)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            socket.send_fds(a, [payload], [memfd])
            for fd in socket.recv_fds(a, 64, 1)[1]:
                os.close(fd)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        a.close()
        os.close(memfd)
        reap(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="target frames per second (default 2000)")
    parser.add_argument("--frames", type=int, default=4000, help="frames per run (default 4000)")
    parser.add_argument("--round-trips", type=int, default=5000, help="round trips per timing (default 5000)")
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 8], help="consumer counts (default 1 8)")
    parser.add_argument("--quick", action="store_true", help="a short run that checks every row works")
    parser.add_argument("--vm", action="store_true", help="run inside the real-kernel VM")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.round_trips = 200, 300
    if args.vm:
        from pydmabuf import vm

        forwarded = ["--rate", str(args.rate), "--frames", str(args.frames), "--round-trips", str(args.round_trips),
                     "--consumers", *map(str, args.consumers)]
        result = vm.run([sys.executable, str(Path(__file__)), *forwarded], env={"PYDMABUF_BACKEND": "kernel"},
                        stream=sys.stdout)
        return result.returncode
    if args.rate <= 0 or args.frames <= 0 or args.round_trips <= 0 or min(args.consumers) <= 0:
        parser.error("--rate, --frames, --round-trips and --consumers must be > 0")

    import pydmabuf
    from pydmabuf.channel import SLOW_CONSUMER_POLICIES

    print(f"backend {pydmabuf.backend}, kernel {os.uname().release}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs; {SIZE // 1024} KiB frames, pool {POOL}, max_pending {MAX_PENDING}, "
          f"{args.frames} frames per run")
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for consumers in args.consumers:
            for policy in SLOW_CONSUMER_POLICIES:
                print(channel_run(policy, consumers, args.rate, args.frames, tmp).line(), flush=True)
            print(send_fds_run(consumers, args.rate, args.frames, tmp).line(), flush=True)
    print(f"\nround trips, unpaced ({args.round_trips} each; us per round trip)")
    print(f"send_fds round trip      {send_fds_round_trip(args.round_trips):8.1f} us  (memfd to an echo process "
          "and back)")
    print(f"channel round trip       {channel_round_trip(args.round_trips):8.1f} us  (pool of 1: submit, receive, "
          "release, acquire)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
