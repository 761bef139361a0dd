"""The channel under heavy use: a consumer that releases promptly keeps up at 500 and
2,000 frames/s with ``max_pending=4`` under both slow-consumer policies (the producer
reads every release it is sent, on readiness), a producer whose fd table is full
backs off instead of spinning and keeps serving the consumers it has, and the
benchmark still runs.

Both backends: natively on the active one, and on the kernel in the real-kernel VM,
where QEMU makes everything several times slower. So nothing here asserts a rate: a
machine too slow for the target rate just submits more slowly, and what is asserted
is that no frame is dropped and no consumer evicted.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _procs import fork, join

import pydmabuf
from pydmabuf.channel import SLOW_CONSUMER_POLICIES, Consumer, Producer

SIZE = 4096
POOL = 8  # more buffers than max_pending, so the slow-consumer policy can bite
MAX_PENDING = 4
# The producer runs at most WINDOW frames ahead of the consumer's releases, which
# makes "prompt" hold on any machine: the consumer really holds at most WINDOW frames
# when a frame is submitted, fewer than MAX_PENDING, so a drop or an eviction can only
# come from releases the producer has not read.
WINDOW = 2
_COUNTER = struct.Struct("<Q")
_names = itertools.count()
BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_channel.py"


def address() -> str:
    return f"\0pydmabuf-throughput-{os.getpid()}-{next(_names)}"


def _prompt_consumer(path: str, frames: int, acks: socket.socket) -> int:
    """Receive every frame in order and release it at once, then say so on ``acks``."""
    with Consumer.connect(path, timeout=10) as consumer:
        n = 0
        while (frame := consumer.receive(timeout=10)) is not None:
            if _COUNTER.unpack(frame.meta)[0] != n:
                print(f"frame {n} was skipped: got {_COUNTER.unpack(frame.meta)[0]}", file=sys.stderr)
                return 3
            frame.release()
            n += 1
            acks.send(b"r")
        if consumer.end_reason != "the producer ended the stream" or n != frames + 1:
            print(f"{n} of {frames + 1} frames, then: {consumer.end_reason}", file=sys.stderr)
            return 5
    return 0


@pytest.mark.parametrize("policy", SLOW_CONSUMER_POLICIES)
@pytest.mark.parametrize(("rate", "frames"), [(500, 600), (2000, 2000)], ids=["500fps", "2000fps"])
def test_a_prompt_consumer_never_falls_behind(rate: int, frames: int, policy: str) -> None:
    path = address()
    acks, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    acks.settimeout(10)
    with acks, Producer(path, size=SIZE, count=POOL, max_pending=MAX_PENDING, slow_consumer=policy) as producer:
        def consumer() -> int:
            acks.close()
            return _prompt_consumer(path, frames, theirs)

        pid = fork(consumer)
        theirs.close()
        try:
            producer.wait_for_consumers(1, timeout=10)
            # Frame 0 warms the consumer up (its first receive pays for one-time set-up)
            # and is released before the paced run starts.
            assert producer.submit(producer.acquire(timeout=10), meta=_COUNTER.pack(0)) == 1
            assert acks.recv(8) == b"r"
            released = 1
            interval = 1 / rate
            t0 = time.monotonic()
            for n in range(1, frames + 1):
                while released < n - WINDOW:
                    assert acks.recv(8) == b"r"
                    released += 1
                delay = t0 + (n - 1) * interval - time.monotonic()  # frame n's slot, as a camera's
                if delay > 0:
                    time.sleep(delay)
                got = producer.submit(producer.acquire(timeout=10), meta=_COUNTER.pack(n))
                assert got == 1, [str(e) for e in producer.events]
            elapsed = time.monotonic() - t0
            while released < frames + 1:  # it releases the last ones too
                assert acks.recv(8) == b"r"
                released += 1
            fell_behind = [str(e) for e in producer.events if e.kind != "connected"]
            assert not fell_behind
        except BaseException:
            os.kill(pid, 9)  # a consumer that waits for frames that will not come
            os.waitpid(pid, 0)
            raise
    assert join(pid, timeout=30) == 0
    print(f"{policy}: {frames} frames at {frames / elapsed:.0f} frames/s (target {rate}), none dropped")


# --- a producer out of file descriptors --------------------------------------------------

def _count_frames(path: str, expect: int, go: tuple[int, int] | None = None) -> int:
    """A consumer that connects and counts frames until the end of the stream. With
    ``go`` (two pipe ends), it connects once a byte arrives on the first and says it
    has on the second."""
    if go is not None:
        os.read(go[0], 1)
    with Consumer.connect(path, timeout=10) as consumer:
        if go is not None:
            os.write(go[1], b"!")
        n = 0
        while (frame := consumer.receive(timeout=20)) is not None:
            frame.release()
            n += 1
        if n != expect or consumer.end_reason != "the producer ended the stream":
            print(f"{n} of {expect} frames, then: {consumer.end_reason}", file=sys.stderr)
            return 3
    return 0


def _fill_fd_table() -> list[int]:
    """Lower the fd limit a little above what is open and open fds up to it."""
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
    filler = []
    while True:
        try:
            filler.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == 24, exc
            return filler


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _out_of_fds(path: str) -> int:
    """The producer's side, in a child process of its own (its fd table is filled)."""
    records = _Records()
    channel_log = logging.getLogger("pydmabuf.channel")
    channel_log.addHandler(records)
    channel_log.setLevel(logging.INFO)
    channel_log.propagate = False
    go, connected = os.pipe(), os.pipe()
    with Producer(path, size=SIZE, count=4) as producer:
        first = fork(lambda: _count_frames(path, 21))
        producer.wait_for_consumers(1, timeout=10)
        second = fork(lambda: _count_frames(path, 1, (go[0], connected[1])))
        filler = _fill_fd_table()
        os.write(go[1], b"!")  # the second consumer connects: accepting it fails with EMFILE
        assert os.read(connected[0], 1) == b"!"  # it is queued on the listener
        cpu0, wall0 = time.process_time(), time.monotonic()
        with pytest.raises(pydmabuf.TimeoutError, match="Too many open files"):
            producer.wait_for_consumers(2, timeout=1.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        warnings = [r.getMessage() for r in records.records if r.levelno >= logging.WARNING]
        print(f"out of fds: wait_for_consumers(timeout=1.5) used {cpu:.3f} s CPU in {wall:.2f} s, "
              f"{len(warnings)} warning(s)", file=sys.stderr)
        assert cpu < 0.3 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s: spinning"
        assert 1 <= len(warnings) <= 5, warnings[:10]
        assert "RLIMIT_NOFILE" in warnings[0] and str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]) in warnings[0]
        for n in range(20):  # still out of fds: the consumer it has gets every frame
            assert producer.submit(producer.acquire(timeout=5), meta=_COUNTER.pack(n)) == 1
        assert len([r for r in records.records if r.levelno >= logging.WARNING]) <= 5
        for fd in filler:
            os.close(fd)
        producer.wait_for_consumers(2, timeout=5)  # fds again: the queued consumer is accepted
        assert any("accepting consumers again" in r.getMessage() for r in records.records)
        assert producer.submit(producer.acquire(timeout=5)) == 2
    for fd in (*go, *connected):
        os.close(fd)
    return 0 if join(first) == 0 and join(second) == 0 else 3


def test_a_producer_out_of_fds_backs_off_and_keeps_serving() -> None:
    assert join(fork(lambda: _out_of_fds(address())), timeout=60) == 0


# --- the benchmark ----------------------------------------------------------------------

def test_bench_channel_quick_reports_every_row() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for consumers in (1, 8):
        for policy in SLOW_CONSUMER_POLICIES:
            assert any(line.split()[:3] == ["channel", policy, str(consumers)] for line in lines if line.strip()), \
                out.stdout
        assert any(line.split()[:3] == ["send_fds", "-", str(consumers)] for line in lines if line.strip()), \
            out.stdout
    assert any(line.startswith("send_fds round trip") for line in lines), out.stdout
