"""The producer/consumer channel across real processes, including kill -9 of
either side mid-stream: no deadlock (every wait has a timeout), no fd leak in the
survivor, and the survivor says what happened."""

from __future__ import annotations

import itertools
import os
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
