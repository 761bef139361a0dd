"""The channel's trust boundaries, attacked on both backends: peers of another uid
(a forked child that drops to nobody with os.setuid; the tests run as root), a
consumer that stops reading or releases without reading, a consumer that sends
garbage or releases frames it does not hold, path-socket modes under any umask,
writes to a frame's buffer, and every method of a closed Producer or Consumer.

Whatever could hang runs in a forked child that ``join`` kills after a deadline."""

from __future__ import annotations

import contextlib
import errno as E
import fcntl
import itertools
import mmap
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Callable

import pytest
from _procs import fork, join
from conftest import BACKEND

import pydmabuf
from pydmabuf.channel import Consumer, Event, Producer

SIZE = 16 << 10
NOBODY = 65534
FRAMES = 2000
_COUNTER = struct.Struct("<I")
_RELEASE = struct.Struct("<cQ")
_names = itertools.count()


def address() -> str:
    return f"@pydmabuf-trust-{os.getpid()}-{next(_names)}"


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _until(condition: Callable[[], bool], producer: Producer, timeout: float = 10) -> None:
    """Poll the producer until ``condition`` holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        producer.poll(0.01)


def _events(producer: Producer, kind: str) -> list[Event]:
    return [e for e in producer.events if e.kind == kind]


# --- who may connect -------------------------------------------------------------

def test_consumer_of_another_uid_is_refused_and_gets_no_frame() -> None:
    path = address()
    with Producer(path, size=SIZE, count=2) as producer:
        def nobody() -> int:
            _as_nobody()
            with Consumer.connect(path, timeout=10) as consumer:  # a root producer is trusted
                for _ in range(2):  # refused now and on every later call; never a frame
                    try:
                        consumer.receive(timeout=10)
                    except pydmabuf.PermissionDeniedError as exc:
                        assert isinstance(exc, PermissionError) and exc.errno == E.EACCES
                        assert f"allow_uids=[{NOBODY}]" in str(exc), exc
                        continue
                    return 2  # a frame, or an end of stream: not what a refused consumer gets
            return 0

        pid = fork(nobody)
        end = time.monotonic() + 10
        while not _events(producer, "refused") and time.monotonic() < end:
            assert producer.submit(producer.acquire(timeout=5)) == 0  # nobody admitted to get it
            producer.poll(0.01)
        status = join(pid)
        (event,) = _events(producer, "refused")
        assert event.pid == pid and event.uid == NOBODY and not event.clean
        assert "refused" in str(event)
        assert producer.consumers == 0 and not _events(producer, "connected")
    assert status == 0


def _read_frames_as_nobody(path: str, frames: int) -> int:
    _as_nobody()
    with Consumer.connect(path, timeout=10) as consumer:
        for _ in range(frames):
            frame = consumer.receive(timeout=10)
            assert frame is not None
            assert frame.map()[SIZE - 1] == frame.seq % 251
            if BACKEND == "fallback":  # a read-only fd of a file sealed against writers
                with pytest.raises(pydmabuf.PermissionDeniedError):
                    frame.buffer.map()
                with pytest.raises(OSError) as err:
                    os.write(frame.buffer.fileno(), b"PWNED")
                assert err.value.errno == E.EBADF
            else:  # a dma-buf keeps the exporter's access mode (docs/security.md)
                frame.buffer.map().close()
            frame.release()
        assert consumer.receive(timeout=10) is None
        assert consumer.end_reason == "the producer ended the stream"
    return 0


@pytest.mark.parametrize("allow", ["allow_uids", "allow_gids"])
def test_admitted_consumer_of_another_uid_gets_frames_it_cannot_write(allow: str) -> None:
    path = address()
    with Producer(path, size=SIZE, count=2, max_pending=2, **{allow: [NOBODY]}) as producer:
        pid = fork(lambda: _read_frames_as_nobody(path, 4))
        producer.wait_for_consumers(1, timeout=10)
        last: dict[pydmabuf.Buffer, int] = {}  # what the producer wrote last into each buffer
        for seq in range(1, 5):
            buf = producer.acquire(timeout=10)
            producer.mapping(buf)[:] = bytes([seq % 251]) * SIZE
            last[buf] = seq % 251
            assert producer.submit(buf) == 1
        _until(lambda: producer.free == 2, producer)
        (event,) = _events(producer, "connected")
        assert event.uid == NOBODY and event.pid == pid
        # Nothing the consumer tried reached the producer's pages. (Which buffer carried
        # which frame depends on when releases arrive: a buffer released before the next
        # acquire may be reused at once, so the check is per buffer, not "3 and 4".)
        for buf in producer.buffers:
            assert producer.mapping(buf)[:] == bytes([last.get(buf, 0)]) * SIZE
    assert join(pid) == 0


def test_consumer_refuses_a_producer_of_another_uid() -> None:
    path = address()
    control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def squatter() -> int:  # binds the address first, as nobody, and serves frames
        control.close()
        with pydmabuf.Heap("system") as heap:  # allocated while root: heaps are root-only
            buffers = [heap.allocate(SIZE) for _ in range(2)]
        _as_nobody()
        with Producer(path, buffers=buffers, allow_uids=[0], max_pending=2) as producer:
            theirs.send(b"listening")
            stop = select.poll()
            stop.register(theirs, select.POLLIN)
            end = time.monotonic() + 20
            while time.monotonic() < end and not stop.poll(0):
                producer.poll(0.01)
                if producer.consumers and producer.free:
                    buf = producer.acquire(timeout=1)
                    producer.mapping(buf)[:4] = b"fake"
                    producer.submit(buf)
        return 0

    pid = fork(squatter)
    theirs.close()
    try:
        control.settimeout(10)
        assert control.recv(16) == b"listening"
        with pytest.raises(pydmabuf.PermissionDeniedError, match=rf"uid {NOBODY}.*allow_uids=\[{NOBODY}\]"):
            Consumer.connect(path, timeout=5)
        with Consumer.connect(path, timeout=5, allow_uids=[NOBODY]) as consumer:  # trusted on request
            frame = consumer.receive(timeout=10)
            assert frame is not None and frame.map()[:4] == b"fake"
            frame.release()
        control.send(b"stop")
        assert join(pid) == 0
    finally:
        control.close()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o177])
def test_path_socket_is_owner_only_whatever_the_umask(tmp_path: object, umask: int) -> None:
    path = os.path.join(str(tmp_path), "camera.sock")
    old = os.umask(umask)
    try:
        producer = Producer(path, size=SIZE, count=1)
    finally:
        os.umask(old)
    with producer:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with Consumer.connect(path, timeout=5):
            producer.wait_for_consumers(1, timeout=5)
    assert not os.path.exists(path)


def test_consumers_cannot_write_the_producers_buffers() -> None:
    """Root can reopen its fd of a fallback frame read-write; the seal still refuses
    every write. A dma-buf cannot be reopened (ENXIO): its fd keeps the exporter's
    access mode, read-write for heap buffers."""
    path = address()
    with Producer(path, size=SIZE, count=1) as producer, Consumer.connect(path, timeout=5) as consumer:
        producer.wait_for_consumers(1, timeout=5)
        buf = producer.acquire(timeout=5)
        producer.mapping(buf)[:6] = b"secret"
        producer.submit(buf)
        frame = consumer.receive(timeout=5)
        assert frame is not None
        fd = frame.buffer.fileno()
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        if BACKEND == "fallback":
            assert mode == os.O_RDONLY
            with pytest.raises(pydmabuf.PermissionDeniedError):
                frame.buffer.map()
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
            try:
                with pytest.raises(PermissionError):  # EPERM: F_SEAL_FUTURE_WRITE
                    os.write(rw, b"PWNED")
                with pytest.raises(PermissionError):
                    mmap.mmap(rw, SIZE)
            finally:
                os.close(rw)
        else:
            assert mode == os.O_RDWR
            with pytest.raises(OSError) as err:
                os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC))
            assert err.value.errno == E.ENXIO
        assert frame.map()[:6] == b"secret"
        frame.release()
        buf = producer.acquire(timeout=5)  # the producer still writes, through its mapping
        producer.mapping(buf)[:6] = b"again!"
        assert producer.mapping(buf)[:6] == b"again!"
        producer.submit(buf)
        frame = consumer.receive(timeout=5)
        assert frame is not None and frame.map()[:6] == b"again!"
        frame.release()


# --- no unbounded blocking -------------------------------------------------------

def _serve(path: str, policy: str, max_pending: int, reason: str, acks: socket.socket | None) -> int:
    """Producer child: FRAMES frames to two consumers, one of which falls behind.
    With ``acks``, the healthy consumer says when it has released each frame and the
    next waits for that, so only the other consumer can fall behind."""
    with Producer(path, size=SIZE, count=4, max_pending=max_pending, slow_consumer=policy) as producer:
        producer.wait_for_consumers(2, timeout=10)
        t0 = time.monotonic()
        for n in range(FRAMES):
            producer.submit(producer.acquire(timeout=10), meta=_COUNTER.pack(n))
            if acks is not None:
                assert acks.recv(16) == b"released"
                producer.poll(0)  # its release is queued by now
        elapsed = time.monotonic() - t0
        if policy == "drop":
            dropped = _events(producer, "dropped")
            assert dropped and all(reason in e.reason for e in dropped), dropped
            assert len(dropped) <= 2 + elapsed  # rate-limited: about one a second
            assert sum(e.dropped for e in dropped) < FRAMES
            assert producer.consumers == 2 and not _events(producer, "evicted")
        else:
            (evicted,) = _events(producer, "evicted")
            assert reason in evicted.reason and not evicted.clean, evicted
            assert "disconnected" in str(evicted)
            assert producer.consumers == 1
    return 0


def _reap(pid: int) -> None:
    """After a failure: make sure the child is gone (it may be reaped already)."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def _receive_every_frame(consumer: Consumer, each: Callable[[int], None] = lambda seq: None) -> None:
    for n in range(FRAMES):
        frame = consumer.receive(timeout=10)
        assert frame is not None
        assert _COUNTER.unpack(frame.meta)[0] == n  # every frame, in order: none skipped
        frame.release()
        each(frame.seq)
    assert consumer.receive(timeout=10) is None
    assert consumer.end_reason == "the producer ended the stream"


