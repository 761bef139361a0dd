"""What a received fd is, decided without asking anything a peer controls.

- A file on a FUSE file system whose server stops answering: ``recv``,
  ``Buffer.from_fd`` and ``SyncFile.from_fd`` refuse it at once and the server is
  asked nothing (``fstat`` would wait for it for ever, in D state once the server
  has read the request). A raw ``/dev/fuse`` server (tests/fuse_server.py) serves the
  file; each victim runs in a child process, and the connection is aborted before the
  child is reaped, so nothing stays in D state. Also with forged names: a FUSE file
  whose /proc link reads ``/dmabuf:...`` or ``/memfd:... (deleted)`` in the victim's
  root.
- A fallback fence is a *connected* seqpacket socket: unconnected, listening, named
  and stream sockets are refused. A fence whose peer hung up without a message is
  signaled with OWNER_GONE, and a wait on it returns at once, using no CPU.

The fd kind decides the semantics, not the backend setting, so every test here runs
the same on both backends (a socketpair fence is a fallback fence on the kernel
backend too).
"""

from __future__ import annotations

import array
import ctypes
import errno as E
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fuse_server
import pytest
from conftest import BACKEND, IN_VM
from fuse_server import FuseServer

import pydmabuf
from pydmabuf import share
from pydmabuf.backends import get_backend
from pydmabuf.backends.fallback_fences import OWNER_GONE
from pydmabuf.uapi import fdkind
from pydmabuf.uapi import wait as _wait

LIMIT = 3.0  # seconds a refusal may take, however slow the machine
BAD_SIGNAL = -E.EPROTO  # fallback_fences.BAD_SIGNAL: a message that is not a signal
_KIND_BUFFER, _KIND_SYNC_FILE = 1, 2
# One object per message (share's wire format): prefix, then kind, backend, name
# length, pad, size, offset.
_ONE = struct.Struct("<2sBBHHBBBxQQ")


def forge(kind: int, size: int = 4096) -> bytes:
    return _ONE.pack(b"DB", share.VERSION, 1, 0, _ONE.size, kind, 1, 0, size, 0)


def send_fd(sock: socket.socket, msg: bytes, fd: int) -> None:
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def close_quietly(fd: int) -> None:
    """Close a FUSE file: FLUSH is answered even by a frozen server, but fails with
    ENOTCONN once a stuck child made the test abort the connection (closed all the same)."""
    try:
        os.close(fd)
    except OSError as exc:
        assert exc.errno == E.ENOTCONN, exc


def outcome(fn: Callable[[], object]) -> str:
    try:
        result = fn()
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    for obj in result if isinstance(result, list) else [result]:
        close = getattr(obj, "close", None)
        if close is not None:
            close()
    return f"accepted {result!r}"


# --- FUSE ----------------------------------------------------------------------------

@pytest.fixture
def fuse(tmp_path: Path) -> Iterator[FuseServer]:
    reason = fuse_server.unavailable()
    if reason is not None:
        if IN_VM:  # FUSE is built into the VM's kernel and the suite runs as root there
            pytest.fail(f"the FUSE tests must run in the real-kernel VM: {reason}")
        pytest.skip(f"cannot serve FUSE here: {reason}")
    with FuseServer(str(tmp_path)) as fs:
        yield fs


def _reap(pid: int, fs: FuseServer) -> None:
    """Wait for child ``pid``; abort the FUSE connection first if it is still running
    (a child stuck in a FUSE request cannot even be killed until then)."""
    end = time.monotonic() + 1
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)
    fs.abort()
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)
    raise AssertionError(f"child {pid} is still stuck after the FUSE connection was aborted")


