"""A producer/consumer channel over a Unix SOCK_SEQPACKET socket.

The producer owns a pool of buffers. ``acquire`` gives it a free one to fill,
``submit`` sends it (with an optional fence that signals when the contents are
ready) to every connected consumer, and the buffer comes back to the pool once
every consumer it went to has released it (GStreamer's unixfdsink model). A
consumer that disconnects, even by ``kill -9``, releases everything it held: the
kernel closes its socket and the producer sees the hangup. A producer that goes
away ends the stream: consumers get the frames already queued, then ``None`` from
``receive``; the frames they hold stay valid and mapped, since they own the fds.

Messages: producer -> consumer is :mod:`pydmabuf.share` (buffer [, fence]) with
data ``b"F" + seq`` (+ the caller's ``meta``), or ``b"E"`` for end of stream;
consumer -> producer is ``b"R" + seq`` (release) or ``b"B"`` (goodbye).
"""

from __future__ import annotations

import collections
import contextlib
import errno as E
import logging
import math
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from . import share
from .buffer import Buffer, Mapping
from .errors import closed, invalid, timed_out
from .heap import Heap
from .syncfile import SyncFile

__all__ = ["Consumer", "Event", "Frame", "Producer"]

log = logging.getLogger("pydmabuf.channel")
_SEQ = struct.Struct("<Q")
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL
_SEND = int(socket.MSG_NOSIGNAL)
_RELEASE = _FRAME = struct.Struct("<cQ")  # b"R" or b"F", then the frame's seq
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError)
_SERVICE_INTERVAL = 0.005  # s: how stale acquire() may let connection state get


@dataclass(frozen=True)
class Event:
    """Something the producer noticed about a consumer. ``kind`` is "connected" or
    "disconnected"; ``clean`` is False when the consumer went away without saying
    goodbye (crashed or killed); ``released`` counts the frames that freed."""

    kind: str
    consumer: int
    pid: int
    clean: bool = True
    released: int = 0

    def __str__(self) -> str:
        if self.kind == "connected":
            return f"consumer {self.consumer} (pid {self.pid}) connected"
        how = "closed" if self.clean else "died (no goodbye)"
        return (f"consumer {self.consumer} (pid {self.pid}) {how}; "
                f"released the {self.released} frame(s) it held")


def _address(path: str) -> str:
    # "@name" is the abstract namespace (no file, gone with the socket), as in systemd.
    return "\0" + path[1:] if path.startswith("@") else path


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0 or math.isnan(timeout):
        raise invalid("timeout must be >= 0 or None")
    return time.monotonic() + timeout


def _remaining_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


class _Peer:
    __slots__ = ("held", "id", "pid", "sock")

    def __init__(self, sock: socket.socket, ident: int) -> None:
        self.sock = sock
        self.id = ident
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid: int = struct.unpack("3i", creds)[0]
        self.held: set[int] = set()  # seqs sent and not yet released


