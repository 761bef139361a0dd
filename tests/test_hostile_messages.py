"""A hostile peer on a pydmabuf socket: forged headers, fds that are not what they
claim, files that shrink, half messages, a peer of another uid.

The peer is built by hand (socket.sendmsg with SCM_RIGHTS and the wire format
spelled out below), so nothing in pydmabuf vouches for it. Each receiver runs in a
forked child, so a SIGBUS or a hang fails the test instead of killing the run; the
child reports through its exit status. The same tests run on the fallback natively
and on the kernel backend in the VM.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _procs import fork, join
from conftest import IN_VM, TIMELINE_MISSING, needs_timeline, open_fds

import pydmabuf
from pydmabuf import credentials, share
from pydmabuf.backends.fallback import NAME_XATTR

SIZE = 64 << 10
PAGE = os.sysconf("SC_PAGE_SIZE")
# The wire format (see pydmabuf/share.py), written out so that the forger does not
# borrow pydmabuf's own encoder.
PREFIX = struct.Struct("<2sBBHH")  # magic, version, count, data_len, total_len
OBJ = struct.Struct("<BBBxQQ")  # kind, backend, name_len, size, offset; then the name
BUFFER, FENCE = 1, 2
KERNEL, FALLBACK = 0, 1
CODE = KERNEL if pydmabuf.backend == "kernel" else FALLBACK
F_SEAL_SHRINK, F_SEAL_GROW = 0x2, 0x4
SOCK_TYPES = [socket.SOCK_SEQPACKET, socket.SOCK_STREAM]
SOCK_IDS = ["seqpacket", "stream"]
DEFAULT_REST_TIMEOUT = share.MESSAGE_REST_TIMEOUT  # before the fixture below shortens it

Obj = tuple[int, int, int, bytes]  # kind, size, offset, name


def forge(*objs: Obj, data: bytes = b"", code: int = CODE, version: int = share.VERSION,
          count: int | None = None, total_delta: int = 0) -> bytes:
    body = b"".join(OBJ.pack(kind, code, len(name), size, offset) + name for kind, size, offset, name in objs)
    total = PREFIX.size + len(body) + len(data)
    n = len(objs) if count is None else count
    return PREFIX.pack(b"DB", version, n, len(data), total + total_delta) + body + data


def send_raw(sock: socket.socket, msg: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([msg], anc)


@pytest.fixture(autouse=True)
def short_rest_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream message cut short is refused after 0.3 s instead of 5 (keeps the
    suite fast; forked receivers inherit it)."""
    monkeypatch.setattr(share, "MESSAGE_REST_TIMEOUT", 0.3)


