"""Buffers and SyncFiles over a connected AF_UNIX socket (SCM_RIGHTS).

One ``send`` is one ``sendmsg``: a small versioned header describing each object,
an optional opaque ``data`` payload, and the fds as one SCM_RIGHTS message. ``recv``
is one ``recvmsg`` (two on SOCK_STREAM, where the header carries its own length)
with MSG_CMSG_CLOEXEC, so received fds are close-on-exec from the start.

Trust ends at the socket: ``recv`` believes nothing the peer says about an fd. Each
fd is classified from the file itself (``buffer_backend``/``fence_backend``: one or
two syscalls), so a buffer is a real dma-buf or a memfd sealed against shrinking,
at least as large as the header says, and a fence is a sync_file or the fallback's
fence kind; the backend that applies follows the fd, not the header. Nothing is ever
written to a received fd: a name in the header is data, remembered in this process.
A stream peer that stops in the middle of a message gets ``MESSAGE_REST_TIMEOUT``
seconds to finish it. Anything wrong raises :class:`ProtocolError` after closing
every received fd.

Wire format, little endian: ``b"DB", version, count, data_len:u16, total_len:u16``,
then per object ``kind:u8, backend:u8, name_len:u8, pad, size:u64, offset:u64, name``,
then ``data``. The fds follow the objects' order. A Frame is a record of kind 3 whose
name bytes hold its descriptor, followed by its buffers' records; ``count`` counts
records.
"""

from __future__ import annotations

import _socket
import array
import builtins
import errno as E
import mmap
import os
import select
import socket
import struct
import sys
import time

from ._fd import hold, release
from .backends import buffer_backend, fence_backend
from .buffer import NAME_MAX, Buffer, buffer_parts, new_buffer
from .errors import Error, closed, error, invalid, timed_out
from .frame import Frame, Plane
from .syncfile import SyncFile, new_sync_file
from .uapi import wait as _wait

Shareable = Buffer | SyncFile | Frame

__all__ = ["MAX_DATA", "MAX_OBJECTS", "MESSAGE_REST_TIMEOUT", "VERSION", "ProtocolError", "recv",
           "recv_data", "send"]

VERSION = 1
MAX_OBJECTS = 253  # SCM_MAX_FD: the kernel's limit of fds per message
MAX_DATA = 4096
# Seconds a SOCK_STREAM peer has to deliver the rest of a message once its first
# bytes arrived; after that the message is a ProtocolError. Read at each call.
MESSAGE_REST_TIMEOUT = 5.0
_MAGIC = b"DB"
_PREFIX = struct.Struct("<2sBBHH")
_OBJ = struct.Struct("<BBBxQQ")
_KIND_BUFFER, _KIND_SYNC_FILE, _KIND_FRAME = 1, 2, 3
# A frame is a descriptor record (no fd) followed by the records of its 1-4 buffers;
# the descriptor rides in the record's name bytes: width, height, fourcc, modifier,
# object count, plane count, then per plane (object index, offset, pitch).
_FRAME_HEAD = struct.Struct("<IIIQBB")
_FRAME_PLANE = struct.Struct("<BQI")
_BACKENDS = ("kernel", "fallback")  # wire codes are indexes; informative only
_BACKEND_CODE = {name: code for code, name in enumerate(_BACKENDS)}
_MAX_MSG = _PREFIX.size + MAX_OBJECTS * (_OBJ.size + NAME_MAX) + MAX_DATA
_ANC = socket.CMSG_SPACE(MAX_OBJECTS * 4)
_PAGE_MASK = mmap.PAGESIZE - 1
# Plain ints: the socket module's constants are enums, whose operators are slow.
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SEND_FLAGS = int(socket.MSG_NOSIGNAL)
_DONTWAIT = int(socket.MSG_DONTWAIT)
_STREAM = int(socket.SOCK_STREAM)
_UNIX = int(socket.AF_UNIX)
_SOL, _RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)
_CTRUNC = int(socket.MSG_CTRUNC)
_POLLIN = select.POLLIN
_sock_type = _socket.socket.type.__get__  # the raw int; socket.socket.type builds an enum
_sock_family = _socket.socket.family.__get__
_ONE = struct.Struct("<2sBBHHBBBxQQ")  # the whole of a one-object message
_ONE_SIZE = _ONE.size
_pack_fd = struct.Struct("i").pack
_int_from_bytes = int.from_bytes
_ORDER = sys.byteorder
_pack_one = _ONE.pack
_unpack_one = _ONE.unpack_from
_pack_prefix = _PREFIX.pack
_unpack_prefix = _PREFIX.unpack_from
_pack_obj = _OBJ.pack
_unpack_obj = _OBJ.unpack_from
_monotonic = time.monotonic


