"""A producer/consumer channel over a Unix SOCK_SEQPACKET socket.

The producer owns a pool of buffers. ``acquire`` gives it a free one to fill,
``submit`` sends it (with an optional fence that signals when the contents are
ready) to every connected consumer, and the buffer comes back to the pool once
every consumer it went to has released it (GStreamer's unixfdsink model). A
consumer that disconnects, even by ``kill -9``, releases everything it held: the
kernel closes its socket and the producer sees the hangup. A producer that goes
away ends the stream: consumers get the frames already queued, then ``None`` from
``receive``; the frames they hold stay valid and mapped, since they own the fds.

Trust (see docs/security.md, "The channel"): a producer admits only consumers of its
own uid (``allow_uids``/``allow_gids`` widen that) and a consumer accepts only a
producer of its own uid or root, from SO_PEERCRED, which no peer can forge. A path
socket is created 0600. Consumers of fallback memfds get read-only fds of files
sealed against new writers; dma-buf fds keep the exporter's access mode. The
producer never blocks on a consumer: its sockets are non-blocking, and a consumer
that falls behind (``max_pending`` frames unreleased, or a full socket) has frames
skipped for it or is disconnected (``slow_consumer``). What a consumer sends back
is checked: it can release only frames it holds, and anything else disconnects it.

The producer works on readiness, not on a timer: every ``acquire`` and ``poll``
picks up what the sockets already hold (newcomers, hang-ups, and every release each
consumer has sent), and ``submit`` reads a consumer's pending releases before it
judges that consumer to be behind, so a consumer that releases promptly is never
punished for bookkeeping the producer had not done yet. A producer out of file
descriptors (``accept`` failing with EMFILE) stops watching its listening socket for
a growing interval, logs one line per interval, and keeps serving the consumers it
has; waiting newcomers stay in the backlog until an fd is free.

The messages are :mod:`pydmabuf.channel_wire`.
"""

from __future__ import annotations

import collections
import contextlib
import errno as E
import fcntl
import logging
import os
import resource
import select
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from . import channel_wire as wire
from . import share
from .allocator import Allocator
from .buffer import Buffer, Mapping, buffer_parts, new_buffer
from .credentials import check_peer, id_set, peer_credentials
from .errors import Error, PermissionDeniedError, check_index, closed, error, fd_limit_hint, invalid, timed_out
from .formats import Format
from .frame import Frame, allocate_frame
from .heap import Heap
from .pool import BufferPool
from .syncfile import SyncFile
from .uapi import memfd as _memfd
from .uapi.wait import deadline, expired, remaining_ms

Item = Buffer | Frame  # what a producer serves: buffers, or frames (1-4 buffers each)
_ITEMS = (Buffer, Frame)


class _FramePool:
    """A producer's frames lent the way a BufferPool lends buffers (``take``,
    ``release``, ``free``): BufferPool deals in Buffers, a frame is several."""

    def __init__(self, frames: list[Frame]) -> None:
        self._free = collections.deque(frames)

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self, timeout: float | None = None) -> Frame:
        return self._free.popleft()

    def release(self, frame: Frame) -> None:
        self._free.append(frame)

    def close(self) -> None:
        for frame in self._free:
            frame.close()
        self._free.clear()


__all__ = ["SLOW_CONSUMER_POLICIES", "Consumer", "Delivery", "Event", "Producer"]

log = logging.getLogger("pydmabuf.channel")
SLOW_CONSUMER_POLICIES = ("drop", "disconnect")
_POLLIN = select.POLLIN
_SEND_NOWAIT = int(socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
_FRAME_KIND, _HEADER_SIZE = wire.FRAME, wire.FRAME_HEADER.size
_release = wire.release
_unpack_seq = wire.SEQ.unpack_from
_RELEASE_SIZE, _RELEASE_BYTE, _GOODBYE_BYTE = wire.RELEASE_SIZE, wire.RELEASE_BYTE, wire.GOODBYE_BYTE
_MAX_META = wire.MAX_META
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError)
_DROP_REPORT_INTERVAL = 1.0  # s: at most one "dropped" event per consumer per interval
# accept() out of fds (or memory): the listening socket stays readable, so polling it
# again at once would spin. It is left out of poll for a pause that doubles from the
# first to the last value while the failures go on, and one log line per condition
# is written at most every _ACCEPT_LOG_INTERVAL.
_ACCEPT_PAUSE_FIRST = 0.05  # s
_ACCEPT_PAUSE_MAX = 1.0  # s: how long a newcomer may wait once fds are free again
_ACCEPT_LOG_INTERVAL = 10.0  # s
_SOCKET_MODE = 0o600
_SUN_PATH = 108  # bytes in sockaddr_un.sun_path
_NUMBER_TYPES = (float, int)
_REFUSED, _EVICTED, _END = wire.REFUSED, wire.EVICTED, wire.END
_FD_ERRNOS = (E.EMFILE, E.ENFILE)
_HOLDS_TOO_MANY = "holds max_pending unreleased frames"
_SOCKET_FULL = "its socket is full (it stopped reading)"


@dataclass(frozen=True)
class Event:
    """Something the producer noticed about a consumer.

    ``kind``: "connected"; "refused" (its uid/gid is not admitted; it got no frame);
    "disconnected" (``clean`` is False when it went away without a goodbye, crashed,
    killed or sent garbage; ``reason`` says which); "dropped" (it fell behind and
    ``dropped`` frames were skipped for it since the last such event, at most one a
    second); "evicted" (it fell behind under ``slow_consumer="disconnect"``).
    ``released`` counts the frames a disconnection freed."""

    kind: str
    consumer: int
    pid: int
    clean: bool = True
    released: int = 0
    uid: int = -1
    dropped: int = 0
    reason: str = ""

    def __str__(self) -> str:
        who = f"consumer {self.consumer} (pid {self.pid}, uid {self.uid})"
        if self.kind == "connected":
            return f"{who} connected"
        if self.kind == "refused":
            return f"{who} refused: {self.reason}"
        if self.kind == "dropped":
            return f"{who} fell behind ({self.reason}): skipped {self.dropped} frame(s) for it"
        if self.kind == "evicted":
            how = f"fell behind ({self.reason}) and was disconnected"
        elif self.clean:
            how = "closed"
        else:
            how = self.reason or "died (no goodbye)"
        tail = f"; {self.dropped} more frame(s) had been skipped for it" if self.dropped else ""
        return f"{who} {how}; released the {self.released} frame(s) it held{tail}"