def _identity(fd: int) -> tuple[int, int, int]:
    st = os.fstat(fd)
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def _mapped(identities: set[tuple[int, int, int]]) -> bool:
    """Whether this process maps any of these files."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            if (major, minor, int(fields[4])) in identities:
                return True
    return False


VICTIM_CODES = {2: "accepted the message", 3: "leaked received fds", 4: "mapped a received file",
                1: "raised something other than ProtocolError (traceback above)"}


def refused_in_child(sock: socket.socket, sent: list[int]) -> None:
    """recv() in a forked child must raise ProtocolError, with every received fd
    closed and none of the ``sent`` files mapped. A child that wrongly accepts maps
    and reads each buffer, as a user would: a bad fd then dies of SIGBUS."""
    identities = {_identity(fd) for fd in sent}

    def victim() -> int:
        before = open_fds()
        try:
            objects = pydmabuf.recv(sock, timeout=10)
        except share.ProtocolError:
            pass
        else:
            for obj in objects:
                if isinstance(obj, pydmabuf.Buffer):
                    with obj.map(write=False) as m:
                        sum(m[::PAGE])
                obj.close()
            return 2
        if open_fds() != before:
            return 3
        return 4 if _mapped(identities) else 0

    status = join(fork(victim), timeout=30)
    assert status == 0, f"receiver {VICTIM_CODES.get(status, f'died with status {status}')}"


@pytest.fixture(params=SOCK_TYPES, ids=SOCK_IDS)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, request.param)
    with a, b:
        yield a, b


# --- files that are not what the header says ---------------------------------------

def _memfd(stack: contextlib.ExitStack, seals: int = 0) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    stack.callback(os.close, fd)
    os.ftruncate(fd, SIZE)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _tcp(stack: contextlib.ExitStack) -> int:
    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s.fileno()


def _unix_stream(stack: contextlib.ExitStack) -> int:
    one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stack.enter_context(other)
    return stack.enter_context(one).fileno()


def _pipe(stack: contextlib.ExitStack) -> int:
    r, w = os.pipe()
    stack.callback(os.close, r)
    stack.callback(os.close, w)
    return r


def _opened(stack: contextlib.ExitStack, path: str | Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    stack.callback(os.close, fd)
    return fd


def _regular_file(stack: contextlib.ExitStack, tmp_path: Path) -> int:
    path = tmp_path / "root-owned"
    path.write_bytes(bytes(SIZE))
    path.chmod(0o644)
    return _opened(stack, path)


def _eventfd(stack: contextlib.ExitStack) -> int:
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    stack.callback(os.close, fd)
    return fd


def _buffer(stack: contextlib.ExitStack) -> int:
    heap = stack.enter_context(pydmabuf.Heap("system"))
    return stack.enter_context(heap.allocate(SIZE, name="own")).fileno()


def _timeline_fence(stack: contextlib.ExitStack) -> int:
    timeline = stack.enter_context(pydmabuf.Timeline())
    return stack.enter_context(timeline.fence(1)).fileno()


HOSTILE: dict[str, tuple[int, Callable[[contextlib.ExitStack, Path], int]]] = {
    # id: (kind in the header, what is actually sent)
    "tcp-socket-as-buffer": (BUFFER, lambda s, _t: _tcp(s)),
    "pipe-as-buffer": (BUFFER, lambda s, _t: _pipe(s)),
    "dev-zero-as-buffer": (BUFFER, lambda s, _t: _opened(s, "/dev/zero")),
    "regular-file-as-buffer": (BUFFER, _regular_file),
    "unsealed-memfd-as-buffer": (BUFFER, lambda s, _t: _memfd(s)),
    "grow-sealed-memfd-as-buffer": (BUFFER, lambda s, _t: _memfd(s, F_SEAL_GROW)),
    "eventfd-as-buffer": (BUFFER, lambda s, _t: _eventfd(s)),
    "buffer-as-fence": (FENCE, lambda s, _t: _buffer(s)),
    "sealed-memfd-as-fence": (FENCE, lambda s, _t: _memfd(s, F_SEAL_SHRINK | F_SEAL_GROW)),
    "pipe-as-fence": (FENCE, lambda s, _t: _pipe(s)),
    "tcp-socket-as-fence": (FENCE, lambda s, _t: _tcp(s)),
    "unix-stream-socket-as-fence": (FENCE, lambda s, _t: _unix_stream(s)),
    "dev-zero-as-fence": (FENCE, lambda s, _t: _opened(s, "/dev/zero")),
}


def _no_name_written(fd: int) -> None:
    with pytest.raises(OSError) as info:
        os.getxattr(fd, NAME_XATTR)
    assert info.value.errno in (errno.ENODATA, errno.EOPNOTSUPP)


# A name in the header takes the multi-object path instead of the one-object fast
# path: both must refuse. Names only matter for buffers.
WRONG_KIND = [(case, named) for case, (kind, _make) in HOSTILE.items() for named in (False, True)
              if kind == BUFFER or not named]


@pytest.mark.parametrize(("case", "named"), WRONG_KIND,
                         ids=[f"{case}-{'named' if named else 'unnamed'}" for case, named in WRONG_KIND])
def test_wrong_kind_of_file_is_refused(case: str, named: bool, tmp_path: Path,
                                       pair: tuple[socket.socket, socket.socket]) -> None:
    kind, make = HOSTILE[case]
    a, b = pair
    name = b"PWNED-BY-NOBODY" if named else b""
    with contextlib.ExitStack() as stack:
        fd = make(stack, tmp_path)
        send_raw(a, forge((kind, SIZE, 0, name)), [fd])
        refused_in_child(b, [fd])
        if kind == BUFFER and case != "eventfd-as-buffer" and not case.startswith(("tcp", "pipe")):
            _no_name_written(fd)  # files that take xattrs (and /dev/zero) got no name


@needs_timeline
def test_fence_sent_as_a_buffer_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with contextlib.ExitStack() as stack:
        fd = _timeline_fence(stack)  # a sync_file in the VM, a fallback fence natively
        send_raw(a, forge((BUFFER, SIZE, 0, b"")), [fd])
        refused_in_child(b, [fd])


def test_memfd_shrunk_after_sending_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    # Without F_SEAL_SHRINK the sender may truncate the file under the receiver's
    # mapping, and the receiver's next read of it is SIGBUS: refused at recv().
    a, b = pair
    with contextlib.ExitStack() as stack:
        fd = _memfd(stack)
        send_raw(a, forge((BUFFER, SIZE, 0, b"")), [fd])
        os.ftruncate(fd, 0)
        refused_in_child(b, [fd])


def test_sealed_memfd_cannot_shrink_under_the_receiver() -> None:
    # The counterpart: a memfd the fallback accepts cannot be shrunk by its sender.
    with contextlib.ExitStack() as stack:
        fd = _memfd(stack, F_SEAL_SHRINK)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)


# --- a real buffer with a lying header -----------------------------------------------

LIES = {
    "size-past-the-end": (SIZE + PAGE, 0),
    "size-zero": (0, 0),
    "offset-past-the-end": (SIZE, PAGE),
    "offset-misaligned": (PAGE, 100),
    "offset-huge": (PAGE, 1 << 63),
    "offset-wraps-u64": (2 * PAGE, (1 << 64) - PAGE),
}


@pytest.mark.parametrize("source", ["default", "fallback"])
@pytest.mark.parametrize("lie", list(LIES))
def test_header_that_does_not_fit_the_buffer_is_refused(lie: str, source: str,
                                                        pair: tuple[socket.socket, socket.socket]) -> None:
    size, offset = LIES[lie]
    a, b = pair
    backend = None if source == "default" else "fallback"
    with pydmabuf.Heap("system", backend=backend) as heap, heap.allocate(SIZE, name="own") as buf:
        send_raw(a, forge((BUFFER, size, offset, b"")), [buf.fileno()])
        refused_in_child(b, [buf.fileno()])
        assert buf.name == "own"


# --- garbage headers, too few and too many fds ---------------------------------------

def _garbage() -> dict[str, tuple[bytes, int]]:
    """id: (message, how many copies of a real buffer fd go with it)."""
    good = (BUFFER, SIZE, 0, b"")
    rng = random.Random(9)
    return {
        "short": (b"DB", 1),
        "random-36-bytes": (rng.randbytes(36), 1),
        "random-200-bytes": (rng.randbytes(200), 2),
        "wrong-magic": (b"XX" + forge(good)[2:], 1),
        "wrong-version": (forge(good, version=share.VERSION + 1), 1),
        "total-too-large": (forge(good, total_delta=8), 1),
        "total-too-small": (forge(good, total_delta=-8), 1),
        "total-below-prefix": (forge(good, total_delta=-len(forge(good))), 1),
        "unknown-kind": (forge((9, SIZE, 0, b"")), 1),
        "unknown-backend-code": (forge(good, code=7), 1),
        "name-past-the-end": (PREFIX.pack(b"DB", share.VERSION, 1, 0, PREFIX.size + OBJ.size)
                              + OBJ.pack(BUFFER, CODE, 200, SIZE, 0), 1),
        "name-too-long": (forge((BUFFER, SIZE, 0, b"n" * 40)), 1),
        "name-with-nul": (forge((BUFFER, SIZE, 0, b"a\0b")), 1),
        "trailing-bytes": (PREFIX.pack(b"DB", share.VERSION, 1, 0, PREFIX.size + OBJ.size + 4)
                           + OBJ.pack(BUFFER, CODE, 0, SIZE, 0) + b"junk", 1),
        "data-len-past-the-start": (PREFIX.pack(b"DB", share.VERSION, 1, 30, PREFIX.size + OBJ.size)
                                    + OBJ.pack(BUFFER, CODE, 0, SIZE, 0), 1),
        "one-object-two-fds": (forge(good), 2),
        "two-objects-one-fd": (forge(good, good), 1),
        "one-object-no-fd": (forge(good), 0),
        "no-object-one-fd": (forge(), 1),
        "announces-250-objects": (forge(good, count=250), 1),
    }


GARBAGE = _garbage()


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_header_is_refused(case: str, pair: tuple[socket.socket, socket.socket]) -> None:
    msg, nfds = GARBAGE[case]
    a, b = pair
    with pydmabuf.Heap("system") as heap, heap.allocate(SIZE) as buf:
        send_raw(a, msg, [buf.fileno()] * nfds)
        refused_in_child(b, [buf.fileno()])


def test_objects_already_wrapped_are_closed_when_a_later_one_fails(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with contextlib.ExitStack() as stack:
        good = _buffer(stack)
        bad = _pipe(stack)
        buf = (BUFFER, SIZE, 0, b"")
        objs, fds = [buf, buf], [good, good]
        if TIMELINE_MISSING is None:  # a real fence is wrapped too before the failure
            objs.append((FENCE, 0, 0, b""))
            fds.append(_timeline_fence(stack))
        send_raw(a, forge(*objs, buf), [*fds, bad])
        refused_in_child(b, [good, bad])


def test_empty_seqpacket_message_with_fds_is_not_end_of_stream() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, contextlib.ExitStack() as stack:
        send_raw(a, b"", [_buffer(stack)])
        refused_in_child(b, [])
        a.close()
        with pytest.raises(EOFError):
            pydmabuf.recv(b, timeout=5)


def test_mutated_messages_are_refused_or_verified() -> None:
    """300 random mutations (100 in the VM) of a valid two-buffer message (one named): each is either
    refused or yields buffers that really fit their files (mapped and read in full)."""
    obj = (BUFFER, SIZE, 0, b"")
    valid = forge(obj, (BUFFER, PAGE, PAGE, b"cam"), data=b"meta")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rng = random.Random(1)
    messages = []
    for _ in range(100 if IN_VM else 300):
        msg = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            msg[rng.randrange(len(msg))] = rng.choice([0, 1, 2, 0xFF, rng.randrange(256)])
        messages.append(bytes(msg))

    def receiver() -> int:
        refused = 0
        for _ in messages:
            before = open_fds()
            try:
                objects = pydmabuf.recv(b, timeout=10)
            except share.ProtocolError:
                refused += 1
                if open_fds() != before:
                    return 3
                continue
            for got in objects:
                assert isinstance(got, pydmabuf.Buffer)
                assert got._offset + got.size <= os.fstat(got.fileno()).st_size
                with got, got.map(write=False) as m:
                    sum(m[::PAGE])
        print(f"{refused} of {len(messages)} mutations refused")
        return 0

    with a, b, contextlib.ExitStack() as stack:
        fd = _buffer(stack)
        pid = fork(receiver)
        for msg in messages:
            send_raw(a, msg, [fd, fd])
        assert join(pid, timeout=60) == 0


# --- what a receiver does with names ------------------------------------------------

@pytest.mark.parametrize("source", ["default", "fallback"])
def test_header_name_is_never_written_to_the_file(source: str, pair: tuple[socket.socket, socket.socket],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Names the fallback notes in-process for this test go away with it.
    monkeypatch.setattr(pydmabuf.get_backend("fallback"), "_names", {})
    a, b = pair
    backend = None if source == "default" else "fallback"
    with pydmabuf.Heap("system", backend=backend) as heap, \
            heap.allocate(SIZE, name="own") as named, heap.allocate(SIZE) as unnamed:
        send_raw(a, forge((BUFFER, SIZE, 0, b"PWNED"), (BUFFER, SIZE, 0, b"PWNED")),
                 [named.fileno(), unnamed.fileno()])
        got = pydmabuf.recv(b, timeout=10)
        try:
            assert [obj.backend for obj in got] == [named.backend] * 2
            assert got[0].name == named.name == "own"  # the file's own name wins
            assert unnamed.name is None  # nothing was written to the file
            if named.backend == "fallback":
                _no_name_written(unnamed.fileno())
        finally:
            for obj in got:
                obj.close()


def test_in_process_name_travels_as_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """On kernels without tmpfs user xattrs the fallback keeps names in-process: the
    header carries it and the receiver notes it, still writing nothing."""
    def no_xattrs(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "no user xattrs on tmpfs here")

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    monkeypatch.setattr(os, "getxattr", no_xattrs)
    fallback = pydmabuf.get_backend("fallback")
    monkeypatch.setattr(fallback, "_names", {})  # this test's names go away with it
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def sender() -> int:
        a.close()
        with pydmabuf.Heap("system", backend="fallback") as heap, heap.allocate(SIZE, name="cam") as buf:
            pydmabuf.send(b, buf)
            b.recv(1)
        return 0

    pid = fork(sender)
    b.close()
    with a:
        (got,) = pydmabuf.recv(a, timeout=10)
        with got:
            assert got.backend == "fallback" and got.name == "cam"
        a.send(b"x")
    assert join(pid) == 0


def test_backend_follows_the_fd_not_the_header(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pydmabuf.Heap("system") as heap, heap.allocate(SIZE) as buf:
        lie = FALLBACK if buf.backend == "kernel" else KERNEL
        send_raw(a, forge((BUFFER, SIZE, 0, b""), code=lie), [buf.fileno()])
        (got,) = pydmabuf.recv(b, timeout=10)
        with got:
            assert got.backend == buf.backend


# --- stream peers that stop half-way, and timeouts ----------------------------------

@pytest.mark.parametrize("cut", ["inside-prefix", "inside-object", "inside-data", "length-claims-more"])
def test_stream_peer_that_stops_half_way_cannot_hang_recv(cut: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, contextlib.ExitStack() as stack:
        fd = _buffer(stack)
        msg = forge((BUFFER, SIZE, 0, b""), data=b"0123456789")
        part = {"inside-prefix": msg[:4], "inside-object": msg[:PREFIX.size + 5],
                "inside-data": msg[:-3], "length-claims-more": forge((BUFFER, SIZE, 0, b""), total_delta=100)}[cut]
        send_raw(a, part, [fd])  # and then nothing, with the connection left open
        refused_in_child(b, [fd])


def test_stream_fds_sent_with_a_later_part_are_dropped() -> None:
    # Only the first read of a stream message takes fds; the kernel discards (closes)
    # any that ride on a later part, and the message is short of fds.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, contextlib.ExitStack() as stack:
        fd = _buffer(stack)
        msg = forge((BUFFER, SIZE, 0, b""))
        send_raw(a, msg[:PREFIX.size], [])
        send_raw(a, msg[PREFIX.size:], [fd])
        refused_in_child(b, [fd])


def test_default_rest_timeout_is_bounded() -> None:
    assert 0 < DEFAULT_REST_TIMEOUT <= 10  # seconds, finite: a stalled peer is dropped


def test_stream_message_in_slow_pieces_arrives() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pydmabuf.Heap("system") as heap, heap.allocate(SIZE) as buf:
        msg = forge((BUFFER, SIZE, 0, b""), data=b"slow")
        send_raw(a, msg[:3], [buf.fileno()])
        rest = threading.Timer(0.05, lambda: a.sendall(msg[3:]))
        rest.start()
        try:
            (got,), data = share.recv_data(b, timeout=10)
        finally:
            rest.join()
        with got:
            assert data == b"slow" and got.size == SIZE


@pytest.mark.parametrize("kind", [*SOCK_TYPES, socket.SOCK_DGRAM], ids=[*SOCK_IDS, "dgram"])
def test_recv_timeout_without_a_message(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)

    def receiver() -> int:
        try:
            pydmabuf.recv(b, timeout=0.05)
        except pydmabuf.TimeoutError as exc:
            assert isinstance(exc, TimeoutError)
            return 0
        return 2

    with a, b:
        assert join(fork(receiver), timeout=20) == 0
        share.send(a, data=b"after")  # nothing was consumed: the next message is intact
        assert share.recv_data(b, timeout=5) == ([], b"after")


def test_recv_timeout_arguments(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.recv(b, timeout=-1)
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.recv(b, timeout=float("nan"))
    with pytest.raises(TypeError):
        pydmabuf.recv(b, timeout="1")  # type: ignore[arg-type]
    share.send(a, data=b"x")
    assert share.recv_data(b, timeout=float("inf")) == ([], b"x")


# --- who is on the other end --------------------------------------------------------

def test_peer_of_another_uid_is_refused_unless_allowed() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping to uid 65534 needs root (the suite runs as root natively and in the VM)")
    address = f"\0pydmabuf-hostile-{os.getpid()}-{os.urandom(4).hex()}"  # abstract: no permissions
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(address)
        server.listen()

        def nobody() -> int:
            server.close()
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(address)
                share.send(s, data=b"let me in")
                s.recv(1)
            return 0

        pid = fork(nobody)
        conn, _ = server.accept()
        with conn:
            with pytest.raises(pydmabuf.PermissionDeniedError, match="uid 65534") as info:
                credentials.check_peer(conn)
            assert isinstance(info.value, PermissionError)
            with pytest.raises(PermissionError):
                credentials.check_peer(conn, allow_root=True, allow_uids=[1000])
            creds = credentials.check_peer(conn, allow_uids=[65534])
            assert (creds.pid, creds.uid, creds.gid) == (pid, 65534, 65534)
            assert credentials.check_peer(conn, allow_gids=[65534]).uid == 65534
            assert share.recv_data(conn, timeout=10) == ([], b"let me in")
            conn.send(b"x")
        assert join(pid) == 0
