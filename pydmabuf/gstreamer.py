"""Frames to and from GStreamer processes over its ``unixfdsink``/``unixfdsrc`` protocol.

``GstConsumer.connect(path)`` (also ``channel.Consumer.connect(path,
protocol="gstreamer")``) receives what ``... ! unixfdsink socket-path=PATH`` serves:
each buffer as a :class:`GstDelivery` whose ``frame`` is a :class:`pydmabuf.Frame` over
the memories GStreamer sent (dma-bufs or memfds, each fd classified as
:func:`pydmabuf.recv` does), laid out by the buffer's GstVideoMeta or, without one,
GStreamer's default layout for the caps' format; ``release()`` hands the buffer back
(RELEASE_BUFFER), ``pts``/``dts``/``duration`` are GStreamer's (CLOCK_MONOTONIC ns,
None for GST_CLOCK_TIME_NONE). The wire format is :mod:`pydmabuf.gst_wire`.

The same trust rules as the channel apply: the sink must run as this uid, root or an
``allow_uids`` uid (SO_PEERCRED); every wait is bounded; a malformed message ends the
stream with ProtocolError and closes every fd it brought.
"""

from __future__ import annotations

import array
import contextlib
import errno as E
import logging
import os
import select
import socket
import time
from collections.abc import Iterable, Sequence
from types import TracebackType

from . import gst_wire as wire
from .backends import buffer_backend
from .buffer import Buffer, Mapping, new_buffer
from .credentials import check_peer, id_set, peer_credentials
from .errors import Error, PermissionDeniedError, closed, error, invalid, timed_out
from .formats import Format, as_format
from .frame import Frame, Plane
from .heap import Heap
from .share import ProtocolError
from .uapi.wait import deadline, expired, remaining_ms

log = logging.getLogger("pydmabuf.gstreamer")

MESSAGE_REST_TIMEOUT = 5.0  # seconds for the rest of a message once it has started
_CMSG_SPACE = socket.CMSG_SPACE(wire.MAX_MEMORIES * 4)
_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC
_SEND_NOWAIT = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


def _none(value: int) -> int | None:
    return None if value == wire.CLOCK_TIME_NONE else value


