"""The producer/consumer channel across real processes, including kill -9 of
either side mid-stream: no deadlock (every wait has a timeout), no fd leak in the
survivor, and the survivor says what happened."""

from __future__ import annotations

import errno as E
import itertools
import os
import resource
import socket
import subprocess
import sys
import time

import pytest
from _procs import fork, join, kill9
from conftest import TIMELINE_MISSING, open_fds

import pydmabuf
from pydmabuf.channel import Consumer, Producer

SIZE = 16 << 10
_names = itertools.count()


def address() -> str:
    return f"\0pydmabuf-test-{os.getpid()}-{next(_names)}"  # abstract: nothing to clean up


def _frame_byte(seq: int) -> int:
    return seq * 7 % 251


def _consume(path: str, *, expect: int | None = None, hold: int = 0,
             report: socket.socket | None = None) -> int:
    """Child side: receive frames, wait for their fences, check and release them."""
    with Consumer.connect(path, timeout=10) as consumer:
        held = []
        n = 0
        while (frame := consumer.receive(timeout=10)) is not None:
            frame.wait(10)
            with frame.buffer.cpu_access(write=False):
                m = frame.map()
                assert m[0] == m[SIZE - 1] == _frame_byte(frame.seq), (m[0], frame.seq)
                assert frame.meta == f"frame {frame.seq}".encode()
            n += 1
            if len(held) < hold:
                held.append(frame)
                if len(held) == hold and report is not None:
                    report.send(b"holding")
            else:
                frame.release()
        assert consumer.end_reason == "the producer ended the stream", consumer.end_reason
        for frame in held:
            frame.release()
    return 0 if expect is None or n == expect else 3


def _produce(producer: Producer, seq_from: int, n: int, timeline: pydmabuf.Timeline | None,
             timeout: float = 10) -> list[int]:
    """Fill and submit n frames; with a timeline, each frame's fence is signaled after
    submit, so consumers really wait on it. Returns the pool slot ids used."""
    used = []
    for seq in range(seq_from, seq_from + n):
        buf = producer.acquire(timeout)
        used.append(id(buf))
        m = producer.mapping(buf)
        with buf.cpu_access(read=False):
            m[:] = bytes([_frame_byte(seq)]) * SIZE
        if timeline is None:
            producer.submit(buf, meta=f"frame {seq}".encode())
        else:
            with timeline.fence(seq) as fence:
                producer.submit(buf, fence, meta=f"frame {seq}".encode())
            timeline.signal(seq)
    return used


@pytest.mark.parametrize("fences", [False, True], ids=["plain", "fenced"])
def test_frames_flow_and_buffers_are_reused(fences: bool) -> None:
    if fences and TIMELINE_MISSING:
        pytest.skip(TIMELINE_MISSING)
    path = address()
    with Producer(path, size=SIZE, count=2) as producer:
        pid = fork(lambda: _consume(path, expect=12))
        producer.wait_for_consumers(1, timeout=10)
        timeline = pydmabuf.Timeline() if fences else None
        try:
            used = _produce(producer, 1, 12, timeline)
        finally:
            if timeline is not None:
                timeline.close()
        assert len(set(used)) == 2  # 12 frames through a pool of 2
        assert producer.events[0].kind == "connected" and producer.events[0].pid == pid
    assert join(pid) == 0


def test_every_consumer_gets_every_frame_and_all_must_release() -> None:
    path = address()
    with Producer(path, size=SIZE, count=3) as producer:
        pids = [fork(lambda: _consume(path, expect=9)) for _ in range(2)]
        producer.wait_for_consumers(2, timeout=10)
        _produce(producer, 1, 9, None)
        deadline = time.monotonic() + 10
        while producer.free < 3 and time.monotonic() < deadline:
            producer.poll(0.05)
        assert producer.free == 3
    assert [join(p) for p in pids] == [0, 0]