@pytest.mark.parametrize("policy", ["drop", "disconnect"])
def test_a_consumer_that_stops_reading_does_not_stall_the_others(policy: str) -> None:
    path = address()
    acks, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(10)
    pid = fork(lambda: _serve(path, policy, 2, "max_pending", theirs))
    theirs.close()
    try:
        with Consumer.connect(path, timeout=10) as stalled, Consumer.connect(path, timeout=10) as healthy:
            _receive_every_frame(healthy, lambda seq: acks.sendall(b"released"))
            assert join(pid) == 0
            frames = [stalled.receive(timeout=5) for _ in range(2)]  # what it got before falling behind
            assert all(f is not None for f in frames)
            assert stalled.receive(timeout=5) is None
            if policy == "disconnect":
                assert "falling behind" in (stalled.end_reason or "")
            for f in frames:
                assert f is not None
                f.release()
    finally:
        acks.close()
        _reap(pid)


@pytest.mark.parametrize("policy", ["drop", "disconnect"])
def test_a_consumer_that_releases_without_reading_does_not_block_submit(policy: str) -> None:
    """The attack that froze submit(): release every frame, read none, until the
    socket is full. A send that would block is falling behind."""
    path = address()
    pid = fork(lambda: _serve(path, policy, 4, "socket is full", None))
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with Consumer.connect(path, timeout=10) as healthy:
            hostile.connect("\0" + path[1:])

            def release_unread(seq: int) -> None:
                with contextlib.suppress(OSError):  # once evicted, its socket is closed
                    hostile.send(_RELEASE.pack(b"R", seq), socket.MSG_DONTWAIT)

            _receive_every_frame(healthy, release_unread)
            assert join(pid) == 0
    finally:
        hostile.close()
        _reap(pid)