def _ru(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def default_layout(gst_format: str, width: int, height: int) -> list[tuple[int, int]] | None:
    """GStreamer's default (offset, stride) per plane for ``gst_format`` (what
    ``gst_video_info_set_format`` computes and a buffer without GstVideoMeta uses), or
    None for a format this table does not know."""
    w, h = width, height
    if gst_format in ("BGRx", "RGBx", "xRGB", "xBGR", "BGRA", "RGBA", "ARGB", "ABGR"):
        return [(0, w * 4)]
    if gst_format in ("RGB", "BGR"):
        return [(0, _ru(w * 3, 4))]
    if gst_format in ("RGB16", "BGR16", "YUY2", "UYVY", "YVYU", "VYUY"):
        return [(0, _ru(w * 2, 4))]
    if gst_format == "GRAY8":
        return [(0, _ru(w, 4))]
    if gst_format in ("NV12", "NV21"):
        stride = _ru(w, 4)
        return [(0, stride), (stride * _ru(h, 2), stride)]
    if gst_format in ("NV16", "NV61"):
        stride = _ru(w, 4)
        return [(0, stride), (stride * h, stride)]
    if gst_format in ("I420", "YV12"):
        luma, chroma = _ru(w, 4), _ru(_ru(w, 2) // 2, 4)
        u = luma * _ru(h, 2)
        return [(0, luma), (u, chroma), (u + chroma * (_ru(h, 2) // 2), chroma)]
    if gst_format == "Y42B":
        luma, chroma = _ru(w, 4), _ru(w, 8) // 2
        return [(0, luma), (luma * h, chroma), (luma * h + chroma * h, chroma)]
    if gst_format == "Y444":
        stride = _ru(w, 4)
        return [(0, stride), (stride * h, stride), (2 * stride * h, stride)]
    if gst_format == "P010_10LE":
        stride = _ru(w * 2, 4)
        return [(0, stride), (stride * _ru(h, 2), stride)]
    return None


class GstDelivery:
    """One buffer from a GStreamer sink: ``frame`` (a Frame over the buffer's memories,
    None when the caps are not raw video pydmabuf can lay out), ``buffers`` (one per
    GstMemory), ``caps`` (the caps string it came under), ``pts``/``dts``/``duration``
    (ns; None for none) and ``flags`` (GstBufferFlags). ``map()`` maps the first memory
    read-only; ``release()`` (or ``with delivery:``) closes everything and hands the
    buffer back to the sink."""

    __slots__ = {
        "_consumer": "The GstConsumer to hand it back to; None once released.",
        "_id": "The sink's id of the buffer, sent back in RELEASE_BUFFER.",
        "_map": "The read-only mapping ``map()`` made, or None.",
        "buffer": "The first memory's :class:`pydmabuf.Buffer`, or None for a buffer without memories.",
        "buffers": "One :class:`pydmabuf.Buffer` per GstMemory, in order (a tuple); closed once released.",
        "caps": "The caps string the buffer came under.",
        "dts": "GStreamer's decoding timestamp in nanoseconds, or None (GST_CLOCK_TIME_NONE).",
        "duration": "GStreamer's duration in nanoseconds, or None (GST_CLOCK_TIME_NONE).",
        "flags": "The buffer's GstBufferFlags, as an int.",
        "frame": "A :class:`pydmabuf.Frame` over the memories, laid out by the GstVideoMeta or GStreamer's "
        "default layout; None when the caps are not raw video pydmabuf can lay out.",
        "pts": "GStreamer's presentation timestamp in nanoseconds, or None (GST_CLOCK_TIME_NONE).",
        "seq": "This consumer's count of the buffers received: 1, 2, ... in order of arrival.",
    }

    def __init__(self, consumer: GstConsumer, message: wire.NewBuffer, buffers: list[Buffer], frame: Frame | None,
                 caps: str, seq: int) -> None:
        self._consumer: GstConsumer | None = consumer
        self._id = message.id
        self._map: Mapping | None = None
        self.buffers = tuple(buffers)
        self.buffer = buffers[0] if buffers else None
        self.frame = frame
        self.caps = caps
        self.pts, self.dts, self.duration = _none(message.pts), _none(message.dts), _none(message.duration)
        self.flags = message.flags
        self.seq = seq

    def map(self) -> Mapping:
        """The read-only mapping of the first memory's buffer (made once)."""
        if self._consumer is None:
            raise closed("GstDelivery")
        if self.buffer is None:
            raise error(E.ENODATA, "GstDelivery.map", "this GStreamer buffer has no memory")
        m = self._map
        if m is None:
            m = self._map = self.buffer.map(write=False)
        return m

    @property
    def released(self) -> bool:
        """True once ``release()`` has run."""
        return self._consumer is None

    def release(self) -> None:
        """Close the mapping, frame and buffers, and send RELEASE_BUFFER. Idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.frame is not None:
            self.frame.close()
        for buf in self.buffers:
            buf.close()
        consumer._release(self._id)

    def __enter__(self) -> GstDelivery:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_consumer", None) is not None:
            with contextlib.suppress(Exception):
                self.release()

    def __repr__(self) -> str:
        what = ("released" if self._consumer is None else repr(self.frame) if self.frame
                else f"{len(self.buffers)} memories")
        return f"<GstDelivery seq={self.seq} pts={self.pts} {what}>"


class GstConsumer:
    """The receiving end of a GStreamer ``unixfdsink``: ``receive()`` returns
    :class:`GstDelivery` objects, then None at end of stream (``end_reason`` says why).
    For one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = None
        if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise TypeError("GstConsumer() needs a connected AF_UNIX SOCK_STREAM socket")
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._out = bytearray()  # releases not yet sent (the socket was full)
        self._seq = 0
        self.caps: str | None = None
        self.end_reason: str | None = None

    @classmethod
    def connect(cls, path: str, *, timeout: float | None = 5.0, allow_uids: Iterable[int] | None = None
                ) -> GstConsumer:
        """Connect to ``unixfdsink socket-path=PATH`` (``@name``: an abstract socket, as
        ``socket-type=abstract``), retrying until it listens or ``timeout``
        (TimeoutError). The sink must run as this process's uid, root, or a uid in
        ``allow_uids``; else PermissionDeniedError."""
        address = "\0" + path[1:] if path.startswith("@") else path
        until = deadline(timeout, "GstConsumer.connect")
        uids = id_set(allow_uids, "allow_uids")
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(address)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if expired(until):
                    raise timed_out(f"connecting to GStreamer's unixfdsink at {path!r} ({exc.strerror})") from None
                time.sleep(0.005)
                continue
            except OSError as exc:
                sock.close()
                raise error(exc.errno or E.EINVAL, f"GstConsumer.connect({path!r})") from None
            try:
                check_peer(sock, allow_uids=uids, allow_root=True)
            except PermissionDeniedError:
                creds = peer_credentials(sock)
                sock.close()
                raise PermissionDeniedError(
                    E.EACCES, f"GstConsumer.connect: the sink at {path!r} (pid {creds.pid}) runs as uid "
                    f"{creds.uid}, not as this process's uid {os.geteuid()} or root (pass "
                    f"allow_uids=[{creds.uid}] to trust it)") from None
            return cls(sock)

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
        return self._sock is None

    def fileno(self) -> int:
        """The socket's fd (for poll/select); ClosedError after ``close()``."""
        if self._sock is None:
            raise closed("GstConsumer")
        return self._sock.fileno()

    def receive(self, timeout: float | None = None) -> GstDelivery | None:
        """The next buffer; None once the stream has ended (``end_reason``).
        TimeoutError if none starts within ``timeout`` seconds (None: wait forever).
        ProtocolError (the stream then ends) for anything that is not the protocol."""
        sock = self._sock
        if sock is None:
            raise closed("GstConsumer")
        until = deadline(timeout, "GstConsumer.receive")
        while self.end_reason is None:
            self._flush()
            if not self._poller.poll(remaining_ms(until)):
                if expired(until):
                    raise timed_out("GstConsumer.receive")
                continue
            try:
                kind, payload, fds = self._read_message(sock)
            except EOFError:
                self.end_reason = "the sink went away without ending the stream (crashed, killed or stopped)"
                return None
            except ProtocolError as exc:
                self.end_reason = f"protocol error: {exc.strerror}"
                raise
            try:
                delivery = self._handle(kind, payload, fds)
            except BaseException as exc:
                if isinstance(exc, ProtocolError):
                    self.end_reason = f"protocol error: {exc.strerror}"
                raise
            if delivery is not None:
                return delivery
        return None

    def _read_message(self, sock: socket.socket) -> tuple[int, bytes, list[int]]:
        fds: list[int] = []
        try:
            try:
                head, anc, flags, _ = sock.recvmsg(wire.HEADER.size, _CMSG_SPACE, _RECV_FLAGS)
            except ConnectionResetError:  # the sink closed with our releases unread: it is gone
                raise EOFError from None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += array.array("i", data[:len(data) - len(data) % 4]).tolist()
            if not head:
                raise EOFError
            if flags & socket.MSG_CTRUNC:
                raise wire.protocol_error("more fds than a buffer's 16 memories")
            until = time.monotonic() + MESSAGE_REST_TIMEOUT
            head = self._read_until(sock, head, wire.HEADER.size, until)
            kind, size = wire.HEADER.unpack(head)
            if size > wire.MAX_PAYLOAD:
                raise wire.protocol_error(f"a message of {size} bytes")
            payload = self._read_until(sock, b"", size, until)
            return kind, payload, fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    @staticmethod
    def _read_until(sock: socket.socket, data: bytes, need: int, until: float) -> bytes:
        poller = None
        while len(data) < need:
            try:
                more = sock.recv(need - len(data), socket.MSG_DONTWAIT)
            except BlockingIOError:
                if poller is None:
                    poller = select.poll()
                    poller.register(sock.fileno(), select.POLLIN)
                if not poller.poll(max(0, int((until - time.monotonic()) * 1000))) and time.monotonic() >= until:
                    raise wire.protocol_error(f"the sink stopped inside a message ({len(data)} of {need} bytes "
                                              f"for {MESSAGE_REST_TIMEOUT:g} s)") from None
                continue
            except ConnectionResetError:
                raise EOFError from None
            if not more:
                if data or need:
                    raise wire.protocol_error("the connection closed inside a message")
                raise EOFError
            data += more
        return data

    def _handle(self, kind: int, payload: bytes, fds: list[int]) -> GstDelivery | None:
        if kind != wire.NEW_BUFFER and fds:
            for fd in fds:
                os.close(fd)
            raise wire.protocol_error(f"fds came with a message of type {kind}")
        if kind == wire.CAPS:
            self.caps = wire.parse_caps(payload)
            return None
        if kind == wire.EOS:
            self.end_reason = "the sink ended the stream (EOS)"
            return None
        if kind == wire.RELEASE_BUFFER:
            raise wire.protocol_error("RELEASE_BUFFER from the sink")
        if kind != wire.NEW_BUFFER:
            return None  # unknown types are skipped, as GStreamer skips them
        return self._new_buffer(payload, fds)

    def _new_buffer(self, payload: bytes, fds: list[int]) -> GstDelivery:
        try:
            message = wire.parse_new_buffer(payload)
            if len(fds) != len(message.memories):
                raise wire.protocol_error(f"{len(fds)} fds for {len(message.memories)} memories")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        buffers: list[Buffer] = []
        try:
            for memory in message.memories:
                fd = fds.pop(0)
                try:
                    backend, real_size = buffer_backend(fd)
                except Error as exc:
                    os.close(fd)
                    raise wire.protocol_error(f"a memory's fd is not a buffer: {exc.strerror}") from None
                if memory.size + memory.offset > real_size:
                    os.close(fd)
                    raise wire.protocol_error(f"a memory of {memory.size} bytes at {memory.offset} does not fit "
                                              f"its fd ({real_size} bytes)")
                buffers.append(new_buffer(fd, real_size, backend))
            frame = self._frame(message, buffers)
        except BaseException:
            for fd in fds:
                os.close(fd)
            for buf in buffers:
                buf.close()
            self._release(message.id)  # hand it back: the sink must not hold it forever
            raise
        self._seq += 1
        return GstDelivery(self, message, buffers, frame, self.caps or "", self._seq)

    def _frame(self, message: wire.NewBuffer, buffers: list[Buffer]) -> Frame | None:
        """A Frame over ``buffers`` as the caps and the GstVideoMeta lay it out, or None
        when the caps are not raw video pydmabuf knows."""
        fields = wire.parse_video_caps(self.caps or "")
        if fields is None or not buffers:
            return None
        try:
            width, height = int(fields["width"]), int(fields["height"])
        except (KeyError, ValueError):
            return None
        gst_format = fields.get("format", "")
        modifier = 0
        if gst_format == "DMA_DRM":
            fourcc, _, mod = fields.get("drm-format", "").partition(":")
            try:
                fmt = Format.from_name(fourcc)
                modifier = int(mod, 16) if mod else 0
            except (Error, ValueError):
                return None
            gst_format = ""
        else:
            try:
                fmt = Format.from_name(gst_format)
            except Error:
                return None
        starts = []  # where each memory starts in the buffer's memories laid end to end
        total = 0
        for memory in message.memories:
            starts.append(total)
            total += memory.size
        if message.video_meta is not None:
            layout = list(zip(message.video_meta.offsets, message.video_meta.strides, strict=True))
        else:
            found = default_layout(gst_format, width, height) if gst_format else None
            if found is None:
                return None
            layout = found
        planes = []
        for offset, stride in layout:
            index = max(i for i, start in enumerate(starts) if start <= offset) if offset < total else -1
            if index < 0:
                raise wire.protocol_error(f"a plane at {offset} lies past the buffer's {total} bytes")
            planes.append(Plane(index, message.memories[index].offset + offset - starts[index], stride))
        try:
            return Frame(width, height, fmt, buffers, planes, modifier=modifier, own=False)
        except Error as exc:
            raise wire.protocol_error(f"the caps and layout do not fit the memories: {exc.strerror}") from None

    def _release(self, buffer_id: int) -> None:
        if self._sock is None or self.end_reason is not None:
            return
        self._out += wire.release_message(buffer_id)
        self._flush()

    def _flush(self) -> None:
        sock = self._sock
        while self._out and sock is not None:
            try:
                sent = sock.send(self._out, _SEND_NOWAIT)
            except BlockingIOError:
                return  # the sink is not reading: the rest goes with the next receive()
            except (BrokenPipeError, ConnectionResetError):
                self._out.clear()
                return
            del self._out[:sent]

    def close(self) -> None:
        """Close the connection (the sink then releases whatever this consumer held)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> GstConsumer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# GstVideoFormat's numbers (gst/video/video-format.h) for the formats a GstProducer
# describes in its GstVideoMeta; tests/consumers checks them against GStreamer's.
GST_VIDEO_FORMATS = {
    "I420": 2, "YV12": 3, "YUY2": 4, "UYVY": 5, "RGBx": 7, "BGRx": 8, "xRGB": 9, "xBGR": 10, "RGBA": 11,
    "BGRA": 12, "ARGB": 13, "ABGR": 14, "RGB": 15, "BGR": 16, "Y42B": 18, "YVYU": 19, "Y444": 20, "NV12": 23,
    "NV21": 24, "RGB16": 29, "BGR16": 30, "NV16": 51, "NV24": 52, "NV61": 60, "P010_10LE": 62, "VYUY": 64,
}  # fmt: skip


def gst_format_name(fmt: Format) -> str:
    """GStreamer's name for a DRM format (``XRGB8888`` -> ``BGRx``); InvalidArgumentError
    for one GStreamer has no linear name for."""
    from .uapi.format_names import GSTREAMER

    for gst, drm in GSTREAMER.items():
        if drm == fmt.name and gst in GST_VIDEO_FORMATS:
            return gst
    raise invalid(f"GStreamer has no video format for {fmt.name} that pydmabuf can describe "
                  f"(known: {', '.join(sorted(GST_VIDEO_FORMATS))})")


def default_frames(width: int, height: int, format: Format | str | int, *, count: int = 1) -> list[Frame]:
    """``count`` new frames laid out as GStreamer lays out a buffer without GstVideoMeta
    (one object; ``default_layout``'s offsets and strides). unixfdsrc drops the meta
    of the first buffer it gets while GstVideoMeta is not yet registered in its
    process (GStreamer 1.24-1.26), so frames that need no meta arrive right from the
    first one; a GstProducer allocates these."""
    fmt = as_format(format)
    layout = default_layout(gst_format_name(fmt), width, height)
    if layout is None:
        raise invalid(f"no GStreamer default layout known for {fmt.name}")
    size = max(offset + stride * plane.height(height) for (offset, stride), plane in zip(layout, fmt.planes,
                                                                                         strict=True))
    frames: list[Frame] = []
    with Heap("system") as heap:
        try:
            for _ in range(count):
                buf = heap.allocate(size)
                try:
                    frames.append(Frame(width, height, fmt, [buf], [Plane(0, o, s) for o, s in layout]))
                except BaseException:
                    buf.close()
                    raise
        except BaseException:
            for frame in frames:
                frame.close()
            raise
    return frames


class _Client:
    __slots__ = ("held", "inbox", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.held: dict[int, int] = {}  # buffer id -> frame index
        self.out = bytearray()  # the unsent rest of a message (fds went with its first byte)
        self.inbox = b""  # the start of a release split across reads


class GstProducer:
    """Serves frames to GStreamer's ``unixfdsrc socket-path=PATH`` (any number of them):
    ``acquire()`` a free frame, draw into it, ``submit()`` it; each source gets the caps
    first, then every submitted frame as NEW_BUFFER with one fd per frame object
    (dma-bufs, or memfds on the fallback) and a GstVideoMeta with the frame's offsets
    and pitches, and hands it back with RELEASE_BUFFER. A frame is free again once every
    source has released it. ``close()`` sends EOS. For one thread at a time.

    ``frames`` are yours to keep open; with ``frame_layout=(width, height, format)`` the
    producer allocates ``count`` frames in GStreamer's default layout
    (:func:`default_frames`) and closes them at close.
    Sources must run as this uid, root, a uid in ``allow_uids`` or a gid in ``allow_gids``
    (others are closed at once). A source that does not read is skipped for frames until
    it catches up; one that sends anything but RELEASE_BUFFER is dropped."""

    def __init__(self, path: str, frames: Sequence[Frame] | None = None, *,
                 frame_layout: tuple[int, int, Format | str | int] | None = None, count: int = 4,
                 framerate: tuple[int, int] = (30, 1), allow_uids: Iterable[int] | None = None,
                 allow_gids: Iterable[int] | None = None) -> None:
        self._listener: socket.socket | None = None
        self._own = frames is None
        if frames is None:
            if frame_layout is None:
                raise invalid("GstProducer needs frames=[...] or frame_layout=(width, height, format)")
            frames = default_frames(*frame_layout, count=count)
        self._frames = list(frames)
        if not self._frames or any(not isinstance(f, Frame) for f in self._frames):
            raise invalid("GstProducer frames: a non-empty sequence of pydmabuf.Frame")
        first = self._frames[0]
        self._gst_format = gst_format_name(first.format)
        if any((f.width, f.height, f.format) != (first.width, first.height, first.format) for f in self._frames):
            raise invalid("GstProducer frames must share one size and format (one caps)")
        numerator, denominator = framerate
        self.caps = (f"video/x-raw, format=(string){self._gst_format}, width=(int){first.width}, "
                     f"height=(int){first.height}, framerate=(fraction){numerator}/{denominator}")
        self._uids = id_set(allow_uids, "allow_uids")
        self._gids = id_set(allow_gids, "allow_gids")
        self._path = path
        self._clients: dict[int, _Client] = {}
        self._submitted: set[int] = set()  # frame indexes sent and not yet released by all
        self._next_id = 1
        self._listener = self._listen(path)
        self._poller = select.poll()
        self._poller.register(self._listener, select.POLLIN)

    @staticmethod
    def _listen(path: str) -> socket.socket:
        address = "\0" + path[1:] if path.startswith("@") else path
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if not path.startswith("@"):
                os.fchmod(listener.fileno(), 0o600)
            listener.bind(address)
            listener.listen(16)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            hint = ("another producer listens there, or a socket file outlived its producer: remove it"
                    if exc.errno == E.EADDRINUSE else None)
            raise error(exc.errno or E.EINVAL, f"GstProducer: listening on {path!r}", hint) from None
        return listener

    @property
    def frames(self) -> list[Frame]:
        """The frames it serves, in order."""
        return list(self._frames)

    @property
    def sources(self) -> int:
        """How many GStreamer sources are connected."""
        return len(self._clients)

    def _held(self) -> set[int]:
        return {index for client in self._clients.values() for index in client.held.values()}

    def poll(self, timeout: float | None = 0) -> None:
        """Accept sources and read their releases, waiting up to ``timeout`` s for news."""
        if self._listener is None:
            raise closed("GstProducer")
        until = deadline(timeout, "GstProducer.poll")
        for fd, events in self._poller.poll(remaining_ms(until)):
            if fd == self._listener.fileno():
                self._accept()
            elif fd in self._clients:
                self._read(self._clients[fd], events)
        self._submitted &= self._held()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE...: the next poll tries again
                log.warning("GstProducer: accept failed: %s", exc)
                return
            sock.setblocking(False)
            try:
                check_peer(sock, allow_uids=self._uids, allow_gids=self._gids, allow_root=True)
            except PermissionDeniedError as exc:
                log.warning("GstProducer: refused a source: %s", exc.strerror)
                sock.close()
                continue
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._poller.register(sock, select.POLLIN)
            self._send(client, wire.caps_message(self.caps), [])

    def _read(self, client: _Client, events: int) -> None:
        # A source sends only RELEASE_BUFFER (16 bytes each); anything else drops it.
        try:
            data = client.sock.recv(64 * 1024, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        pending = client.inbox + data
        step = wire.HEADER.size + wire.RELEASE.size
        while len(pending) >= step:
            kind, size = wire.HEADER.unpack_from(pending)
            if kind != wire.RELEASE_BUFFER or size != wire.RELEASE.size:
                log.warning("GstProducer: a source sent message type %d; dropping it", kind)
                self._drop(client)
                return
            client.held.pop(wire.RELEASE.unpack_from(pending, wire.HEADER.size)[0], None)
            pending = pending[step:]
        client.inbox = pending  # a release split across reads (rare on a local socket): its start

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(client.sock)
        client.sock.close()

    def _send(self, client: _Client, message: bytes, fds: list[int]) -> bool:
        """Send, or buffer the rest after a partial send; False (nothing sent) when the
        source still has an unsent rest or its socket is full."""
        if client.out:
            self._flush(client)
            if client.out:
                return False
        try:
            if fds:
                sent = client.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                                           _SEND_NOWAIT)
            else:
                sent = client.sock.send(message, _SEND_NOWAIT)
        except BlockingIOError:
            return False
        except OSError:
            self._drop(client)
            return False
        client.out += message[sent:]
        return True

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out, _SEND_NOWAIT)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        del client.out[:sent]

    def wait_for_sources(self, n: int = 1, timeout: float | None = None) -> None:
        """Wait until ``n`` sources are connected (TimeoutError after ``timeout`` s)."""
        until = deadline(timeout, "GstProducer.wait_for_sources")
        while len(self._clients) < n:
            if expired(until):
                raise timed_out(f"GstProducer.wait_for_sources({n}): {len(self._clients)} connected")
            self.poll(max(0.0, min(0.05, until - time.monotonic())) if until is not None else 0.05)

    def acquire(self, timeout: float | None = None) -> Frame:
        """A frame no source holds (TimeoutError after ``timeout`` s)."""
        until = deadline(timeout, "GstProducer.acquire")
        while True:
            self.poll(0)
            busy = self._held() | self._submitted
            for index, frame in enumerate(self._frames):
                if index not in busy:
                    return frame
            if expired(until):
                raise timed_out("GstProducer.acquire: every frame is held by a source")
            self.poll(max(0.0, min(0.05, until - time.monotonic())) if until is not None else 0.05)

    def submit(self, frame: Frame, *, pts: int | None = None, duration: int | None = None) -> int:
        """Send ``frame`` to every source that keeps up; how many it went to. ``pts``
        defaults to now (CLOCK_MONOTONIC ns, as unixfdsink stamps)."""
        if self._listener is None:
            raise closed("GstProducer")
        index = next((i for i, f in enumerate(self._frames) if f is frame), None)
        if index is None:
            raise invalid("submit() takes one of this producer's frames")
        self.poll(0)
        objects = frame.objects
        kinds = {obj.backend for obj in objects}
        memory_type = wire.MEMORY_DMABUF if kinds == {"kernel"} else wire.MEMORY_FD
        ends = [p.offset + frame.plane_extent(i)[0] * p.pitch for i, p in enumerate(frame.planes)]
        sizes = [max(end for p, end in zip(frame.planes, ends, strict=True) if p.object_index == k)
                 for k in range(len(objects))]
        starts = [sum(sizes[:k]) for k in range(len(objects))]
        meta = wire.VideoMeta(GST_VIDEO_FORMATS[self._gst_format], frame.width, frame.height,
                              tuple(starts[p.object_index] + p.offset for p in frame.planes),
                              tuple(p.pitch for p in frame.planes))
        sent = 0
        for client in list(self._clients.values()):
            buffer_id = self._next_id
            self._next_id += 1
            payload = wire.new_buffer_payload(
                buffer_id, time.monotonic_ns() if pts is None else pts,
                wire.CLOCK_TIME_NONE if duration is None else duration, memory_type,
                [wire.Memory(size, 0) for size in sizes], meta)
            fds = [obj.fileno() for obj in objects]
            if self._send(client, wire.header(wire.NEW_BUFFER, payload) + payload, fds):
                client.held[buffer_id] = index
                sent += 1
        if sent:
            self._submitted.add(index)
        return sent

    def close(self) -> None:
        """Send EOS to every source, stop listening, and close frames it allocated."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        for client in list(self._clients.values()):
            with contextlib.suppress(OSError):
                self._flush(client)
                client.sock.send(wire.eos_message(), _SEND_NOWAIT)
            self._drop(client)
        listener.close()
        if not self._path.startswith("@"):
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        if self._own:
            for frame in self._frames:
                frame.close()

    def __enter__(self) -> GstProducer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