def test_consumer_close_is_clean_and_releases() -> None:
    path = address()
    with Producer(path, size=SIZE, count=2) as producer:
        consumer = Consumer.connect(path)
        producer.wait_for_consumers(1, timeout=5)
        _produce(producer, 1, 2, None)
        frames = [consumer.receive(5), consumer.receive(5)]
        assert producer.free == 0
        with pytest.raises(pydmabuf.TimeoutError):
            producer.acquire(timeout=0.05)
        consumer.close()  # still holding both
        producer.acquire(timeout=5)
        (event,) = [e for e in producer.events if e.kind == "disconnected"]
        assert event.clean and event.released == 2
        for f in frames:
            assert f is not None
            f.release()  # after close: only closes


def test_receive_times_out_without_frames() -> None:
    path = address()
    with Producer(path, size=SIZE, count=1), Consumer.connect(path) as consumer, \
            pytest.raises(pydmabuf.TimeoutError):
        consumer.receive(timeout=0.05)


def test_consumer_killed_mid_stream_releases_its_buffers() -> None:
    path = address()
    before = open_fds()
    report, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with Producer(path, size=SIZE, count=3) as producer:
        def consumer() -> int:
            report.close()
            return _consume(path, hold=3, report=child_end)

        pid = fork(consumer)
        child_end.close()
        producer.wait_for_consumers(1, timeout=10)
        _produce(producer, 1, 3, None)
        report.settimeout(10)
        assert report.recv(16) == b"holding"
        with pytest.raises(pydmabuf.TimeoutError):  # the pool is all held
            producer.acquire(timeout=0.05)
        kill9(pid)  # mid-stream, holding every buffer
        buf = producer.acquire(timeout=5)  # no deadlock: the kernel hung up for it
        producer.submit(buf)  # nobody left: goes straight back
        event = producer.events[-1]
        assert event.kind == "disconnected" and event.pid == pid
        assert not event.clean and event.released == 3
        assert "died" in str(event)
        assert producer.consumers == 0 and producer.free == 3
    report.close()
    assert open_fds() == before


def test_producer_killed_mid_stream_gives_end_of_stream() -> None:
    path = address()
    before = open_fds()

    def producer() -> int:
        with Producer(path, size=SIZE, count=4) as p:
            p.wait_for_consumers(1, timeout=10)
            _produce(p, 1, 3, None)
            time.sleep(60)  # killed here, mid-stream
        return 0

    pid = fork(producer)
    consumer = Consumer.connect(path, timeout=10)
    frames = [consumer.receive(timeout=10) for _ in range(3)]
    kill9(pid)
    assert consumer.receive(timeout=5) is None  # queued frames first, then the end
    assert consumer.ended and "went away" in (consumer.end_reason or "")
    for frame in frames:  # what we hold stays valid and mapped
        assert frame is not None
        assert frame.map()[SIZE - 1] == _frame_byte(frame.seq)
        frame.release()
    consumer.close()
    assert open_fds() == before


def test_producer_rejects_foreign_buffers(heap: pydmabuf.Heap) -> None:
    with Producer(address(), size=SIZE, count=1) as producer, heap.allocate(SIZE) as other, \
            pytest.raises(pydmabuf.InvalidArgumentError):
        producer.submit(other)