def test_connect_to_a_full_backlog_times_out() -> None:
    path = address()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    queued: list[socket.socket] = []
    try:
        listener.bind("\0" + path[1:])
        listener.listen(0)  # never accepts
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            queued.append(s)
            s.setblocking(False)
            try:
                s.connect("\0" + path[1:])
            except BlockingIOError:
                break

        def connect() -> int:
            with pytest.raises(pydmabuf.TimeoutError):
                Consumer.connect(path, timeout=0.2)
            return 0

        assert join(fork(connect)) == 0
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_timeouts_and_arguments_are_checked() -> None:
    with pytest.raises(pydmabuf.TimeoutError):
        Consumer.connect(address(), timeout=0.05)
    for bad in (-1, float("nan")):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            Consumer.connect(address(), timeout=bad)
    with pytest.raises(TypeError):
        Consumer.connect(address(), timeout="1")  # type: ignore[arg-type]
    with pytest.raises(pydmabuf.InvalidArgumentError):
        Consumer.connect(address(), allow_uids=[-1])
    for kwargs in ({"slow_consumer": "block"}, {"max_pending": 0}, {"allow_uids": [-5]}, {"allow_gids": ["0"]}):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            Producer(address(), size=SIZE, count=1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Producer(address(), size=SIZE, count=1, max_pending=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Producer(address(), size=SIZE, count=1, heap="system")  # type: ignore[arg-type]
    for path in ("", "a\0b", "/tmp/" + "x" * 200, "@" + "y" * 200):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            Producer(path, size=SIZE, count=1)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            Consumer.connect(path, timeout=0)
    assert not os.path.exists("a")  # "a\0b" must not have bound "a"
    with pydmabuf.Heap("system") as heap, heap.allocate(SIZE) as buf:
        for buffers in ([], [buf, buf], [buf, "not a buffer"]):
            with pytest.raises(pydmabuf.InvalidArgumentError):
                Producer(address(), buffers=buffers)  # type: ignore[arg-type]
        assert buf.fileno() >= 0  # refused buffers are not taken
    with Producer(address(), size=SIZE, count=3) as producer:
        assert producer.max_pending == 3  # by default the pool is the only bound
    path = address()
    with Producer(path, size=SIZE, count=1) as producer, Consumer.connect(path) as consumer:
        for call in (lambda: producer.acquire(timeout=-1), lambda: producer.poll(float("nan")),
                     lambda: producer.wait_for_consumers(1, timeout=-0.5), lambda: consumer.receive(timeout=-1)):
            with pytest.raises(pydmabuf.InvalidArgumentError):
                call()
        buf = producer.acquire(timeout=float("inf"))
        with pytest.raises(pydmabuf.InvalidArgumentError):
            producer.submit(buf, meta=bytes(4096))
        producer.submit(buf)
        with pytest.raises(pydmabuf.InvalidArgumentError):  # submitted: not acquired any more
            producer.submit(buf)
        with pytest.raises(pydmabuf.TimeoutError):
            producer.acquire(timeout=0.01)


# --- what consumers send back ----------------------------------------------------

def test_a_consumer_cannot_free_another_consumers_frame() -> None:
    path = address()
    with Producer(path, size=SIZE, count=2, max_pending=2) as producer, \
            Consumer.connect(path, timeout=5) as honest, \
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as hostile:
        hostile.connect("\0" + path[1:])
        producer.wait_for_consumers(2, timeout=5)
        assert producer.submit(producer.acquire(timeout=5)) == 2
        frame = honest.receive(timeout=5)
        assert frame is not None
        for seq in (frame.seq, frame.seq, frame.seq + 1, 0, 2**64 - 1):  # its own once, then lies
            hostile.send(_RELEASE.pack(b"R", seq))
        for _ in range(10):
            producer.poll(0.01)
        assert producer.free == 1  # the honest consumer's copy still holds it
        hostile.send(b"garbage!")
        _until(lambda: bool(_events(producer, "disconnected")), producer)
        (event,) = _events(producer, "disconnected")
        assert not event.clean and "invalid message" in event.reason
        assert producer.consumers == 1 and producer.free == 1
        frame.release()
        _until(lambda: producer.free == 2, producer)


# --- closed objects --------------------------------------------------------------

def test_closed_producer_and_consumer_raise_closed_error() -> None:
    path = address()
    producer = Producer(path, size=SIZE, count=2)
    consumer = Consumer.connect(path, timeout=5)
    producer.wait_for_consumers(1, timeout=5)
    buf = producer.acquire(timeout=5)
    producer.mapping(buf)[:4] = b"kept"
    producer.submit(buf)
    frame = consumer.receive(timeout=5)
    assert frame is not None
    producer.close()
    producer.close()  # idempotent
    assert producer.closed and producer.consumers == 0 and producer.free == 0
    for call in (lambda: producer.acquire(timeout=0), lambda: producer.acquire(), lambda: producer.submit(buf),
                 lambda: producer.mapping(buf), lambda: producer.poll(0),
                 lambda: producer.wait_for_consumers(1, timeout=0)):
        with pytest.raises(pydmabuf.ClosedError):
            call()
    assert frame.map()[:4] == b"kept"  # what a consumer holds outlives the producer
    assert consumer.receive(timeout=5) is None
    assert consumer.end_reason == "the producer ended the stream"
    frame.release()
    consumer.close()
    consumer.close()
    assert consumer.closed
    for call in (lambda: consumer.receive(timeout=0), consumer.receive, consumer.fileno):
        with pytest.raises(pydmabuf.ClosedError):
            call()