def _address(path: str) -> str:
    """The socket address for ``path``: "@name" is the abstract namespace (no file,
    gone with the socket), as in systemd; a leading NUL is taken as abstract too."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, got {type(path).__name__}")
    address = "\0" + path[1:] if path.startswith("@") else path
    if not address:
        raise invalid("path is empty (an abstract name is '@name')")
    if not _is_abstract(path) and "\0" in path:
        raise invalid(f"socket path {path!r} contains a NUL byte")
    try:
        length = len(os.fsencode(address))
    except UnicodeError:
        raise invalid(f"socket path {path!r} cannot be encoded for the file system") from None
    if length > _SUN_PATH:
        raise invalid(f"socket path {path!r} is longer than the {_SUN_PATH} bytes AF_UNIX allows")
    return address


def _is_abstract(path: str) -> bool:
    return path.startswith(("@", "\0"))


def _pool_count(count: object) -> int:
    """``count`` as BufferPool takes it: an integer (int, numpy integers, anything with
    ``__index__``; not bool) > 0, and no more than the fd limit lets this process open."""
    n = check_index(count, "count")
    if n <= 0:
        raise invalid(f"count must be > 0, got {n}")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and n >= soft:  # one fd a buffer at least: cannot fit
        raise error(E.EMFILE, f"Producer: a pool of {n} buffers needs at least {n} fds", _fd_limit_hint())
    return n


def _fd_limit_hint(code: int = E.EMFILE, producer: bool = True) -> str:
    """What to do about EMFILE or ENFILE: the limit, and what holds the fds here."""
    what = ("a Producer holds one fd per pool buffer at least (two on the fallback: consumers get a "
            "read-only reopen) and one per consumer: use fewer or larger buffers" if producer
            else "each received frame holds its fds until it is released")
    return f"{what}; {fd_limit_hint(code)}"


class _Peer:
    __slots__ = ("dropped", "fd", "held", "id", "next_drop_report", "pid", "sock", "uid")

    def __init__(self, sock: socket.socket, ident: int, pid: int, uid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.id = ident
        self.pid = pid
        self.uid = uid
        self.held: set[int] = set()  # seqs sent and not yet released
        self.dropped = 0  # frames skipped for it and not yet reported
        self.next_drop_report = 0.0


def _shareable(buffer: Buffer) -> tuple[Buffer, Mapping | None]:
    """What consumers get for a pool buffer, and the producer's writable mapping.

    A fallback memfd is mapped writable for the producer first, then sealed with
    F_SEAL_FUTURE_WRITE (no new writable mapping or write() through any fd, not even
    a read-write reopen of /proc/self/fd/N, while the producer's mapping stays
    writable), and consumers get an O_RDONLY reopen. A dma-buf cannot be reopened
    (ENXIO): its access mode is the exporter's, so it goes as it is."""
    fd = buffer.fileno()
    seals = _memfd.seals(fd)
    if seals is None:
        return buffer, None
    mapping: Mapping | None = None
    try:
        mapping = buffer.map()
    except OSError:
        log.debug("pool buffer fd %d cannot be mapped writable; left unsealed", fd)
    if mapping is not None and not seals & _memfd.F_SEAL_FUTURE_WRITE:
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _memfd.F_SEAL_FUTURE_WRITE)
        except OSError as exc:  # F_SEAL_SEAL set, or a kernel before 5.1
            log.debug("cannot seal pool buffer fd %d against writers: %s", fd, exc)
    try:
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:  # no /proc: consumers get the producer's fd
        log.debug("cannot reopen pool buffer fd %d read-only: %s", fd, exc)
        return buffer, mapping
    backend, size, offset = buffer_parts(buffer)
    return new_buffer(ro, size, backend, offset), mapping


def _shareable_item(item: Item) -> tuple[Item, Mapping | None]:
    """What consumers get for a pool item (see ``_shareable``); a frame's objects are
    mapped writable by the frame itself first (its plane views keep working)."""
    if isinstance(item, Buffer):
        return _shareable(item)
    if item.format.linear or item.modifier in (0, 2**56 - 1):
        with contextlib.suppress(OSError, ValueError):
            for view in item.plane_views(write=True):  # cached by the frame from now on
                view.release()
    shared: list[Buffer] = []
    try:
        for obj in item.objects:
            ro, mapping = _shareable(obj)
            if mapping is not None:
                mapping.close()  # the frame's own mappings are the producer's
            shared.append(ro)
        return Frame(item.width, item.height, item.format, shared, item.planes, modifier=item.modifier,
                     own=True), None
    except BaseException:
        for b, obj in zip(shared, item.objects, strict=False):
            if b is not obj:
                b.close()
        raise


