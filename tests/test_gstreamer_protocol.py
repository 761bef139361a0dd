"""GStreamer's unixfd protocol (pydmabuf.gst_wire, pydmabuf.gstreamer) without GStreamer:
the wire format both ways, a GstProducer feeding a GstConsumer on the active backend
(pixels, releases, EOS, timestamps), and hostile sinks and sources (every fd closed,
every wait bounded). tests/consumers/ runs the same classes against GStreamer's own
unixfdsink and unixfdsrc in the consumer root."""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _procs import fork, join
from hypothesis import given, settings
from hypothesis import strategies as st

import pydmabuf
from pydmabuf import gst_wire as wire
from pydmabuf import gstreamer
from pydmabuf.channel import Consumer, Producer
from pydmabuf.gstreamer import GstConsumer, GstProducer, default_frames, default_layout
from pydmabuf.share import ProtocolError


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "gst.sock")


# --- the wire format -----------------------------------------------------------------------

def test_new_buffer_round_trip() -> None:
    meta = wire.VideoMeta(23, 66, 50, (0, 3400), (68, 68))
    payload = wire.new_buffer_payload(7, 1000, 33, wire.MEMORY_DMABUF, [wire.Memory(5100, 0)], meta, dts=5,
                                      offset=1, offset_end=2, flags=0x40)
    parsed = wire.parse_new_buffer(payload)
    assert parsed == wire.NewBuffer(7, 1000, 5, 33, 1, 2, 0x40, wire.MEMORY_DMABUF, (wire.Memory(5100, 0),), meta)
    assert len(payload) == 56 + 16 + (8 + len(b"GstVideoMeta") + 2 + 20 + 16 * 2 + 16)


def test_layout_constants_match_gstreamer() -> None:
    # gstunixfd.h static-asserts these sizes
    assert wire.HEADER.size == 8 and wire.NEW_BUFFER_HEAD.size == 56 and wire.MEMORY.size == 16
    assert wire.caps_message("video/x-raw") == struct.pack("=II", 2, 12) + b"video/x-raw\0"
    assert wire.release_message(9) == struct.pack("=IIQ", 1, 8, 9)
    assert wire.eos_message() == struct.pack("=II", 3, 0)


def test_caps_fields() -> None:
    caps = ('video/x-raw(memory:DMABuf), format=(string)DMA_DRM, drm-format=(string)"NV12:0x0100000000000002", '
            "width=(int)66, height=(int)50, framerate=(fraction)30/1")
    fields = wire.parse_video_caps(caps)
    assert fields is not None
    assert fields["drm-format"] == "NV12:0x0100000000000002" and fields["width"] == "66"
    assert wire.parse_video_caps("audio/x-raw, rate=(int)48000") is None
    assert wire.parse_video_caps("video/x-raw, format=NV12; video/x-raw, format=I420") is None  # not fixed


@pytest.mark.parametrize("payload", [b"", b"\0" * 55, wire.NEW_BUFFER_HEAD.pack(0, 0, 0, 0, 0, 0, 0, 2, 0, 0),
                                     wire.NEW_BUFFER_HEAD.pack(0, 0, 0, 0, 0, 0, 0, 0, 17, 0),
                                     wire.NEW_BUFFER_HEAD.pack(0, 0, 0, 0, 0, 0, 0, 0, 1, 0),
                                     wire.NEW_BUFFER_HEAD.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 1) + b"\xff" * 8])
def test_malformed_new_buffer_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.parse_new_buffer(payload)


@settings(max_examples=300, deadline=None, database=None)  # the guest's checkout is read-only
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    for parse in (wire.parse_new_buffer, wire.parse_caps, wire.parse_release):
        with contextlib.suppress(ProtocolError):
            parse(data)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=120), st.integers(0, 3))
def test_any_meta_bytes_parse_or_raise_protocol_error(meta: bytes, n_meta: int) -> None:
    payload = wire.NEW_BUFFER_HEAD.pack(1, 0, 0, 0, 0, 0, 0, 0, 0, n_meta) + meta
    with contextlib.suppress(ProtocolError):
        wire.parse_new_buffer(payload)


def test_default_layouts_fit_their_frames() -> None:
    assert default_layout("NV12", 66, 50) == [(0, 68), (3400, 68)]
    assert default_layout("I420", 65, 49) == [(0, 68), (3400, 36), (3400 + 36 * 25, 36)]
    assert default_layout("BGRx", 66, 50) == [(0, 264)]
    assert default_layout("v210", 66, 50) is None
    for fmt in ("NV12", "XRGB8888", "YUV420", "YUYV", "NV16", "RGB888", "P010"):
        (frame,) = default_frames(65, 49, fmt)  # Frame checks every plane fits
        frame.close()


# --- a pydmabuf producer and consumer, speaking GStreamer's protocol ---------------------

