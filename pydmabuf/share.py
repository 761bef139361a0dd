"""Buffers and SyncFiles over a connected AF_UNIX socket (SCM_RIGHTS).

One ``send`` is one ``sendmsg``: a small versioned header describing each object,
an optional opaque ``data`` payload, and the fds as one SCM_RIGHTS message. ``recv``
is one ``recvmsg`` (two on SOCK_STREAM, where the header carries its own length)
with MSG_CMSG_CLOEXEC, so received fds are close-on-exec from the start. Anything
wrong with what arrived (truncated control data, a malformed header, fds that do
not match the header) raises :class:`ProtocolError` after closing every received fd.

Wire format, little endian: ``b"DB", version, count, data_len:u16, total_len:u16``,
then per object ``kind:u8, backend:u8, name_len:u8, pad, size:u64, offset:u64, name``,
then ``data``. The fds follow the objects' order.
"""

from __future__ import annotations

import _socket
import array
import errno as E
import os
import socket
import struct
import sys

from .backends import Backend, get_backend
from .buffer import Buffer
from .errors import Error, invalid
from .syncfile import SyncFile

__all__ = ["MAX_DATA", "MAX_OBJECTS", "VERSION", "ProtocolError", "recv", "recv_data", "send"]

VERSION = 1
MAX_OBJECTS = 253  # SCM_MAX_FD: the kernel's limit of fds per message
MAX_DATA = 4096
_MAGIC = b"DB"
_PREFIX = struct.Struct("<2sBBHH")
_OBJ = struct.Struct("<BBBxQQ")
_KIND_BUFFER, _KIND_SYNC_FILE = 1, 2
_BACKENDS = ("kernel", "fallback")  # wire codes are indexes
_BACKEND_CODE = {name: code for code, name in enumerate(_BACKENDS)}
_MAX_MSG = _PREFIX.size + MAX_OBJECTS * (_OBJ.size + 31) + MAX_DATA
_ANC = socket.CMSG_SPACE(MAX_OBJECTS * 4)
# Plain ints: the socket module's constants are enums, whose operators are slow.
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SEND_FLAGS = int(socket.MSG_NOSIGNAL)
_STREAM = int(socket.SOCK_STREAM)
_SOL, _RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)
_CTRUNC = int(socket.MSG_CTRUNC)
_sock_type = _socket.socket.type.__get__  # the raw int; socket.socket.type builds an enum
_ONE = struct.Struct("<2sBBHHBBBxQQ")  # the whole of a one-object message
_ONE_SIZE = _ONE.size
_pack_fd = struct.Struct("i").pack
_int_from_bytes = int.from_bytes
_ORDER = sys.byteorder
_pack_one = _ONE.pack
_unpack_one = _ONE.unpack_from
_pack_prefix = _PREFIX.pack
_pack_obj = _OBJ.pack
_unpack_obj = _OBJ.unpack_from


_backends: list[Backend | None] = [None] * len(_BACKENDS)


def _backend(code: int) -> Backend:
    backend = _backends[code]
    if backend is None:
        backend = _backends[code] = get_backend(_BACKENDS[code])
    return backend


class ProtocolError(Error):
    """What arrived on the socket is not a valid pydmabuf message; every fd that
    came with it has been closed."""


def _protocol(message: str, code: int = E.EPROTO) -> ProtocolError:
    return ProtocolError(code, message)


def _in_process_name(backend: Backend, fd: int) -> bytes:
    # Both backends keep a buffer's name on the shared file (dma-buf name, memfd
    # xattr), so it travels with the fd for free. Only a fallback on a kernel without
    # tmpfs user xattrs (< 6.6) keeps names in this process; then the header carries it.
    if not getattr(backend, "_names", None):
        return b""
    name = backend.buffer_name(fd)
    return name.encode() if name else b""