class ProtocolError(Error):
    """What arrived on the socket is not a valid pydmabuf message; every fd that
    came with it has been closed."""


def _protocol(message: str, code: int = E.EPROTO) -> ProtocolError:
    return ProtocolError(code, message)


# --- sending -----------------------------------------------------------------------

def send(sock: socket.socket, *objects: Shareable, data: bytes = b"") -> None:
    """Send ``objects`` (and an opaque ``data`` payload of up to MAX_DATA bytes) as
    one message over a connected AF_UNIX socket. The objects stay yours; the receiver
    gets new fds for the same files, with the access mode of yours (a read-write fd
    lets the receiver write the buffer). Blocks like ``sock.sendmsg`` does. Each object
    is held while it is sent, so a ``close()`` in another thread cannot swap the file.

    TypeError: ``sock`` is not a socket or ``data`` is not bytes; InvalidArgumentError:
    not an AF_UNIX socket, an object that is not a Buffer or SyncFile, too many objects
    or too much data; ClosedError: the socket or an object is closed. Socket failures
    (BrokenPipeError, ...) are raised as the socket module raises them."""
    try:
        family = _sock_family(sock)
    except TypeError:
        raise TypeError(f"send() needs a socket, got {type(sock).__name__}") from None
    if family != _UNIX:  # other families drop SCM_RIGHTS silently (UDP) or refuse it
        raise invalid(f"send() needs an AF_UNIX socket, got family {sock.family!r}")
    if len(objects) == 1 and type(data) is bytes and len(data) <= MAX_DATA:
        obj = objects[0]
        if type(obj) is Buffer:
            fd = hold(obj)  # ClosedError if closed
            try:
                backend, size, offset = buffer_parts(obj)
                if not backend.local_name(fd):
                    total = _ONE_SIZE + len(data)
                    msg = _pack_one(_MAGIC, VERSION, 1, len(data), total, _KIND_BUFFER,
                                    _BACKEND_CODE[backend.name], 0, size, offset)
                    if data:
                        msg += data
                    _sendmsg(sock, msg, [(_SOL, _RIGHTS, _pack_fd(fd))], total)
                    return
            finally:
                release(obj)
    _send_any(sock, objects, data)


def _send_any(sock: socket.socket, objects: tuple[Shareable, ...], data: bytes) -> None:
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
    if len(data) > MAX_DATA:
        raise invalid(f"data is at most {MAX_DATA} bytes, got {len(data)}")
    for obj in objects:
        if not isinstance(obj, (Buffer, SyncFile, Frame)):
            raise invalid(f"send() takes Buffers, SyncFiles and Frames, got {type(obj).__name__}")
    records = _flatten(objects)
    if sum(not isinstance(r, bytes) for r in records) > MAX_OBJECTS:
        raise invalid(f"at most {MAX_OBJECTS} buffers and fences per message (SCM_MAX_FD)")
    parts = []
    fds = []
    held: list[Buffer | SyncFile] = []
    try:
        for record in records:
            if isinstance(record, bytes):  # a frame's descriptor record
                parts.append(record)
                continue
            obj = record
            fd = hold(obj)  # ClosedError if closed
            held.append(obj)
            if isinstance(obj, Buffer):
                # Names live on the file (dma-buf name, memfd xattr) and travel with it;
                # only a fallback on a kernel without tmpfs user xattrs keeps them here.
                backend, size, offset = buffer_parts(obj)
                name = backend.local_name(fd)
                parts.append(_pack_obj(_KIND_BUFFER, _BACKEND_CODE[backend.name], len(name), size, offset) + name)
            else:
                parts.append(_pack_obj(_KIND_SYNC_FILE, _BACKEND_CODE[obj.backend], 0, 0, 0))
            fds.append(fd)
        total = _PREFIX.size + sum(map(len, parts)) + len(data)
        if total > _MAX_MSG:
            raise invalid(f"a message of {total} bytes is over the {_MAX_MSG} a receiver reads")
        parts.insert(0, _pack_prefix(_MAGIC, VERSION, len(records), len(data), total))
        if data:
            parts.append(data)
        _sendmsg(sock, b"".join(parts), [(_SOL, _RIGHTS, array.array("i", fds))] if fds else [], total)
    finally:
        for obj in held:
            release(obj)


def _frame_record(frame: Frame) -> bytes:
    """A frame's descriptor record (kind 3); ClosedError if the frame is closed."""
    planes = frame.planes  # ClosedError if closed
    desc = _FRAME_HEAD.pack(frame.width, frame.height, frame.format.fourcc, frame.modifier,
                            len(frame.objects), len(planes))
    desc += b"".join(_FRAME_PLANE.pack(*p) for p in planes)
    return _pack_obj(_KIND_FRAME, 0, len(desc), 0, 0) + desc