def test_demo_command(tmp_path: object) -> None:
    result = subprocess.run([sys.executable, "-m", "pydmabuf", "demo", "--frames", "12", "--size", "65536",
                             "--buffers", "3"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"backend {pydmabuf.backend}" in out
    assert "12 frames" in out and "0 checksum mismatches" in out
    assert "the producer ended the stream" in out and "throughput:" in out
    if not TIMELINE_MISSING:
        assert "(12 fenced)" in out


# --- arguments and limits ----------------------------------------------------------

class _Three:
    def __index__(self) -> int:
        return 3


def test_pool_count_is_any_integer_like_buffer_pool() -> None:
    np = pytest.importorskip("numpy")
    for count in (np.int64(3), np.uint8(3), _Three()):
        with Producer(address(), size=SIZE, count=count) as producer:  # type: ignore[arg-type]
            assert len(producer.buffers) == 3
        with Producer(address(), frame_layout=(64, 16, "NV12"), count=count) as producer:  # type: ignore[arg-type]
            assert len(producer.frames) == 3
    for bad in (3.0, "3", True, None):
        with pytest.raises(TypeError):
            Producer(address(), size=SIZE, count=bad)  # type: ignore[arg-type]
    for bad in (0, -1, np.int64(0)):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            Producer(address(), size=SIZE, count=bad)


def test_a_pool_beyond_the_fd_limit_is_a_library_error_naming_it() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    t0 = time.monotonic()
    with pytest.raises(pydmabuf.Error) as err:
        Producer(address(), size=SIZE, count=10**6 if soft < 10**6 else soft)
    assert err.value.errno == E.EMFILE and "RLIMIT_NOFILE" in str(err.value) and str(soft) in str(err.value)
    assert time.monotonic() - t0 < 1  # refused before allocating anything

    def child() -> int:
        # A pool that passes the check but runs out of fds while it is set up.
        before = open_fds()
        limit = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        count = limit - before + 5  # 5 more buffers than fds are free, fewer than the limit
        assert count < limit
        with pytest.raises(pydmabuf.Error) as err:
            Producer(address(), size=SIZE, count=count)
        assert err.value.errno == E.EMFILE and "RLIMIT_NOFILE" in str(err.value), err.value
        assert open_fds() == before  # what was allocated is closed again
        return 0

    assert join(fork(child)) == 0


def test_delivery_wait_checks_its_timeout_like_every_wait() -> None:
    path = address()
    with Producer(path, size=SIZE, count=2) as producer, Consumer.connect(path, timeout=5) as consumer:
        producer.wait_for_consumers(1, timeout=5)
        fences = [False] if TIMELINE_MISSING else [False, True]
        for fenced in fences:
            timeline = pydmabuf.Timeline() if fenced else None
            try:
                if timeline is None:
                    producer.submit(producer.acquire(timeout=5))
                else:
                    with timeline.fence(1) as fence:
                        producer.submit(producer.acquire(timeout=5), fence)
                    timeline.signal(1)
                delivery = consumer.receive(timeout=5)
                assert delivery is not None and (delivery.fence is not None) == fenced
                with delivery:
                    for bad in (float("nan"), -1, -0.001, float("-inf")):
                        with pytest.raises(pydmabuf.InvalidArgumentError):
                            delivery.wait(bad)
                    for wrong in ("1", b"1", True, [1]):
                        with pytest.raises(TypeError):
                            delivery.wait(wrong)  # type: ignore[arg-type]
                    for good in (None, 0, 0.5, 10**30, float("inf")):
                        delivery.wait(good)
            finally:
                if timeline is not None:
                    timeline.close()


# --- the stream header (share.recv on SOCK_STREAM, which the channel's wire sits on) ----

@pytest.mark.parametrize("garbage", [b"PING\r\n\r\n", b"X", b"DB\x07\x01\x00\x00\xff\x00",
                                     b"\xff" * 6 + b"\x40\x00" + b"\xff" * 8],
                         ids=["text", "one-byte", "bad-version", "declares-64-bytes"])
def test_garbage_on_a_stream_socket_is_refused_at_once(garbage: bytes) -> None:
    # Each is garbage from its first bytes, and (but for "X") its bytes 6-7 declare a
    # length the receiver would wait for: "\r\n" is 2573 bytes.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.sendall(garbage)  # and the connection stays open: nothing more will come
        t0 = time.monotonic()
        with pytest.raises(pydmabuf.share.ProtocolError):
            pydmabuf.recv(b, timeout=5)
        assert time.monotonic() - t0 < 1, "garbage was read as a header and its length waited for"