def _draw(frame: pydmabuf.Frame, seq: int) -> None:
    with frame.cpu_access():
        for index, view in enumerate(frame.plane_views()):
            for y in range(view.rows):
                view.row(y)[:] = bytes((x + 3 * y + 50 * index + seq) & 0xFF for x in range(view.row_bytes))
            view.release()


def _rows(frame: pydmabuf.Frame) -> list[bytes]:
    with frame.cpu_access(write=False):
        views = frame.plane_views(write=False)
        try:
            return [view.tobytes() for view in views]
        finally:
            for view in views:
                view.release()


@pytest.mark.parametrize("fmt", ["NV12", "XRGB8888"])
def test_producer_to_consumer(path: str, fmt: str) -> None:
    before = open_fds()
    with Producer(path, frame_layout=(66, 50, fmt), count=2, protocol="gstreamer") as producer:
        assert isinstance(producer, GstProducer)
        with Consumer.connect(path, timeout=5, protocol="gstreamer") as consumer:
            assert isinstance(consumer, GstConsumer)
            producer.wait_for_sources(1, timeout=5)
            for seq in range(5):
                frame = producer.acquire(timeout=5)
                _draw(frame, seq)
                assert producer.submit(frame, pts=1000 + seq, duration=33) == 1
                delivery = consumer.receive(timeout=5)
                assert delivery is not None and delivery.frame is not None
                assert (delivery.pts, delivery.dts, delivery.duration) == (1000 + seq, None, 33)
                assert _rows(delivery.frame) == _rows(frame)
                assert delivery.frame.format.name == fmt and delivery.buffer is not None
                assert delivery.buffer.backend == pydmabuf.backend
                delivery.release()
            assert consumer.caps is not None and producer.caps == consumer.caps
        # the consumer went away holding nothing: every frame is free again
        producer.poll(0.1)
        frames = {id(producer.acquire(timeout=5))}
        assert len(frames) == 1
    assert open_fds() == before


def test_eos_and_a_consumer_that_dies_holding_frames(path: str) -> None:
    with GstProducer(path, frame_layout=(32, 16, "XRGB8888"), count=2) as producer:
        consumer = GstConsumer.connect(path, timeout=5)
        producer.wait_for_sources(1, timeout=5)
        for _ in range(2):
            frame = producer.acquire(timeout=5)
            producer.submit(frame)
        held = [consumer.receive(timeout=5) for _ in range(2)]
        assert all(d is not None for d in held)
        with pytest.raises(pydmabuf.TimeoutError):
            producer.acquire(timeout=0.2)  # both held by the consumer
        consumer.close()  # dies without releasing: the producer loses nothing
        producer.acquire(timeout=5)
        for delivery in held:
            assert delivery is not None
            delivery.release()  # after the connection: only closes
        second = GstConsumer.connect(path, timeout=5)
        producer.wait_for_sources(1, timeout=5)
    assert second.receive(timeout=5) is None and "EOS" in (second.end_reason or "")
    second.close()


def test_protocol_argument() -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError, match="protocol"):
        Consumer.connect("/nonexistent", protocol="rtsp")
    with pytest.raises(pydmabuf.InvalidArgumentError, match="protocol"):
        Producer("/nonexistent", protocol="rtsp")
    with pytest.raises(pydmabuf.InvalidArgumentError, match="max_pending"):
        Producer("/nonexistent", protocol="gstreamer", max_pending=1)


# --- hostile sinks and sources -----------------------------------------------------------