def in_child(fs: FuseServer, victim: Callable[[], str], setup: Callable[[], None] | None = None
             ) -> tuple[str | None, float]:
    """(what ``victim`` said in a forked child, seconds it took), or (None, seconds) if
    it said nothing within LIMIT + 2 s (stuck)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(read_end)
            os.close(fs.fd)  # so that closing the server's copy aborts the connection
            if setup is not None:
                setup()
            start = time.monotonic()
            said = victim()
            os.write(write_end, f"{time.monotonic() - start:.6f} {said}".encode()[:4000])
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready = select.select([read_end], [], [], LIMIT + 2)[0]
        said = os.read(read_end, 4096).decode() if ready else None
    finally:
        os.close(read_end)
        _reap(pid, fs)
    if not said:
        return None, LIMIT + 2
    seconds, _, text = said.partition(" ")
    return text, float(seconds)


def _sockets_first(fn: Callable[[int, socket.socket], object]) -> Callable[[int, socket.socket], object]:
    """``fn`` with fence_kind trying the socket checks before the link (as it does once
    the last fence it saw was a socket)."""
    def victim(fd: int, sock: socket.socket) -> object:
        fdkind._sockets_first = True
        return fn(fd, sock)
    return victim


VICTIMS: dict[str, Callable[[int, socket.socket], object]] = {
    "recv as a buffer": lambda fd, sock: share.recv(sock, timeout=1),
    "recv as a fence": lambda fd, sock: share.recv(sock, timeout=1),
    "Buffer.from_fd": lambda fd, sock: pydmabuf.Buffer.from_fd(os.dup(fd)),
    "Buffer.from_fd(own=False)": lambda fd, sock: pydmabuf.Buffer.from_fd(fd, own=False),
    "SyncFile.from_fd": lambda fd, sock: pydmabuf.SyncFile.from_fd(os.dup(fd)),
    "SyncFile.from_fd(own=False)": lambda fd, sock: pydmabuf.SyncFile.from_fd(fd, own=False),
    "Buffer.from_fd(backend='kernel')": lambda fd, sock: pydmabuf.Buffer.from_fd(fd, own=False, backend="kernel"),
    "SyncFile.from_fd(backend='fallback')": lambda fd, sock: pydmabuf.SyncFile.from_fd(fd, own=False,
                                                                                      backend="fallback"),
}
VICTIMS["recv as a fence, sockets first"] = _sockets_first(VICTIMS["recv as a fence"])
VICTIMS["SyncFile.from_fd(own=False), sockets first"] = _sockets_first(VICTIMS["SyncFile.from_fd(own=False)"])


def _refused(said: str | None, seconds: float, victim: str, fs: FuseServer) -> None:
    assert said is not None, f"{victim} of a FUSE file hung (the server was asked {fs.asked})"
    expected = "ProtocolError" if victim.startswith("recv") else "InvalidArgumentError"
    assert said.startswith(expected + ":"), said
    assert seconds < LIMIT, f"{victim} took {seconds:.2f} s"
    assert fs.asked == [], f"{victim} asked the FUSE server {fs.asked}"


@pytest.mark.parametrize("victim", list(VICTIMS))
def test_fuse_file_is_refused_at_once_without_asking_its_server(fuse: FuseServer, victim: str) -> None:
    fd = os.open(fuse.path, os.O_RDONLY | os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.fstat(fd)  # the server answers: each fstat asks it (attributes never cached)
        if victim.startswith("recv"):
            send_fd(theirs, forge(_KIND_BUFFER if "buffer" in victim else _KIND_SYNC_FILE, 4096), fd)
        fuse.freeze()
        said, seconds = in_child(fuse, lambda: outcome(lambda: VICTIMS[victim](fd, ours)))
        _refused(said, seconds, victim, fuse)
    finally:
        ours.close()
        theirs.close()
        close_quietly(fd)


def test_a_frozen_fuse_server_does_hang_fstat(fuse: FuseServer) -> None:
    """The test's premise: what the library must not do does hang."""
    fd = os.open(fuse.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fuse.freeze()
        said, _ = in_child(fuse, lambda: outcome(lambda: os.fstat(fd)))
        assert said is None, said
        assert "GETATTR" in [op for op, _pid in fuse.asked]
    finally:
        close_quietly(fd)


# A peer's file whose link reads like ours in the receiver's root: a FUSE file mounted
# at /dmabuf:x or /memfd:x (deleted) there (a peer can arrange that for a path in its
# own mount namespace; here the victim chroots into a directory holding the file and a
# proc mount, both mounted in this process's mount namespace, so that the fd's mount
# is below the victim's root).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _chroot(root: str) -> Callable[[], None]:
    def setup() -> None:
        for warm in (pydmabuf.Buffer.from_fd, pydmabuf.SyncFile.from_fd):  # import what they use
            outcome(lambda: warm(0, own=False))  # noqa: B023
        os.chroot(root)
        os.chdir("/")
    return setup


@pytest.mark.parametrize("name", ["dmabuf:x", "memfd:x (deleted)", "anon_inode:sync_file"])
@pytest.mark.parametrize("victim", ["Buffer.from_fd(own=False)", "SyncFile.from_fd(own=False)"])
def test_fuse_file_named_like_ours_is_refused(tmp_path: Path, name: str, victim: str) -> None:
    reason = fuse_server.unavailable()
    if reason is not None:
        if IN_VM:
            pytest.fail(f"the FUSE tests must run in the real-kernel VM: {reason}")
        pytest.skip(f"cannot serve FUSE here: {reason}")
    root = tmp_path / "root"
    proc = root / "proc"
    proc.mkdir(parents=True)
    if _libc.mount(b"proc", bytes(proc), b"proc", 0, None):
        code = ctypes.get_errno()
        raise OSError(code, f"mount -t proc {proc}: {os.strerror(code)}")
    try:
        with FuseServer(str(root), name=name, file_root=True) as fs:
            fd = os.open(fs.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fs.freeze()

                def look() -> str:
                    link = os.readlink(f"/proc/self/fd/{fd}")
                    return f"{link!r}\n" + outcome(lambda: VICTIMS[victim](fd, None))  # type: ignore[arg-type]

                said, seconds = in_child(fs, look, _chroot(str(root)))
                assert said is not None, f"{victim} hung (the server was asked {fs.asked})"
                link, _, said = said.partition("\n")
                assert link == repr(f"/{name}")  # the name reads as forged in the victim's root
                _refused(said, seconds, victim, fs)
            finally:
                close_quietly(fd)
    finally:
        _libc.umount2(bytes(proc), 2)  # MNT_DETACH


# --- fallback fences: connected sockets only ------------------------------------------

def _unconnected() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _abstract_name() -> str:
    return f"\0pydmabuf-classify-{os.getpid()}-{time.monotonic_ns()}"


NOT_FENCES = ["unconnected seqpacket", "bound seqpacket", "listening seqpacket", "client of a named listener",
              "accepted from a named client", "stream socketpair end", "dgram socketpair end"]


def _not_a_fence(kind: str, keep: list[socket.socket]) -> socket.socket:
    """A socket of ``kind``; the other sockets it needs go to ``keep``."""
    if kind.endswith("socketpair end"):
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM if "stream" in kind else socket.SOCK_DGRAM)
        keep.append(pair[1])
        return pair[0]
    sock = _unconnected()
    if kind == "unconnected seqpacket":
        return sock
    sock.bind(_abstract_name())
    if kind == "bound seqpacket":
        return sock
    sock.listen(1)
    if kind == "listening seqpacket":
        return sock
    client = _unconnected()
    keep.append(sock)
    if kind == "accepted from a named client":
        client.bind(_abstract_name())
    client.connect(sock.getsockname())
    accepted = sock.accept()[0]
    if kind == "client of a named listener":  # connected, to a listener's address
        keep.append(accepted)
        return client
    keep.append(client)
    return accepted  # connected, to a named client


@pytest.fixture(params=[False, True], ids=["link first", "sockets first"])
def fence_order(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """fence_kind's order (the kind of the last fence it saw decides it)."""
    monkeypatch.setattr(fdkind, "_sockets_first", request.param)
    return bool(request.param)


@pytest.fixture(params=NOT_FENCES)
def not_a_fence(request: pytest.FixtureRequest, fence_order: bool) -> Iterator[socket.socket]:
    keep: list[socket.socket] = []
    sock = _not_a_fence(request.param, keep)
    try:
        yield sock
    finally:
        sock.close()
        for other in keep:
            other.close()


@pytest.mark.parametrize("own", [False, True])
def test_socket_that_is_not_a_connected_socketpair_end_is_no_fence(not_a_fence: socket.socket, own: bool) -> None:
    fd = os.dup(not_a_fence.fileno()) if own else not_a_fence.fileno()
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError, match="not a fallback fence"):
            pydmabuf.SyncFile.from_fd(fd, own=own)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.SyncFile.from_fd(fd, own=own, backend="fallback")
    finally:
        if own:  # refused: still the caller's
            os.close(fd)


def test_recv_refuses_an_unconnected_socket_sent_as_a_fence(not_a_fence: socket.socket) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        send_fd(theirs, forge(_KIND_SYNC_FILE, 0), not_a_fence.fileno())
        with pytest.raises(share.ProtocolError, match="not a fallback fence"):
            share.recv(ours, timeout=1)


def test_import_of_an_unconnected_socket_is_refused() -> None:
    with pydmabuf.Heap("system", backend="fallback") as heap, heap.allocate(4096) as buf, _unconnected() as sock:
        fence = pydmabuf.SyncFile(os.dup(sock.fileno()), get_backend("fallback"))  # no check: the raw class
        with fence, pytest.raises(pydmabuf.InvalidArgumentError):
            buf.import_sync_file(fence)


def _cpu_of(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``fn()``."""
    cpu, wall = time.process_time(), time.monotonic()
    fn()
    return time.process_time() - cpu, time.monotonic() - wall


def test_fence_whose_peer_hung_up_is_signaled_with_an_error_at_once() -> None:
    fence_end, signal_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    signal_end.close()  # died without signaling
    with fence_end, pydmabuf.SyncFile.from_fd(fence_end.fileno(), own=False) as fence:
        assert fence.backend == "fallback"  # on both backends: the fd's kind decides
        assert fence.signaled
        info = fence.info()
        assert info.status == OWNER_GONE and info.signaled
        cpu, wall = _cpu_of(lambda: fence.wait(timeout=1))
        assert wall < 0.5 and cpu < 0.05, (cpu, wall)
        with pydmabuf.SyncFile.merge_all([fence, fence.dup()]) as merged:  # merges keep the error
            assert merged.signaled


def test_received_fence_whose_peer_hung_up_is_signaled_with_an_error() -> None:
    fence_end, signal_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, fence_end:
        send_fd(theirs, forge(_KIND_SYNC_FILE, 0), fence_end.fileno())
        signal_end.close()
        (fence,) = share.recv(ours, timeout=1)
        with fence:
            assert isinstance(fence, pydmabuf.SyncFile) and fence.info().status == OWNER_GONE
            cpu, wall = _cpu_of(lambda: fence.wait(timeout=1))  # type: ignore[union-attr]
            assert wall < 0.5 and cpu < 0.05, (cpu, wall)


def test_fence_whose_peer_sent_garbage_is_signaled_with_an_error() -> None:
    fence_end, signal_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with fence_end, signal_end, pydmabuf.SyncFile.from_fd(fence_end.fileno(), own=False) as fence:
        assert not fence.signaled and fence.info().status == 0  # pending while nobody said anything
        signal_end.send(b"abc")
        assert fence.signaled and fence.info().status == BAD_SIGNAL
        cpu, wall = _cpu_of(lambda: fence.wait(timeout=1))
        assert wall < 0.5 and cpu < 0.05, (cpu, wall)


def test_fence_reset_by_its_peer_is_signaled_with_an_error() -> None:
    """The peer closes with data unread (sent to it through a dup of the fence end):
    the fence end gets ECONNRESET, which polls POLLERR, not "the fd was closed"."""
    fence_end, signal_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with fence_end, pydmabuf.SyncFile.from_fd(fence_end.fileno(), own=False) as fence:
        fence_end.send(b"unread")
        signal_end.close()
        assert fence.signaled
        cpu, wall = _cpu_of(lambda: fence.wait(timeout=1))
        assert wall < 0.5 and cpu < 0.05, (cpu, wall)
        assert fence.info().status == OWNER_GONE
        assert fence.info().status == OWNER_GONE  # and so it stays


def test_wait_on_a_hung_up_socket_returns_at_once_without_spinning() -> None:
    """The former spin, reached without classification (the raw SyncFile class, a
    plain fd wait): POLLHUP and no POLLIN, for ever. Now a hang-up ends the wait."""
    with _unconnected() as sock:
        cpu, wall = _cpu_of(lambda: _wait.wait_fd(sock.fileno(), select.POLLIN, 1, "test"))
        assert wall < 0.5 and cpu < 0.05, (cpu, wall)
        fence = pydmabuf.SyncFile(os.dup(sock.fileno()), get_backend("fallback"))
        with fence:
            assert fence.signaled and fence.info().status == OWNER_GONE
            cpu, wall = _cpu_of(lambda: fence.wait(timeout=1))
            assert wall < 0.5 and cpu < 0.05, (cpu, wall)
            cpu, wall = _cpu_of(lambda: fence.wait())  # no timeout: returns all the same
            assert wall < 0.5 and cpu < 0.05, (cpu, wall)


def test_pending_fence_still_waits_its_timeout_asleep() -> None:
    fence_end, signal_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with fence_end, signal_end, pydmabuf.SyncFile.from_fd(fence_end.fileno(), own=False) as fence:
        cpu = time.process_time()
        with pytest.raises(pydmabuf.TimeoutError):
            fence.wait(timeout=0.3)
        assert time.process_time() - cpu < 0.05


# --- what is still taken --------------------------------------------------------------

def test_our_own_kinds_are_still_taken() -> None:
    with pydmabuf.Heap("system", backend="fallback") as heap, heap.allocate(8192) as buf:
        with pydmabuf.Buffer.from_fd(buf.fileno(), own=False) as again:
            assert again.backend == "fallback" and again.size == 8192
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            share.send(theirs, buf)
            (got,) = share.recv(ours, timeout=1)
            with got:
                assert got.size == 8192  # type: ignore[union-attr]
    with pydmabuf.Timeline(backend="fallback") as tl, tl.fence(1) as fence:
        with pydmabuf.SyncFile.from_fd(fence.fileno(), own=False) as again:
            assert again.backend == "fallback" and not again.signaled
        tl.signal(1)
        with pydmabuf.SyncFile.from_fd(fence.fileno(), own=False) as again:
            assert again.signaled and again.info().status == 1


def test_kernel_objects_are_taken_on_the_kernel() -> None:
    if BACKEND != "kernel":
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(pydmabuf.InvalidArgumentError):  # a character device: no dma-buf
                pydmabuf.Buffer.from_fd(fd)
        finally:
            os.close(fd)
        return
    with pydmabuf.udmabuf(8192) as buf, pydmabuf.Buffer.from_fd(buf.fileno(), own=False) as again:
        assert again.backend == "kernel" and again.size == 8192
        with buf.export_sync_file() as fence, pydmabuf.SyncFile.from_fd(fence.fileno(), own=False) as f2:
            assert f2.backend == "kernel" and f2.signaled


def test_memfd_not_sealed_against_shrinking_is_refused() -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(pydmabuf.InvalidArgumentError, match="F_SEAL_SHRINK"):
            pydmabuf.Buffer.from_fd(fd, own=False)
    finally:
        os.close(fd)


def test_regular_file_on_tmpfs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError, match="not a memfd"):
            pydmabuf.Buffer.from_fd(fd, own=False)
    finally:
        os.close(fd)


def test_bad_fds_are_library_errors() -> None:
    for bad in (-100, 2**31 - 1, 2**40):  # -100 is AT_FDCWD: never the working directory
        with pytest.raises(pydmabuf.Error):
            pydmabuf.Buffer.from_fd(bad, own=False)
        with pytest.raises(pydmabuf.Error):
            pydmabuf.SyncFile.from_fd(bad, own=False)
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError) as exc:
        pydmabuf.Buffer.from_fd(r, own=False)
    assert exc.value.errno == E.EBADF