def send(sock: socket.socket, *objects: Buffer | SyncFile, data: bytes = b"") -> None:
    """Send ``objects`` (and an opaque ``data`` payload of up to MAX_DATA bytes) as
    one message. The objects stay yours; the receiver gets new fds for the same
    files. Blocks like ``sock.sendmsg`` does."""
    if len(objects) == 1 and len(data) <= MAX_DATA:
        obj = objects[0]
        if type(obj) is Buffer and obj._fd >= 0 and not getattr(obj._backend, "_names", None):
            fd = obj._fd
            total = _ONE.size + len(data)
            msg = _pack_one(_MAGIC, VERSION, 1, len(data), total, _KIND_BUFFER,
                            _BACKEND_CODE[obj._backend.name], 0, obj._size, obj._offset)
            if data:
                msg += data
            sent = sock.sendmsg((msg,), [(_SOL, _RIGHTS, _pack_fd(fd))], _SEND_FLAGS)
            if sent != total:
                sock.sendall(msg[sent:], _SEND_FLAGS)
            return
    if len(objects) > MAX_OBJECTS:
        raise invalid(f"at most {MAX_OBJECTS} objects per message (SCM_MAX_FD), got {len(objects)}")
    if len(data) > MAX_DATA:
        raise invalid(f"data is at most {MAX_DATA} bytes, got {len(data)}")
    parts = []
    fds = []
    for obj in objects:
        if not isinstance(obj, (Buffer, SyncFile)):
            raise invalid(f"send() takes Buffers and SyncFiles, got {type(obj).__name__}")
        fd = obj.fileno()  # ClosedError if closed
        backend = obj._backend
        if isinstance(obj, Buffer):
            name = _in_process_name(backend, fd)
            parts.append(_pack_obj(_KIND_BUFFER, _BACKEND_CODE[backend.name], len(name),
                                   obj._size, obj._offset))
            if name:
                parts.append(name)
        else:
            parts.append(_pack_obj(_KIND_SYNC_FILE, _BACKEND_CODE[backend.name], 0, 0, 0))
        fds.append(fd)
    total = _PREFIX.size + sum(map(len, parts)) + len(data)
    parts.insert(0, _pack_prefix(_MAGIC, VERSION, len(objects), len(data), total))
    if data:
        parts.append(data)
    msg = b"".join(parts)
    anc = [(_SOL, _RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg((msg,), anc, _SEND_FLAGS)
    if sent != total:  # SOCK_STREAM may take part of it; the fds went with the first byte
        sock.sendall(msg[sent:], _SEND_FLAGS)


def recv(sock: socket.socket, *, verify: bool = False) -> list[Buffer | SyncFile]:
    """Receive one message sent by :func:`send`: ready-to-use Buffers and SyncFiles
    (close-on-exec), in the order sent. EOFError when the peer has closed.

    The header is trusted for sizes, as between cooperating processes; ``verify=True``
    also checks each fd against its backend (one or two extra syscalls per object)."""
    return recv_data(sock, verify=verify)[0]


def recv_data(sock: socket.socket, *, verify: bool = False) -> tuple[list[Buffer | SyncFile], bytes]:
    """Like :func:`recv`, and also the ``data`` payload."""
    stream = _sock_type(sock) == _STREAM
    msg, anc, flags, _addr = sock.recvmsg(_PREFIX.size if stream else _MAX_MSG, _ANC, _CLOEXEC)
    if not anc:
        fds = []
    elif len(anc) == 1 and len(anc[0][2]) == 4 and anc[0][1] == _RIGHTS and anc[0][0] == _SOL:
        fds = [_int_from_bytes(anc[0][2], _ORDER)]  # one fd: the commonest case
    else:
        fds = _fds(anc)
    try:
        if not msg:
            raise EOFError("the peer closed the connection")
        if flags & _CTRUNC:
            raise _protocol("control data truncated (MSG_CTRUNC): fds were lost in transit")
        if stream:
            msg = _read_rest(sock, msg)
        length = len(msg)
        if length >= _ONE_SIZE and len(fds) == 1 and not verify:
            # The commonest message, one unnamed object, in one unpack.
            magic, version, count, dlen, total, kind, code, nlen, size, offset = _unpack_one(msg)
            if total == length == _ONE_SIZE + dlen and magic == _MAGIC and version == VERSION \
                    and count == 1 and nlen == 0 and code < 2:
                data = msg[_ONE_SIZE:] if dlen else b""
                if kind == _KIND_BUFFER:
                    return [Buffer(fds[0], size, _backend(code), offset)], data
                if kind == _KIND_SYNC_FILE:
                    return [SyncFile(fds[0], _backend(code))], data
        return _parse(msg, fds, verify)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


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
    while len(msg) < _PREFIX.size:
        more = sock.recv(_PREFIX.size - len(msg))
        if not more:
            raise _protocol("connection closed inside a message header")
        msg += more
    total = _PREFIX.unpack(msg)[4]
    if total < _PREFIX.size or total > _MAX_MSG:
        raise _protocol(f"bad message length {total}")
    while len(msg) < total:
        more = sock.recv(total - len(msg))
        if not more:
            raise _protocol("connection closed inside a message")
        msg += more
    return msg


def _parse(msg: bytes, fds: list[int], verify: bool) -> tuple[list[Buffer | SyncFile], bytes]:
    if len(msg) < _PREFIX.size:
        raise _protocol(f"message of {len(msg)} bytes is shorter than the header")
    magic, version, count, data_len, total = _PREFIX.unpack_from(msg)
    if magic != _MAGIC:
        raise _protocol(f"not a pydmabuf message (magic {magic!r})")
    if version != VERSION:
        raise _protocol(f"message version {version}, this pydmabuf speaks {VERSION}")
    if total != len(msg):
        raise _protocol(f"message length {len(msg)} but header says {total}")
    if count != len(fds):
        raise _protocol(f"header announces {count} objects but {len(fds)} fds arrived")
    out: list[Buffer | SyncFile] = []
    pos = _PREFIX.size
    end = total - data_len
    try:
        for fd in fds:
            if pos + _OBJ.size > end:
                raise _protocol("header truncated inside an object description")
            kind, code, name_len, size, offset = _unpack_obj(msg, pos)
            pos += _OBJ.size + name_len
            if pos > end or code >= len(_BACKENDS):
                raise _protocol("malformed object description")
            backend = _backend(code)
            if kind == _KIND_BUFFER:
                if verify:
                    real_size, real_offset = backend.check_buffer(fd)
                    if offset + size > real_offset + real_size:
                        raise _protocol(f"buffer of {size} bytes at {offset} does not fit its fd")
                buf = Buffer(fd, size, backend, offset)
                out.append(buf)
                if name_len:  # the name lived in the sender's process only
                    backend.set_name(fd, msg[pos - name_len:pos])
            elif kind == _KIND_SYNC_FILE:
                if verify:
                    backend.check_sync_file(fd)
                out.append(SyncFile(fd, backend))
            else:
                raise _protocol(f"unknown object kind {kind}")
        if pos != end:
            raise _protocol("trailing bytes after the object descriptions")
    except BaseException:
        for obj in out:  # they own their fds now; the rest are closed by the caller
            obj.detach()
        raise
    return out, msg[end:] if data_len else b""