def _flatten(objects: tuple[Shareable, ...]) -> list[Buffer | SyncFile | bytes]:
    out: list[Buffer | SyncFile | bytes] = []
    for obj in objects:
        if isinstance(obj, Frame):
            out.append(_frame_record(obj))
            out.extend(obj.objects)
        else:
            out.append(obj)
    return out


def _sendmsg(sock: socket.socket, msg: bytes, anc: list[tuple[int, int, bytes | array.array[int]]],
             total: int) -> None:
    try:
        sent = sock.sendmsg((msg,), anc, _SEND_FLAGS)
        if sent != total:  # SOCK_STREAM may take part of it; the fds went with the first byte
            sock.sendall(msg[sent:], _SEND_FLAGS)
    except OSError as exc:
        if exc.errno == E.EBADF:
            raise closed("socket" if sock.fileno() < 0 else "object (closed while sending)") from None
        # A pydmabuf error that is still the builtin (BrokenPipeError, ...) for the errno.
        raise error(exc.errno or E.EIO, "sendmsg", _SOCKET_HINTS.get(exc.errno or 0)) from None


# --- receiving ---------------------------------------------------------------------

def recv(sock: socket.socket, *, timeout: float | None = None, verify: bool = True
         ) -> list[Shareable]:
    """Receive one message sent by :func:`send`: ready-to-use Buffers and SyncFiles
    (close-on-exec), in the order sent. EOFError when the peer has closed.

    Every fd is verified from the file itself: a buffer must be a real dma-buf (any
    exporter) or a memfd sealed against shrinking, large enough for the header's size
    and page-aligned offset; a fence a sync_file or a fallback fence. Each object
    gets the backend its fd's kind implies. Anything else is :class:`ProtocolError`,
    with every received fd closed; nothing is ever written to a received fd.

    ``timeout`` bounds the wait for a message to start (:class:`pydmabuf.TimeoutError`,
    nothing consumed); on SOCK_STREAM the rest of a started message must follow within
    ``MESSAGE_REST_TIMEOUT`` seconds, else ProtocolError (the stream is then out of
    step: close the socket), and bytes that cannot begin a header (not the magic and
    this version) are ProtocolError at once, before any length they declare is waited
    for. ``verify`` is accepted for compatibility and does nothing: verification is
    always on.

    TypeError: ``sock`` is not a socket; ClosedError: it is closed."""
    return recv_data(sock, timeout=timeout)[0]


def recv_data(sock: socket.socket, *, timeout: float | None = None, verify: bool = True
              ) -> tuple[list[Shareable], bytes]:
    """Like :func:`recv`, and also the ``data`` payload."""
    try:
        stream = _sock_type(sock) == _STREAM
        family = _sock_family(sock)
    except TypeError:
        raise TypeError(f"recv() needs a socket, got {type(sock).__name__}") from None
    if family != _UNIX:
        raise invalid(f"recv() needs an AF_UNIX socket, got family {sock.family!r}")
    if timeout is not None:
        _wait_for_message(sock, timeout)
    try:
        msg, anc, flags, _addr = sock.recvmsg(_PREFIX.size if stream else _MAX_MSG, _ANC, _CLOEXEC)
    except OSError as exc:
        if exc.errno == E.EBADF and sock.fileno() < 0:
            raise closed("socket") from None
        raise error(exc.errno or E.EIO, "recvmsg", _SOCKET_HINTS.get(exc.errno or 0)) from None
    if not anc:
        fds = []
    elif len(anc) == 1 and len(anc[0][2]) == 4 and anc[0][1] == _RIGHTS and anc[0][0] == _SOL:
        fds = [_int_from_bytes(anc[0][2], _ORDER)]  # one fd: the commonest case
    else:
        fds = _fds(anc)
    out: list[Shareable] = []  # objects that own received fds
    try:
        if not msg:
            if fds:  # SOCK_SEQPACKET carries empty messages; end of stream brings no fds
                raise _protocol("an empty message carrying fds")
            raise EOFError("the peer closed the connection")
        if flags & _CTRUNC:
            raise _protocol("control data truncated (MSG_CTRUNC): fds were lost in transit")
        if stream:
            msg = _read_rest(sock, msg)
        length = len(msg)
        if length >= _ONE_SIZE and len(fds) == 1:
            # The commonest message, one unnamed object, in one unpack.
            magic, version, count, dlen, total, kind, code, nlen, size, offset = _unpack_one(msg)
            if total == length == _ONE_SIZE + dlen and magic == _MAGIC and version == VERSION \
                    and count == 1 and nlen == 0 and code < 2:
                if kind == _KIND_BUFFER:
                    out.append(_buffer(fds[0], size, offset))
                    return out, msg[_ONE_SIZE:] if dlen else b""
                if kind == _KIND_SYNC_FILE:
                    out.append(_fence(fds[0]))
                    return out, msg[_ONE_SIZE:] if dlen else b""
        return _parse(msg, fds, out)
    except BaseException:
        for obj in out:  # they own their fds now: take them back, then close everything
            for part in obj.objects if isinstance(obj, Frame) else (obj,):
                part.detach()
        for fd in fds:
            os.close(fd)
        raise