def _fake_sink(path: str, script: Callable[[socket.socket], None]) -> Iterator[None]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            script(conn)
            time.sleep(1.0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    thread.join(5)
    listener.close()


def _send(conn: socket.socket, kind: int, payload: bytes, fds: tuple[int, ...] = (), close: tuple[int, ...] = ()
          ) -> None:
    """Send a message with ``fds``; then close them and ``close`` (the fake sink's own copies)."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        conn.sendmsg([wire.HEADER.pack(kind, len(payload)) + payload], anc)
    finally:
        for fd in (*fds, *close):
            os.close(fd)


def _pipe_as_memory(conn: socket.socket) -> None:
    _send(conn, wire.CAPS, (CAPS + "\0").encode())
    r, w = os.pipe()
    _send(conn, wire.NEW_BUFFER, _buffer_message(1), (r,), (w,))


CAPS = "video/x-raw, format=(string)NV12, width=(int)64, height=(int)48"


def _buffer_message(n_memory: int, size: int = 64 * 72, video_meta: wire.VideoMeta | None = None) -> bytes:
    return wire.new_buffer_payload(1, 0, 0, wire.MEMORY_FD, [wire.Memory(size, 0)] * n_memory, video_meta)


def _memfd(size: int) -> int:
    fd = os.memfd_create("sink", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    return fd


HOSTILE: dict[str, Callable[[socket.socket], None]] = {
    "fds with caps": lambda c: _send(c, wire.CAPS, (CAPS + "\0").encode(), (os.open("/dev/null", os.O_RDONLY),)),
    "fd count": lambda c: (_send(c, wire.CAPS, (CAPS + "\0").encode()), _send(c, wire.NEW_BUFFER, _buffer_message(2),
                                                                             (_memfd(64 * 72),))),
    "a pipe as memory": _pipe_as_memory,
    "memory past its fd": lambda c: (_send(c, wire.CAPS, (CAPS + "\0").encode()),
                                     _send(c, wire.NEW_BUFFER, _buffer_message(1, size=1 << 20), (_memfd(4096),))),
    "plane past the memories": lambda c: (_send(c, wire.CAPS, (CAPS + "\0").encode()), _send(
        c, wire.NEW_BUFFER, _buffer_message(1, video_meta=wire.VideoMeta(23, 64, 48, (0, 1 << 30), (64, 64))),
        (_memfd(64 * 72),))),
    "release from the sink": lambda c: c.sendall(wire.release_message(1)),
    "caps without NUL": lambda c: _send(c, wire.CAPS, b"video/x-raw"),
    "huge message": lambda c: c.sendall(wire.HEADER.pack(wire.CAPS, 1 << 30)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_sink(path: str, case: str) -> None:
    before = open_fds()
    gen = _fake_sink(path, HOSTILE[case])
    next(gen)
    with GstConsumer.connect(path, timeout=5) as consumer, pytest.raises(ProtocolError):
        consumer.receive(timeout=5)
    assert consumer.end_reason is not None and "protocol" in consumer.end_reason
    next(gen, None)
    assert open_fds() == before  # every fd the sink sent was closed


def test_a_stalled_sink_is_bounded(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gstreamer, "MESSAGE_REST_TIMEOUT", 0.3)
    gen = _fake_sink(path, lambda c: c.sendall(wire.HEADER.pack(wire.CAPS, 100) + b"video"))
    next(gen)
    with GstConsumer.connect(path, timeout=5) as consumer:
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="stopped inside a message"):
            consumer.receive(timeout=5)
        assert time.monotonic() - started < 3
    next(gen, None)


def test_a_source_that_sends_garbage_is_dropped(path: str) -> None:
    with GstProducer(path, frame_layout=(32, 16, "XRGB8888"), count=1) as producer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        producer.wait_for_sources(1, timeout=5)
        sock.sendall(wire.caps_message("nonsense"))
        deadline = time.monotonic() + 5
        while producer.sources and time.monotonic() < deadline:
            producer.poll(0.05)
        assert producer.sources == 0
        sock.close()


# --- who may connect (the tests run as root; a forked child drops to nobody) ----------------

NOBODY = 65534


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a child that drops to nobody")
def test_consumer_refuses_a_sink_of_another_uid() -> None:
    path = f"@pydmabuf-gst-trust-{os.getpid()}"
    control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def squatter() -> int:  # a "unixfdsink" run by nobody, serving caps
        control.close()
        _as_nobody()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0" + path[1:])
        listener.listen(2)
        theirs.send(b"listening")
        listener.settimeout(20)
        for _ in range(2):
            conn, _ = listener.accept()
            with contextlib.suppress(OSError):  # the first one is refused and closed at once
                conn.sendall(wire.caps_message(CAPS) + wire.eos_message())
            conn.close()
        return 0

    pid = fork(squatter)
    theirs.close()
    try:
        control.settimeout(10)
        assert control.recv(16) == b"listening"
        with pytest.raises(pydmabuf.PermissionDeniedError, match=rf"uid {NOBODY}.*allow_uids=\[{NOBODY}\]"):
            GstConsumer.connect(path, timeout=5)
        with GstConsumer.connect(path, timeout=5, allow_uids=[NOBODY]) as consumer:  # trusted on request
            assert consumer.receive(timeout=10) is None and consumer.caps == CAPS
        assert join(pid) == 0
    finally:
        control.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a child that drops to nobody")
def test_producer_admits_sources_of_its_uid_or_allowed_ones_only() -> None:
    path = f"@pydmabuf-gst-admit-{os.getpid()}"

    def nobody_source() -> int:
        _as_nobody()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect("\0" + path[1:])
        data = sock.recv(4096)  # refused: closed at once, no caps
        return 0 if data == b"" else 3

    with GstProducer(path, frame_layout=(32, 16, "XRGB8888"), count=1) as producer:
        pid = fork(nobody_source)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            producer.poll(0.05)
            assert producer.sources == 0
        assert join(pid) == 0
    with GstProducer(path, frame_layout=(32, 16, "XRGB8888"), count=1, allow_uids=[NOBODY]) as producer:
        def allowed() -> int:
            _as_nobody()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect("\0" + path[1:])
            return 0 if sock.recv(8)[:4] == struct.pack("=I", wire.CAPS) else 4

        pid = fork(allowed)
        producer.wait_for_sources(1, timeout=10)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            producer.poll(0.05)
        assert join(pid) == 0