class Producer:
    """Serves frames to consumers that ``Consumer.connect(path)``; a ``path`` starting
    with "@" is an abstract socket name (no file to clean up).

    Give it ``buffers`` to own, or ``size`` and ``count`` to allocate from ``heap``
    (default: the "system" heap of the default backend). It owns and closes them.
    Single-threaded: every call services connections and releases first.
    """

    def __init__(self, path: str, *, size: int = 0, count: int = 4, heap: Heap | None = None,
                 buffers: Sequence[Buffer] | None = None) -> None:
        self._listener: socket.socket | None = None
        self._buffers: list[Buffer] = []
        self._maps: list[Mapping | None] = []
        self._peers: dict[int, _Peer] = {}
        self._frames: dict[int, list[int]] = {}  # seq -> [buffer index, holders left]
        self._index: dict[int, int] = {}  # id(buffer) -> pool index
        self._free: collections.deque[int] = collections.deque()
        self._seq = 0
        self._next_peer = 0
        self._poll = select.poll()
        self.events: collections.deque[Event] = collections.deque(maxlen=1024)
        self._event_count = 0
        self._next_service = 0.0
        self.path = path
        try:
            self._buffers = list(buffers) if buffers is not None else self._allocate(size, count, heap)
            if not self._buffers:
                raise invalid("a Producer needs at least one buffer")
            self._maps = [None] * len(self._buffers)
            self._index = {id(b): i for i, b in enumerate(self._buffers)}
            self._free.extend(range(len(self._buffers)))
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            self._listener = listener
            listener.bind(_address(path))
            listener.listen(16)
            listener.setblocking(False)
            self._poll.register(listener, select.POLLIN)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _allocate(size: int, count: int, heap: Heap | None) -> list[Buffer]:
        if size <= 0 or count <= 0:
            raise invalid("give buffers=, or size > 0 and count > 0")
        own = heap is None
        h = Heap("system") if heap is None else heap
        out: list[Buffer] = []
        try:
            for i in range(count):
                out.append(h.allocate(size, name=f"channel{i}"))
        except BaseException:
            for b in out:
                b.close()
            raise
        finally:
            if own:
                h.close()
        return out

    # --- state -----------------------------------------------------------------
    @property
    def consumers(self) -> int:
        return len(self._peers)

    @property
    def buffers(self) -> list[Buffer]:
        return list(self._buffers)

    @property
    def free(self) -> int:
        """Buffers not held by any consumer."""
        return len(self._free)

    def mapping(self, buffer: Buffer) -> Mapping:
        """A writable mapping of one of the pool's buffers, made once and kept."""
        i = self._slot(buffer)
        m = self._maps[i]
        if m is None:
            m = self._maps[i] = buffer.map()
        return m

    def _slot(self, buffer: Buffer) -> int:
        i = self._index.get(id(buffer))
        if i is None:
            raise invalid("that buffer does not belong to this producer")
        return i

    # --- the loop ----------------------------------------------------------------
    def poll(self, timeout: float | None = 0) -> list[Event]:
        """Service connections and releases for up to ``timeout`` seconds (0: what is
        pending); returns the events that happened meanwhile (also kept in ``events``)."""
        before = self._event_count
        self._service(_remaining_ms(_deadline(timeout)))
        new = min(self._event_count - before, len(self.events))
        return list(self.events)[len(self.events) - new:] if new else []

    def _service(self, timeout_ms: int | None) -> None:
        if self._listener is None:
            raise closed("Producer")
        self._next_service = time.monotonic() + _SERVICE_INTERVAL
        listener = self._listener.fileno()
        for fd, revents in self._poll.poll(timeout_ms):
            if fd == listener:
                self._accept()
                continue
            peer = self._peers.get(fd)
            if peer is None:
                continue
            if revents & select.POLLIN:
                self._read(peer)
            elif revents & _HANGUP:
                self._drop(peer, clean=False)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(True)
            self._next_peer += 1
            peer = _Peer(sock, self._next_peer)
            self._peers[sock.fileno()] = peer
            self._poll.register(sock, select.POLLIN)
            self._event(Event("connected", peer.id, peer.pid))

    def _read(self, peer: _Peer) -> None:
        # One message per readiness report: poll() again is cheaper than the
        # BlockingIOError a non-blocking read-until-empty ends with.
        try:
            msg = peer.sock.recv(64)
        except ConnectionResetError:
            # The peer closed with frames unread: the kernel reports that once, ahead
            # of what it queued before closing (maybe a goodbye); the next poll reads on.
            return
        except OSError:
            msg = b""
        if len(msg) == 1 + _SEQ.size and msg[0] == 0x52:  # b"R": a release
            seq = _SEQ.unpack_from(msg, 1)[0]
            held = peer.held
            if seq in held:
                held.discard(seq)
                self._unhold(seq)
        elif msg == b"B":
            self._drop(peer, clean=True)
        elif not msg:
            self._drop(peer, clean=False)

    def _unhold(self, seq: int) -> None:
        entry = self._frames[seq]
        entry[1] -= 1
        if entry[1] == 0:
            del self._frames[seq]
            self._free.append(entry[0])

    def _drop(self, peer: _Peer, *, clean: bool) -> None:
        del self._peers[peer.sock.fileno()]
        self._poll.unregister(peer.sock)
        peer.sock.close()
        released = len(peer.held)
        for seq in peer.held:
            self._unhold(seq)
        peer.held.clear()
        self._event(Event("disconnected", peer.id, peer.pid, clean, released))

    def _event(self, event: Event) -> None:
        self.events.append(event)
        self._event_count += 1
        (log.info if event.clean else log.warning)("%s", event)

    # --- producing -------------------------------------------------------------
    def wait_for_consumers(self, n: int = 1, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        self._service(0)
        while len(self._peers) < n:
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out(f"waiting for {n} consumer(s), {len(self._peers)} connected")
            self._service(_remaining_ms(deadline))

    def acquire(self, timeout: float | None = None) -> Buffer:
        """A buffer no consumer holds, to fill and ``submit``. Waits for releases
        (TimeoutError after ``timeout`` seconds)."""
        free = self._free
        if free:
            if time.monotonic() < self._next_service:
                # Connections were serviced moments ago: releases and newcomers can
                # wait, as in a hand-written loop.
                return self._buffers[free.popleft()]
            self._service(0)
            if free:
                return self._buffers[free.popleft()]
        deadline = _deadline(timeout)
        while not free:
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out(f"acquire: all {len(self._buffers)} buffers are held by consumers")
            self._service(_remaining_ms(deadline))
        return self._buffers[free.popleft()]

    def submit(self, buffer: Buffer, fence: SyncFile | None = None, *, meta: bytes = b"") -> int:
        """Send an acquired buffer to every connected consumer; ``fence`` (kept by you)
        signals when its contents are ready. Returns how many consumers got it; with
        none, the buffer goes straight back to the pool."""
        i = self._index.get(id(buffer))
        if i is None:
            i = self._slot(buffer)  # raises
        self._seq = seq = self._seq + 1
        data = _FRAME.pack(b"F", seq)
        if meta:
            data += meta
        send = share.send
        sent = 0
        for peer in tuple(self._peers.values()):  # a copy: a failed send drops the peer
            try:
                if fence is None:
                    send(peer.sock, buffer, data=data)
                else:
                    send(peer.sock, buffer, fence, data=data)
            except _GONE:
                self._drop(peer, clean=False)
                continue
            peer.held.add(seq)
            sent += 1
        if sent:
            self._frames[seq] = [i, sent]
        else:
            self._free.append(i)
        return sent

    # --- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Tell every consumer the stream ended, then close sockets and buffers.
        Buffers consumers still hold stay valid on their side."""
        for peer in list(self._peers.values()):
            with contextlib.suppress(OSError):
                share.send(peer.sock, data=b"E")
            peer.sock.close()
        self._peers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if not _address(self.path).startswith("\0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        for m in self._maps:
            if m is not None:
                m.close()
        self._maps = []
        for b in self._buffers:
            b.close()
        self._buffers = []

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Frame:
    """One received buffer: ``wait()`` for its fence, ``map()`` it read-only, read,
    ``release()`` it (or use ``with frame:``). After release the producer may reuse
    the buffer, so the mapping and fds are closed then."""

    __slots__ = ("_consumer", "_map", "buffer", "fence", "meta", "seq")

    def __init__(self, consumer: Consumer, seq: int, buffer: Buffer, fence: SyncFile | None,
                 meta: bytes) -> None:
        self._consumer: Consumer | None = consumer
        self._map: Mapping | None = None
        self.seq = seq
        self.buffer = buffer
        self.fence = fence
        self.meta = meta

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the producer's fence (no-op without one)."""
        if self.fence is not None:
            self.fence.wait(timeout)

    def map(self) -> Mapping:
        """The read-only mapping of the buffer (made once)."""
        m = self._map
        if m is None:
            m = self._map = self.buffer.map(write=False)
        return m

    @property
    def released(self) -> bool:
        return self._consumer is None

    def release(self) -> None:
        """Close the mapping, buffer and fence and hand the buffer back. Idempotent;
        after the producer is gone it only closes."""
        consumer = self._consumer
        if consumer is None:
            return
        if self._map is not None:
            self._map.close()  # BufferError while a memoryview of it is alive
            self._map = None
        self._consumer = None
        self.buffer.close()
        if self.fence is not None:
            self.fence.close()
        consumer._release(self.seq)

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        if self._consumer is not None:  # dropped without release(): release it now
            with contextlib.suppress(Exception):
                self.release()

    def __repr__(self) -> str:
        state = "released" if self._consumer is None else f"size={self.buffer.size}"
        return f"<Frame seq={self.seq} {state} fence={self.fence is not None}>"


class Consumer:
    """The receiving end: ``receive()`` returns Frames, then None at end of stream;
    ``end_reason`` then says whether the producer closed the stream or vanished."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self.end_reason: str | None = None

    @classmethod
    def connect(cls, path: str, *, timeout: float | None = 5.0) -> Consumer:
        """Connect to a producer's ``path``, retrying until it listens or ``timeout``."""
        deadline = _deadline(timeout)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                sock.connect(_address(path))
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if deadline is not None and time.monotonic() >= deadline:
                    raise timed_out(f"connecting to producer at {path!r} ({exc.strerror})") from None
                time.sleep(0.005)
            except BaseException:
                sock.close()
                raise

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    def fileno(self) -> int:
        if self._sock is None:
            raise closed("Consumer")
        return self._sock.fileno()

    def receive(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None once the stream has ended (see ``end_reason``)."""
        sock = self._sock
        if sock is None:
            raise closed("Consumer")
        if self.end_reason is not None:
            return None
        if timeout is not None:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            deadline = _deadline(timeout)
            while not poller.poll(_remaining_ms(deadline)):
                if time.monotonic() >= deadline:  # type: ignore[operator]
                    raise timed_out("Consumer.receive")
        try:
            try:
                objects, data = share.recv_data(sock)
            except ConnectionResetError:
                # Reported once when the producer closed with our releases unread,
                # ahead of the frames and end-of-stream it queued before: read on.
                objects, data = share.recv_data(sock)
        except (EOFError, ConnectionResetError):
            self.end_reason = "the producer went away without ending the stream (crashed or killed)"
            log.warning("consumer: %s", self.end_reason)
            return None
        n = len(objects)
        if data[:1] == b"F" and len(data) >= _FRAME.size and 1 <= n <= 2 and type(objects[0]) is Buffer \
                and (n == 1 or type(objects[1]) is SyncFile):
            return Frame(self, _FRAME.unpack_from(data)[1], objects[0],
                         objects[1] if n == 2 else None, data[_FRAME.size:])  # type: ignore[arg-type]
        if data == b"E" and not objects:
            self.end_reason = "the producer ended the stream"
            return None
        for obj in objects:
            obj.close()
        raise share.ProtocolError(E.EPROTO, "not a channel frame")

    def _release(self, seq: int) -> None:
        sock = self._sock
        if sock is None or self.end_reason is not None:
            return
        try:  # noqa: SIM105 - per-frame path; suppress() costs a context manager
            sock.send(_RELEASE.pack(b"R", seq), _SEND)
        except _GONE:
            pass  # the producer is gone; receive() reports it

    def close(self) -> None:
        """Say goodbye (the producer releases whatever this consumer still holds) and
        close. Frames not yet released keep their buffers open until released."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self.end_reason is None:
            with contextlib.suppress(OSError):
                sock.send(b"B", _SEND)
        sock.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