_SOCKET_HINTS = {E.ENOTCONN: "the socket must be connected (socketpair, connect or accept)"}


def _wait_for_message(sock: socket.socket, timeout: float) -> None:
    until = _wait.deadline(timeout, "recv")
    fd = sock.fileno()
    if fd < 0:
        raise closed("socket")
    poller = select.poll()
    poller.register(fd, _POLLIN)
    while not poller.poll(_wait.remaining_ms(until)):  # any event: recvmsg tells which
        if _wait.expired(until):
            raise timed_out("recv")


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    if len(anc) == 1:
        level, kind, payload = anc[0]
        if level == _SOL and kind == _RIGHTS and not len(payload) % 4:
            return array.array("i", payload).tolist()
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == _SOL and kind == _RIGHTS:
            fds.extend(memoryview(payload)[: len(payload) - len(payload) % 4].cast("i").tolist())
    return fds


def _read_rest(sock: socket.socket, msg: bytes) -> bytes:
    """The rest of a stream message whose first bytes are ``msg``, within
    MESSAGE_REST_TIMEOUT of now. What is not a pydmabuf header (magic, version) is
    refused from the bytes already here, before waiting for any more: garbage must
    not make the receiver wait for a length it declares."""
    _check_start(msg)
    until = _monotonic() + MESSAGE_REST_TIMEOUT
    if len(msg) < _PREFIX.size:
        if len(msg) < _VERSION_END:  # too little to judge yet: the magic and version first
            msg = _read_until(sock, msg, _VERSION_END, until)
            _check_start(msg)
        msg = _read_until(sock, msg, _PREFIX.size, until)
    total = _unpack_prefix(msg)[4]
    if total < _PREFIX.size or total > _MAX_MSG:
        raise _protocol(f"bad message length {total}")
    if len(msg) < total:
        msg = _read_until(sock, msg, total, until)
    return msg


_VERSION_END = len(_MAGIC) + 1  # the magic, then the version byte


def _check_start(msg: bytes) -> None:
    """ProtocolError unless ``msg`` (the first bytes of a stream message, however
    few) can begin a pydmabuf header: the magic, then this VERSION."""
    if msg[:2] != _MAGIC[:len(msg)]:
        raise _protocol(f"not a pydmabuf message (magic {msg[:2]!r}, not {_MAGIC!r})")
    if len(msg) >= _VERSION_END and msg[2] != VERSION:
        raise _protocol(f"message version {msg[2]}, this pydmabuf speaks {VERSION}")


def _read_until(sock: socket.socket, msg: bytes, need: int, until: float) -> bytes:
    poller = None
    while len(msg) < need:
        try:
            more = sock.recv(need - len(msg), _DONTWAIT)  # no poll while data is there
        except (BlockingIOError, builtins.TimeoutError):
            if poller is None:
                poller = select.poll()
                poller.register(sock.fileno(), _POLLIN)
            if not poller.poll(_wait.remaining_ms(until)) and _monotonic() >= until:
                raise _protocol(
                    f"the peer sent {len(msg)} bytes of a {need}-byte message and nothing more "
                    f"for {MESSAGE_REST_TIMEOUT:g} s; the stream is out of step, close the socket"
                ) from None
            continue
        except OSError as exc:  # a reset peer, ...: the library's error for the errno
            raise error(exc.errno or E.EIO, "recv", _SOCKET_HINTS.get(exc.errno or 0)) from None
        if not more:
            raise _protocol("connection closed inside a message")
        msg += more
    return msg


def _buffer(fd: int, size: int, offset: int) -> Buffer:
    """A Buffer over received ``fd`` once the file itself shows it is one, with room
    for ``size`` bytes at ``offset``; the backend is the one its kind implies."""
    try:
        backend, real_size = buffer_backend(fd)
    except Error as exc:
        raise _protocol(f"an object sent as a buffer is not one: {exc.strerror}") from None
    if size <= 0 or offset & _PAGE_MASK or offset + size > real_size:
        raise _protocol(f"buffer of {size} bytes at offset {offset} does not fit its fd "
                        f"({real_size} bytes; the offset must be page-aligned)")
    return new_buffer(fd, size, backend, offset)