class Producer:
    """Serves frames to consumers that ``Consumer.connect(path)``; a ``path`` starting
    with "@" is an abstract socket name (no file to clean up), any other path a socket
    file created owner-only (0600).

    Give it ``buffers`` to own, or ``size`` and ``count`` to allocate from ``heap``
    (default: a :class:`pydmabuf.Allocator`, the CMA heap, else the system heap,
    else udmabuf; ``PYDMABUF_PROVIDERS`` overrides). It owns and closes them; write
    frames through ``mapping(buf)`` (fallback buffers refuse new writers once the
    producer has them). To serve images, give it ``frames`` (pydmabuf.Frame objects
    to own) or ``frame_layout=(width, height, format)`` and ``count`` to allocate
    them (``allocate_frame``); consumers then receive whole frames, and you write
    through each frame's ``plane_view(i)``.

    Who may connect: consumers running as this process's effective uid, any uid in
    ``allow_uids`` or primary gid in ``allow_gids``; others get no frame, their
    ``receive()`` raises PermissionDeniedError, and ``events`` records "refused".

    ``submit`` never blocks. A consumer falls behind when it holds ``max_pending``
    unreleased frames or its socket is full (it stopped reading);
    ``slow_consumer="drop"`` skips frames for it until it catches up, ``"disconnect"``
    drops its connection, releasing what it held. The default ``max_pending`` is the
    pool: every consumer gets every frame and the slowest paces ``acquire`` (which
    waits up to its timeout), so one stalled consumer holds up the rest. To keep
    consumers apart, give ``max_pending`` below ``count`` (e.g. ``count // 2``): a
    stalled consumer then keeps at most that many buffers.

    Single-threaded: call ``acquire``, ``submit`` or ``poll`` to let it notice
    consumers and releases (each picks up whatever the sockets hold at that moment).
    After ``close()`` every method raises ClosedError.

    ``protocol="gstreamer"`` makes it GStreamer's instead: what ``unixfdsrc
    socket-path=PATH`` consumes (a :class:`pydmabuf.gstreamer.GstProducer`, with
    ``frames``/``frame_layout``, ``count``, ``allow_uids``, ``allow_gids``).

    ``count`` is an int (or any integer with ``__index__``, e.g. ``numpy.int64``) > 0;
    each pool buffer holds at least one fd, so a pool the fd limit
    (RLIMIT_NOFILE) cannot hold is refused with an error of errno EMFILE naming it.
    """

    def __new__(cls, path: str, *, protocol: str = "pydmabuf", **kwargs: object) -> Producer:
        # protocol="gstreamer": the producer GStreamer's unixfdsrc consumes (pydmabuf.gstreamer)
        if protocol == "gstreamer":
            from .gstreamer import GstProducer

            allowed = {"count", "frames", "frame_layout", "allow_uids", "allow_gids"}
            unknown = sorted(set(kwargs) - allowed)
            if unknown:
                raise invalid(f"Producer(protocol='gstreamer') takes {', '.join(sorted(allowed))}, not "
                              f"{', '.join(unknown)}")
            return GstProducer(path, **kwargs)  # type: ignore[arg-type,return-value]
        if protocol != "pydmabuf":
            raise invalid(f"protocol is 'pydmabuf' or 'gstreamer', got {protocol!r}")
        return super().__new__(cls)

    def __init__(self, path: str, *, size: int = 0, count: int = 4, heap: Heap | None = None,
                 buffers: Sequence[Buffer] | None = None, allow_uids: Iterable[int] | None = None,
                 allow_gids: Iterable[int] | None = None, max_pending: int | None = None,
                 slow_consumer: str = "drop", frames: Sequence[Frame] | None = None,
                 frame_layout: tuple[int, int, Format | str | int] | None = None, protocol: str = "pydmabuf") -> None:
        self._listener: socket.socket | None = None
        self._buffers: list[Item] = []  # the pool: Buffers, or Frames
        self._shared: list[Item] = []  # what consumers get: read-only where possible
        self._maps: list[Mapping | None] = []
        self._peers: dict[int, _Peer] = {}
        self._frames: dict[int, list[int]] = {}  # seq -> [buffer index, holders left]
        self._index: dict[int, int] = {}  # id(buffer) -> pool index
        self._acquired = bytearray()  # per pool index: 1 from acquire() until submit()
        self._pool: BufferPool | _FramePool | None = None  # what is free to acquire
        self._seq = 0
        self._next_peer = 0
        self._poll = select.poll()
        self.events: collections.deque[Event] = collections.deque(maxlen=1024)
        self._event_count = 0
        self._listen_fd = -1
        self._rbuf = bytearray(wire.READ_SIZE)  # every consumer message is read into this
        # accept() back-off (see _ACCEPT_PAUSE_FIRST): monotonic time until which the
        # listener is left out of poll (0: it is watched), the next pause, and the
        # failures not yet logged, with when the next log line may be written.
        self._accept_paused_until = 0.0
        self._accept_pause = _ACCEPT_PAUSE_FIRST
        self._accept_errno = 0
        self._accept_failures = 0
        self._accept_next_log = 0.0
        self._socket_file: tuple[int, int] | None = None  # (st_dev, st_ino) of a path socket
        self.path = path
        _address(path)  # a bad path fails before anything is allocated
        if slow_consumer not in SLOW_CONSUMER_POLICIES:
            raise invalid(f"slow_consumer must be one of {SLOW_CONSUMER_POLICIES}, got {slow_consumer!r}")
        self.slow_consumer = slow_consumer
        self._allow_uids = id_set(allow_uids, "allow_uids")
        self._allow_gids = id_set(allow_gids, "allow_gids")
        if buffers is None and frames is None:  # a pool to allocate: count says how many
            count = _pool_count(count)  # before anything is allocated (or too many fds would be)
        try:
            if frames is not None or frame_layout is not None:
                if buffers is not None or size:
                    raise invalid("give frames= or frame_layout=, or buffers= or size=, not both")
                made: list[Frame] = (self._own_frames(frames) if frames is not None
                                     else self._allocate_frames(frame_layout, count, heap))
                self._buffers = list(made)
            else:
                self._buffers = list(self._own(buffers) if buffers is not None
                                     else self._allocate(size, count, heap))
            self.max_pending = self._pending_limit(max_pending, len(self._buffers))
            self._index = {id(b): i for i, b in enumerate(self._buffers)}
            self._acquired = bytearray(len(self._buffers))
            for b in self._buffers:
                shared, mapping = _shareable_item(b)
                self._shared.append(shared)
                self._maps.append(mapping)
            # The items free to acquire: a BufferPool owning the buffers (so a buffer a
            # caller closed by mistake is replaced), or the frames.
            self._pool = (_FramePool(list(made)) if frames is not None or frame_layout is not None
                          else BufferPool.adopt(self._buffers))  # type: ignore[arg-type]
            self._listener = self._listen(path)
            if not _is_abstract(path):
                st = os.stat(path)
                self._socket_file = (st.st_dev, st.st_ino)
            self._listen_fd = self._listener.fileno()
            self._poll.register(self._listen_fd, _POLLIN)
        except OSError as exc:
            self.close()
            if exc.errno in _FD_ERRNOS:  # raw from an allocator, or ours without the numbers
                raise error(exc.errno, f"Producer: setting up a pool of {len(self._buffers) or count} "
                                       "buffer(s)", _fd_limit_hint(exc.errno)) from None
            raise
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _own(buffers: Sequence[Buffer]) -> list[Buffer]:
        pool = list(buffers)
        if not pool:
            raise invalid("a Producer needs at least one buffer")
        for b in pool:
            if not isinstance(b, Buffer):
                raise invalid(f"buffers must be Buffers, got {type(b).__name__}")
            b.fileno()  # ClosedError for a closed one
        if len({id(b) for b in pool}) != len(pool):
            raise invalid("the same Buffer appears twice in buffers")
        return pool

    @staticmethod
    def _own_frames(frames: Sequence[Frame]) -> list[Frame]:
        pool = list(frames)
        if not pool:
            raise invalid("a Producer needs at least one frame")
        for f in pool:
            if not isinstance(f, Frame):
                raise invalid(f"frames must be pydmabuf.Frame objects, got {type(f).__name__}")
            if f.closed:
                raise closed("Frame")
        if len({id(f) for f in pool}) != len(pool):
            raise invalid("the same Frame appears twice in frames")
        return pool

    @staticmethod
    def _allocate_frames(layout: tuple[int, int, Format | str | int] | None, count: int,
                         heap: Heap | None) -> list[Frame]:
        if not isinstance(layout, tuple) or len(layout) != 3:
            raise invalid("frame_layout is (width, height, format)")
        if heap is not None and not isinstance(heap, Heap):
            raise TypeError(f"heap must be a Heap or None, got {type(heap).__name__}")
        width, height, fmt = layout
        out: list[Frame] = []
        allocator = heap if heap is not None else Allocator()
        try:
            for i in range(count):
                out.append(allocate_frame(width, height, fmt, allocator=allocator, name=f"channel{i}"))
        except BaseException:
            for f in out:
                f.close()
            raise
        finally:
            if isinstance(allocator, Allocator):
                allocator.close()
        return out

    @staticmethod
    def _pending_limit(max_pending: int | None, count: int) -> int:
        if max_pending is None:
            return count  # the pool is the only bound: every consumer gets every frame
        if isinstance(max_pending, bool) or not isinstance(max_pending, int):
            raise TypeError(f"max_pending must be an int or None, got {type(max_pending).__name__}")
        if max_pending < 1:
            raise invalid(f"max_pending must be >= 1, got {max_pending}")
        return max_pending

    @staticmethod
    def _listen(path: str) -> socket.socket:
        address = _address(path)
        abstract = _is_abstract(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        bound = False
        try:
            if not abstract:
                # bind() creates the file with the socket inode's mode minus the umask:
                # 0600 here means it is never wider than owner-only, whatever the umask.
                os.fchmod(listener.fileno(), _SOCKET_MODE)
            listener.bind(address)
            bound = not abstract
            if bound and os.stat(path).st_mode & 0o777 != _SOCKET_MODE:
                os.chmod(path, _SOCKET_MODE)  # a umask took owner bits; nobody can connect yet
            listener.listen(16)
            listener.setblocking(False)
        except BaseException as exc:
            listener.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if not isinstance(exc, OSError) or isinstance(exc, Error):
                raise
            hint = ("another producer listens there, or a socket file outlived its producer: remove it"
                    if exc.errno == E.EADDRINUSE else None)
            raise error(exc.errno or E.EINVAL, f"Producer: listening on {path!r}", hint) from None
        return listener

    @staticmethod
    def _allocate(size: int, count: int, heap: Heap | None) -> list[Buffer]:
        if isinstance(size, int) and size <= 0:  # other sizes: the heap says what is wrong
            raise invalid("give buffers=, or size > 0 and count > 0")
        if heap is not None and not isinstance(heap, Heap):
            raise TypeError(f"heap must be a Heap or None, got {type(heap).__name__}")
        own = heap is None
        h: Heap | Allocator = Allocator() if heap is None else heap
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
    def closed(self) -> bool:
        """True once ``close()`` has run; every method then raises ClosedError."""
        return self._listener is None

    @property
    def consumers(self) -> int:
        """Consumers connected and admitted now, as last noticed by ``acquire``, ``submit`` or ``poll``."""
        return len(self._peers)

    @property
    def buffers(self) -> list[Buffer]:
        """The pool's buffers (every frame's objects, for a frame producer)."""
        out: list[Buffer] = []
        for item in self._buffers:
            out.extend(item.objects if isinstance(item, Frame) else (item,))
        return out

    @property
    def frames(self) -> list[Frame]:
        """The pool's frames (empty for a buffer producer)."""
        return [item for item in self._buffers if isinstance(item, Frame)]

    @property
    def free(self) -> int:
        """Buffers not held by any consumer."""
        return self._pool.free if self._pool is not None else 0

    def mapping(self, buffer: Buffer) -> Mapping:
        """A writable mapping of one of the pool's buffers, made once and kept (a frame
        producer's frames map themselves: ``frame.plane_view(i)``)."""
        i = self._slot(buffer)
        if not isinstance(buffer, Buffer):
            raise invalid("mapping() is for buffers; write a frame through frame.plane_view(i)")
        m = self._maps[i]
        if m is None:
            m = self._maps[i] = buffer.map()
        return m

    def _slot(self, buffer: Item) -> int:
        if self._listener is None:
            raise closed("Producer")
        i = self._index.get(id(buffer))
        if i is None:
            raise invalid("that buffer does not belong to this producer")
        return i

    # --- the loop ----------------------------------------------------------------
    def poll(self, timeout: float | None = 0) -> list[Event]:
        """Service connections and releases for up to ``timeout`` seconds (0: what is
        pending); returns the events that happened meanwhile (also kept in ``events``)."""
        before = self._event_count
        self._service(remaining_ms(deadline(timeout, "Producer.poll")))
        new = min(self._event_count - before, len(self.events))
        return list(self.events)[len(self.events) - new:] if new else []

    def _service(self, timeout_ms: int | None) -> None:
        """One pass over whatever is ready, waiting up to ``timeout_ms`` for something
        to be (None: until it is): newcomers, and every message of each consumer."""
        if self._listener is None:
            raise closed("Producer")
        if self._accept_paused_until:
            timeout_ms = self._accept_pause_check(timeout_ms)
        listener = self._listen_fd
        for fd, _revents in self._poll.poll(timeout_ms):
            if fd == listener:
                self._accept()
                continue
            peer = self._peers.get(fd)
            if peer is not None:  # readable, hung up or in error: reading says which
                self._drain(peer)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                break
            except ConnectionAbortedError:  # it gave up while queued: the next one
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: it is still queued
                self._accept_failed(exc)
                return
            sock.setblocking(False)  # submit() must never wait on a consumer
            self._next_peer += 1
            try:
                creds = check_peer(sock, allow_uids=self._allow_uids, allow_gids=self._allow_gids)
            except PermissionDeniedError:
                self._refuse(sock, self._next_peer)
                continue
            peer = _Peer(sock, self._next_peer, creds.pid, creds.uid)
            self._peers[peer.fd] = peer
            self._poll.register(peer.fd, _POLLIN)
            self._event(Event("connected", peer.id, peer.pid, uid=peer.uid))
        if self._accept_errno:
            self._accept_recovered()

    def _accept_failed(self, exc: OSError) -> None:
        """accept() failed with the connection still queued: stop watching the
        listener for a while (it stays readable: polling it again would spin) and log
        the condition at most once per _ACCEPT_LOG_INTERVAL."""
        now = time.monotonic()
        self._poll.unregister(self._listen_fd)
        self._accept_paused_until = now + self._accept_pause
        self._accept_pause = min(self._accept_pause * 2, _ACCEPT_PAUSE_MAX)
        code = exc.errno or E.EIO
        if code == self._accept_errno and now < self._accept_next_log:
            self._accept_failures += 1
            return
        since = f" ({self._accept_failures} more failure(s) since the last report)" if self._accept_failures else ""
        hint = f"; {_fd_limit_hint(code)}" if code in _FD_ERRNOS else ""
        log.warning("producer %s: cannot accept consumers: %s%s; serving the %d connected, retrying "
                    "at least every %g s%s", self.path, os.strerror(code), since, len(self._peers),
                    _ACCEPT_PAUSE_MAX, hint)
        self._accept_errno = code
        self._accept_failures = 0
        self._accept_next_log = now + _ACCEPT_LOG_INTERVAL

    def _accept_recovered(self) -> None:
        log.info("producer %s: accepting consumers again (%s is over)", self.path,
                 os.strerror(self._accept_errno))
        self._accept_errno = self._accept_failures = 0
        self._accept_next_log = 0.0
        self._accept_pause = _ACCEPT_PAUSE_FIRST

    def _accept_pause_check(self, timeout_ms: int | None) -> int | None:
        """While accept() is paused: watch the listener again once the pause is over,
        else a poll timeout that ends with the pause (so a waiter retries then)."""
        left = self._accept_paused_until - time.monotonic()
        if left <= 0:
            self._accept_paused_until = 0.0
            self._poll.register(self._listen_fd, _POLLIN)
            return timeout_ms
        left_ms = int(left * 1000) + 1
        return left_ms if timeout_ms is None or timeout_ms > left_ms else timeout_ms

    def _refuse(self, sock: socket.socket, ident: int) -> None:
        creds = peer_credentials(sock)
        with contextlib.suppress(OSError):  # tell it why, so it need not guess
            share.send(sock, data=_REFUSED)
        sock.close()
        self._event(Event("refused", ident, creds.pid, clean=False, uid=creds.uid,
                          reason=f"uid {creds.uid} gid {creds.gid} is not admitted "
                                 "(the producer admits its own uid, allow_uids and allow_gids)"))

    def _drain(self, peer: _Peer) -> bool:
        """Read every message ``peer`` has sent: all its releases, then a goodbye or a
        hang-up if it sent one. False if it was dropped (gone, goodbye, or garbage).

        At most ``held + 1`` messages are read (each release frees a frame it holds,
        plus a goodbye): that is everything an honest consumer can have sent, and a
        consumer flooding us with more cannot keep the producer in this loop; the
        rest is read on the next pass (poll reports the socket again)."""
        buf = self._rbuf
        recv_into = peer.sock.recv_into
        held = peer.held
        budget = len(held) + 1
        while budget >= 0:
            budget -= 1
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                # The peer closed with frames unread; the kernel reports that once,
                # ahead of what it queued before closing (maybe a goodbye): read on.
                continue
            except OSError:
                n = 0
            if n == _RELEASE_SIZE and buf[0] == _RELEASE_BYTE:
                seq = _unpack_seq(buf, 1)[0]
                if seq in held:  # only frames it holds: no consumer frees another's frame
                    held.discard(seq)
                    self._unhold(seq)
            elif n == 1 and buf[0] == _GOODBYE_BYTE:
                self._drop(peer, clean=True)
                return False
            elif n == 0:
                self._drop(peer, clean=False)
                return False
            else:
                self._drop(peer, clean=False, reason=f"sent an invalid message ({n} bytes) "
                                                     "and was disconnected")
                return False
        return True

    def _unhold(self, seq: int) -> None:
        entry = self._frames[seq]
        entry[1] -= 1
        if entry[1] == 0:
            del self._frames[seq]
            self._pool.release(self._buffers[entry[0]])  # type: ignore[union-attr, arg-type]

    def _drop(self, peer: _Peer, *, clean: bool, reason: str = "", kind: str = "disconnected") -> None:
        del self._peers[peer.fd]
        self._poll.unregister(peer.fd)
        peer.sock.close()
        released = len(peer.held)
        for seq in peer.held:
            self._unhold(seq)
        peer.held.clear()
        self._event(Event(kind, peer.id, peer.pid, clean, released, peer.uid, peer.dropped, reason))

    def _behind(self, peer: _Peer, why: str) -> None:
        """``peer`` cannot take this frame now: apply the slow-consumer policy."""
        if self.slow_consumer == "disconnect":
            with contextlib.suppress(OSError):  # say why, if its socket has room
                share.send(peer.sock, data=_EVICTED)
            self._drop(peer, clean=False, reason=why, kind="evicted")
            return
        peer.dropped += 1
        now = time.monotonic()
        if now >= peer.next_drop_report:
            peer.next_drop_report = now + _DROP_REPORT_INTERVAL
            self._event(Event("dropped", peer.id, peer.pid, False, uid=peer.uid, dropped=peer.dropped,
                              reason=why))
            peer.dropped = 0

    def _event(self, event: Event) -> None:
        self.events.append(event)
        self._event_count += 1
        (log.info if event.clean else log.warning)("%s", event)

    # --- producing -------------------------------------------------------------
    def wait_for_consumers(self, n: int = 1, timeout: float | None = None) -> None:
        """Wait until ``n`` admitted consumers are connected (TimeoutError after
        ``timeout`` seconds; None waits forever)."""
        until = deadline(timeout, "wait_for_consumers")
        self._service(0)
        while len(self._peers) < n:
            if expired(until):
                why = (f"; accepting more fails: {os.strerror(self._accept_errno)}, see the log"
                       if self._accept_errno else "")
                raise timed_out(f"waiting for {n} consumer(s), {len(self._peers)} connected{why}")
            self._service(remaining_ms(until))

    def acquire(self, timeout: float | None = None) -> Item:
        """A buffer (or frame) no consumer holds, to fill and ``submit``. Waits for releases
        (TimeoutError after ``timeout`` seconds; None waits forever)."""
        pool = self._pool
        if pool is None:
            raise closed("Producer")
        if timeout is not None and not (type(timeout) in _NUMBER_TYPES and timeout >= 0):
            deadline(timeout, "acquire")  # raises: the check a wait makes, before any wait
        # On readiness: whatever the sockets hold now (releases, newcomers, hang-ups)
        # is taken in before the pool is looked at; one poll(0) when nothing is.
        self._service(0)
        if not pool.free:
            self._wait_free(pool, timeout)
        item = pool.take(0)  # one is free: no wait (releases arrive through _service)
        self._acquired[self._index[id(item)]] = 1
        return item

    def _wait_free(self, pool: BufferPool | _FramePool, timeout: float | None) -> None:
        until = deadline(timeout, "acquire")
        while not pool.free:
            if expired(until):
                raise timed_out(f"acquire: all {len(self._buffers)} buffers are held by consumers")
            self._service(remaining_ms(until))

    def submit(self, buffer: Item, fence: SyncFile | None = None, *, meta: bytes = b"") -> int:
        """Send a buffer from ``acquire`` to every connected consumer that keeps up;
        ``fence`` (kept by you) signals when its contents are ready. Returns how many
        consumers got it; with none, the buffer goes straight back to the pool.
        Never blocks: a consumer that cannot take it now has fallen behind (see the
        class doc)."""
        i = self._index.get(id(buffer))
        if i is None:
            i = self._slot(buffer)  # raises: not ours, or closed
        if not self._acquired[i]:
            raise invalid("submit() takes a buffer from acquire(), once")
        if fence is not None:
            if not isinstance(fence, SyncFile):
                raise invalid(f"fence must be a SyncFile, got {type(fence).__name__}")
            fence.fileno()  # ClosedError now, not from the middle of the consumers
        if len(meta) > _MAX_META:
            raise invalid(f"meta is at most {_MAX_META} bytes, got {len(meta)}")
        self._acquired[i] = 0
        self._seq = seq = self._seq + 1
        data = wire.frame_data(seq, meta)
        shared = self._shared[i]
        send = share.send
        limit = self.max_pending
        sent = 0
        try:
            for peer in tuple(self._peers.values()):  # a copy: a failed send drops the peer
                held = peer.held
                if len(held) >= limit:
                    # Its releases may be waiting unread: read them all before judging it.
                    if not self._drain(peer):
                        continue  # it went away (or sent garbage) meanwhile
                    if len(held) >= limit:
                        self._behind(peer, _HOLDS_TOO_MANY)
                        continue
                try:
                    if fence is None:
                        send(peer.sock, shared, data=data)
                    else:
                        send(peer.sock, shared, fence, data=data)
                except _GONE:
                    self._drop(peer, clean=False)
                    continue
                except BlockingIOError:
                    self._behind(peer, _SOCKET_FULL)
                    continue
                except Error:
                    raise  # ours, not the consumer's
                except OSError as exc:  # ETOOMANYREFS (fds piling up unread), ENOBUFS, ...
                    self._behind(peer, f"send failed: {exc.strerror}")
                    continue
                held.add(seq)
                sent += 1
        finally:
            if sent:
                self._frames[seq] = [i, sent]
            else:
                self._pool.release(buffer)  # type: ignore[union-attr, arg-type]
        return sent

    # --- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Tell every consumer the stream ended, then close sockets and buffers.
        Buffers consumers still hold stay valid on their side. Idempotent."""
        for peer in list(self._peers.values()):
            with contextlib.suppress(OSError):  # non-blocking: a full socket just hears EOF
                share.send(peer.sock, data=_END)
            peer.sock.close()
        self._peers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self._socket_file is not None:
                with contextlib.suppress(OSError):
                    st = os.stat(self.path)
                    if (st.st_dev, st.st_ino) == self._socket_file:  # not a later producer's
                        os.unlink(self.path)
                self._socket_file = None
        for m in self._maps:
            if m is not None:
                m.close()
        self._maps = []
        for shared, b in zip(self._shared, self._buffers, strict=False):  # shorter if __init__ failed
            if shared is not b:
                shared.close()  # a shared frame owns its read-only dups
        self._shared = []
        for b in self._buffers:
            b.close()
        self._buffers = []
        self._index = {}
        if self._pool is not None:
            self._pool.close()  # closes the idle items; the loop above closed every buffer
            self._pool = None
        self._frames.clear()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Delivery:
    """One received item: a Buffer, or a :class:`pydmabuf.Frame` when the producer
    serves frames. ``wait()`` for its fence, ``map()`` the buffer read-only (or use
    ``frame.plane_view(i, write=False)``), read, ``release()`` it (or use
    ``with delivery:``). After release the producer may reuse the buffers, so the
    mapping and fds are closed then."""

    __slots__ = {
        "_consumer": "The Consumer to hand it back to; None once released.",
        "_map": "The read-only mapping ``map()`` made, or None.",
        "buffer": "The received :class:`pydmabuf.Buffer` (a frame's first buffer); closed once released.",
        "frame": "The received :class:`pydmabuf.Frame` when the producer serves frames, else None.",
        "fence": "The producer's :class:`pydmabuf.SyncFile` that signals when the contents are ready, or None "
        "(then they are ready now); ``wait()`` waits for it.",
        "meta": "The bytes the producer passed to ``submit(meta=...)`` (empty without).",
        "seq": "The producer's number for this frame: 1, 2, ... in the order submitted; frames skipped for this "
        "consumer leave gaps.",
    }

    def __init__(self, consumer: Consumer, seq: int, item: Buffer | Frame, fence: SyncFile | None,
                 meta: bytes) -> None:
        self._consumer: Consumer | None = consumer
        self._map: Mapping | None = None
        self.seq = seq
        self.frame = item if isinstance(item, Frame) else None
        self.buffer = item.objects[0] if isinstance(item, Frame) else item  # the (first) buffer
        self.fence = fence
        self.meta = meta

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the producer's fence (returns at once without one). ``timeout``
        follows the library's rules with or without a fence: None or inf waits forever,
        negative or NaN is InvalidArgumentError, a non-number TypeError; TimeoutError
        when the fence has not signalled in time."""
        fence = self.fence
        if fence is None:
            deadline(timeout, "Delivery.wait")  # only checks: nothing to wait for
            return
        fence.wait(timeout)

    def map(self) -> Mapping:
        """The read-only mapping of the (first) buffer (made once)."""
        m = self._map
        if m is None:
            m = self._map = self.buffer.map(write=False)
        return m

    @property
    def released(self) -> bool:
        """True once ``release()`` has run (also at the end of ``with delivery:``)."""
        return self._consumer is None

    def release(self) -> None:
        """Close the mapping, buffers and fence and hand them back. Idempotent; after
        the producer is gone it only closes."""
        consumer = self._consumer
        if consumer is None:
            return
        if self._map is not None:
            self._map.close()  # BufferError while a memoryview of it is alive
            self._map = None
        self._consumer = None
        if self.frame is not None:
            self.frame.close()
        else:
            self.buffer.close()
        if self.fence is not None:
            self.fence.close()
        consumer._release(self.seq)

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        if self._consumer is not None:  # dropped without release(): release it now
            with contextlib.suppress(Exception):
                self.release()

    def __repr__(self) -> str:
        what = repr(self.frame) if self.frame is not None else f"size={self.buffer.size}"
        state = "released" if self._consumer is None else what
        return f"<Delivery seq={self.seq} {state} fence={self.fence is not None}>"


class Consumer:
    """The receiving end: ``receive()`` returns Frames, then None at end of stream;
    ``end_reason`` then says whether the producer closed the stream, vanished or
    disconnected this consumer for falling behind. A producer that refused this
    consumer makes ``receive()`` raise PermissionDeniedError (and never sends a frame).

    ``Consumer(sock)`` wraps a connected socket you trust (check it with
    :func:`pydmabuf.credentials.check_peer`); ``connect`` checks the producer itself.
    After ``close()``, ``receive`` and ``fileno`` raise ClosedError."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = None
        if not isinstance(sock, socket.socket):
            raise TypeError(f"Consumer() needs a connected socket, got {type(sock).__name__}")
        if sock.family != socket.AF_UNIX or sock.fileno() < 0:
            raise invalid("Consumer() needs an open, connected AF_UNIX socket")
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, _POLLIN)
        self._producer = "the producer"
        self._refused = False
        self.end_reason: str | None = None

    @classmethod
    def connect(cls, path: str, *, timeout: float | None = 5.0,
                allow_uids: Iterable[int] | None = None, protocol: str = "pydmabuf") -> Consumer:
        """Connect to a producer's ``path``, retrying until it listens or ``timeout``
        (TimeoutError). The producer must run as this process's effective uid, as
        root, or as a uid in ``allow_uids``; else PermissionDeniedError.
        ``protocol="gstreamer"`` connects to GStreamer's ``unixfdsink socket-path=PATH``
        instead and returns a :class:`pydmabuf.gstreamer.GstConsumer` (its ``receive()``
        gives GstDelivery objects with the frame, caps and timestamps)."""
        if protocol == "gstreamer":
            from .gstreamer import GstConsumer

            return GstConsumer.connect(path, timeout=timeout, allow_uids=allow_uids)  # type: ignore[return-value]
        if protocol != "pydmabuf":
            raise invalid(f"protocol is 'pydmabuf' or 'gstreamer', got {protocol!r}")
        address = _address(path)
        until = deadline(timeout, "Consumer.connect")
        uids = id_set(allow_uids, "allow_uids")
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS
                raise error(exc.errno or E.EIO, f"Consumer.connect({path!r}): socket()",
                            _fd_limit_hint(exc.errno, producer=False) if exc.errno in _FD_ERRNOS else None) from None
            try:
                sock.setblocking(False)  # a full backlog is EAGAIN, not an endless wait
                sock.connect(address)
            except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as exc:
                sock.close()
                if expired(until):
                    raise timed_out(f"connecting to producer at {path!r} ({exc.strerror})") from None
                time.sleep(0.005)
                continue
            except OSError as exc:  # EACCES on another user's socket file, ENOTDIR, ...
                sock.close()
                hint = ("path sockets are owner-only (0600): run as the producer's user, or use an "
                        "abstract '@name' with allow_uids= on the producer"
                        if exc.errno in (E.EACCES, E.EPERM) else None)
                raise error(exc.errno or E.EINVAL, f"Consumer.connect({path!r})", hint) from None
            except BaseException:
                sock.close()
                raise
            try:
                sock.setblocking(True)
                cls._check_producer(sock, path, uids)
                consumer = cls(sock)
            except BaseException:
                sock.close()
                raise
            consumer._producer = f"the producer at {path!r}"
            return consumer

    @staticmethod
    def _check_producer(sock: socket.socket, path: str, uids: frozenset[int]) -> None:
        try:
            check_peer(sock, allow_uids=uids, allow_root=True)
        except PermissionDeniedError:
            creds = peer_credentials(sock)
            raise PermissionDeniedError(
                E.EACCES,
                f"Consumer.connect: the producer at {path!r} (pid {creds.pid}) runs as uid {creds.uid}, "
                f"not as this process's uid {os.geteuid()} or root; it could be anyone's "
                f"(pass allow_uids=[{creds.uid}] to Consumer.connect to trust it)") from None

    @property
    def ended(self) -> bool:
        """True once the stream has ended (``receive`` returns None or raises the refusal);
        ``end_reason`` says why."""
        return self.end_reason is not None

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
        return self._sock is None

    def fileno(self) -> int:
        """The socket's fd, readable when a message waits (for poll/select); ClosedError after ``close()``."""
        if self._sock is None:
            raise closed("Consumer")
        return self._sock.fileno()

    def _refusal(self) -> PermissionDeniedError:
        return PermissionDeniedError(
            E.EACCES,
            f"Consumer.receive: {self._producer} refused this consumer (uid {os.geteuid()}, "
            f"gid {os.getegid()}) and sends it nothing (a producer admits its own uid only; start it "
            f"with allow_uids=[{os.geteuid()}] or allow_gids=[{os.getegid()}] to admit this one)")

    def receive(self, timeout: float | None = None) -> Delivery | None:
        """The next frame; None once the stream has ended (see ``end_reason``).
        TimeoutError after ``timeout`` seconds (None waits forever)."""
        sock = self._sock
        if sock is None:
            raise closed("Consumer")
        if self.end_reason is not None:
            if self._refused:
                raise self._refusal()
            return None
        if timeout is not None:
            until = deadline(timeout, "Consumer.receive")
            poll = self._poller.poll
            while not poll(remaining_ms(until)):
                if expired(until):
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
        if data[:1] == _FRAME_KIND and len(data) >= _HEADER_SIZE and 1 <= n <= 2 and type(objects[0]) in _ITEMS \
                and (n == 1 or type(objects[1]) is SyncFile):
            return Delivery(self, _unpack_seq(data, 1)[0], objects[0],  # type: ignore[arg-type]
                            objects[1] if n == 2 else None, data[_HEADER_SIZE:])  # type: ignore[arg-type]
        if not objects:
            if data == _END:
                self.end_reason = "the producer ended the stream"
                return None
            if data == _EVICTED:
                self.end_reason = ("the producer disconnected this consumer for falling behind "
                                   "(frames held unreleased, or not read fast enough)")
                log.warning("consumer: %s", self.end_reason)
                return None
            if data == _REFUSED:
                self.end_reason = f"{self._producer} refused this consumer"
                self._refused = True
                raise self._refusal()
        for obj in objects:
            obj.close()
        raise share.ProtocolError(E.EPROTO, "not a channel frame")

    def _release(self, seq: int) -> None:
        sock = self._sock
        if sock is None or self.end_reason is not None:
            return
        try:
            sock.send(_release(seq), _SEND_NOWAIT)
        except _GONE:
            pass  # the producer is gone; receive() reports it
        except BlockingIOError:
            # The producer has not read hundreds of releases: it is stuck, and a
            # release must not make us wait for it. It keeps that buffer until we close.
            log.warning("consumer: the producer is not reading releases; frame %d stays held", seq)

    def close(self) -> None:
        """Say goodbye (the producer releases whatever this consumer still holds) and
        close. Frames not yet released keep their buffers open until released."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self.end_reason is None:
            with contextlib.suppress(OSError):
                sock.send(wire.GOODBYE, _SEND_NOWAIT)
        sock.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