def _fence(fd: int) -> SyncFile:
    try:
        backend = fence_backend(fd)
    except Error as exc:
        raise _protocol(f"an object sent as a fence is not one: {exc.strerror}") from None
    return new_sync_file(fd, backend)


def _parse(msg: bytes, fds: list[int], out: list[Shareable]
           ) -> tuple[list[Shareable], bytes]:
    """Every other message; objects are appended to ``out`` as they are verified so
    that the caller can take their fds back if a later one fails."""
    if len(msg) < _PREFIX.size:
        raise _protocol(f"message of {len(msg)} bytes is shorter than the header")
    magic, version, count, data_len, total = _unpack_prefix(msg)
    if magic != _MAGIC:
        raise _protocol(f"not a pydmabuf message (magic {magic!r})")
    if version != VERSION:
        raise _protocol(f"message version {version}, this pydmabuf speaks {VERSION}")
    if total != len(msg):
        raise _protocol(f"message length {len(msg)} but header says {total}")
    if count < len(fds):
        raise _protocol(f"header announces {count} objects but {len(fds)} fds arrived")
    pos = _PREFIX.size
    end = total - data_len
    used = 0  # fds taken so far
    frame: tuple[bytes, int] | None = None  # a descriptor still collecting its buffers
    for _ in range(count):
        if pos + _OBJ.size > end:
            raise _protocol("header truncated inside an object description")
        kind, code, name_len, size, offset = _unpack_obj(msg, pos)
        pos += _OBJ.size + name_len
        if pos > end or code >= len(_BACKENDS):
            raise _protocol("malformed object description")
        if kind == _KIND_FRAME:
            if frame is not None:
                raise _protocol("a frame inside a frame")
            frame = (msg[pos - name_len:pos], len(out))
            continue
        if used == len(fds):
            raise _protocol(f"header announces {count} objects but {len(fds)} fds arrived")
        fd = fds[used]
        used += 1
        if kind == _KIND_BUFFER:
            name = msg[pos - name_len:pos]
            if name_len > NAME_MAX or b"\0" in name:
                raise _protocol(f"buffer name of {name_len} bytes: at most {NAME_MAX}, no NUL")
            buf = _buffer(fd, size, offset)
            out.append(buf)
            if name_len:  # the name lived in the sender's process only: keep it here too
                buffer_parts(buf)[0].note_name(fd, name)
        elif kind == _KIND_SYNC_FILE:
            if frame is not None:
                raise _protocol("a fence among a frame's buffers")
            out.append(_fence(fd))
        else:
            raise _protocol(f"unknown object kind {kind}")
        if frame is not None:
            frame = _maybe_frame(frame, out)
    if frame is not None:
        raise _protocol("a frame without all its buffers")
    if used != len(fds):
        raise _protocol(f"header announces {count} objects but {len(fds)} fds arrived")
    if pos != end:
        raise _protocol("trailing bytes after the object descriptions")
    return out, msg[end:] if data_len else b""


def _maybe_frame(frame: tuple[bytes, int], out: list[Shareable]) -> tuple[bytes, int] | None:
    """Once a frame's buffers have all arrived (the last ones in ``out``), replace them
    in ``out`` by the Frame; a descriptor the buffers don't bear out is ProtocolError
    (the buffers stay in ``out`` for the caller to close)."""
    desc, first = frame
    if len(desc) < _FRAME_HEAD.size:
        raise _protocol("frame descriptor truncated")
    width, height, fourcc, modifier, n_objects, n_planes = _FRAME_HEAD.unpack_from(desc)
    if len(desc) != _FRAME_HEAD.size + n_planes * _FRAME_PLANE.size or not 1 <= n_objects <= 4:
        raise _protocol("malformed frame descriptor")
    if len(out) - first < n_objects:
        return frame
    planes = [Plane(*_FRAME_PLANE.unpack_from(desc, _FRAME_HEAD.size + i * _FRAME_PLANE.size))
              for i in range(n_planes)]
    objects = out[first:]
    try:
        made = Frame(width, height, fourcc, objects, planes, modifier=modifier)  # type: ignore[arg-type]
    except (Error, ValueError, TypeError) as exc:
        raise _protocol(f"a frame descriptor its buffers do not bear out: {exc}") from None
    del out[first:]
    out.append(made)
    return None
