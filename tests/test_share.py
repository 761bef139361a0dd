"""send/recv over AF_UNIX, Buffer/SyncFile.from_pid: across real processes, on the
active backend (fallback natively, kernel in the VM)."""

from __future__ import annotations

import array
import errno
import os
import resource
import socket
import time
from collections.abc import Iterator

import pytest
from _procs import fork, join
from conftest import needs_timeline, open_fds

import pydmabuf
from pydmabuf import share
from pydmabuf.uapi import ops as _ops

SIZE = 64 << 10


@pytest.fixture(params=[socket.SOCK_SEQPACKET, socket.SOCK_STREAM], ids=["seqpacket", "stream"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, request.param)
    with a, b:
        yield a, b


def test_round_trip_same_process(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline,
                                 pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with heap.allocate(SIZE, name="frame0") as buf, timeline.fence(1) as fence:
        with buf.map() as m:
            m[:5] = b"hello"
        pydmabuf.send(a, buf, fence)
        share.send(a, buf, data=b"meta")
        got = pydmabuf.recv(b)
        (again,), data = share.recv_data(b)
        try:
            rbuf, rfence = got
            assert isinstance(rbuf, pydmabuf.Buffer) and isinstance(rfence, pydmabuf.SyncFile)
            assert data == b"meta" and again.size == rbuf.size == buf.size == SIZE
            assert rbuf.backend == rfence.backend == pydmabuf.backend
            assert not os.get_inheritable(rbuf.fileno())  # MSG_CMSG_CLOEXEC
            assert not os.get_inheritable(rfence.fileno())
            assert rbuf.name == "frame0"
            with rbuf.map(write=False) as m:
                assert m[:5] == b"hello"
            assert not rfence.signaled
            timeline.signal(1)
            rfence.wait(5)
        finally:
            for obj in [*got, again]:
                obj.close()


def test_content_crosses_processes_both_ways(heap: pydmabuf.Heap) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child() -> int:
        a.close()
        # Allocated after fork: the parent can only get it through the socket.
        with pydmabuf.Heap("system") as h, h.allocate(SIZE) as buf:
            with buf.map() as m, buf.cpu_access(write=True, read=False):
                m[:] = bytes([7]) * SIZE
            pydmabuf.send(b, buf)
        (theirs,) = pydmabuf.recv(b)  # the parent's buffer: write into it
        with theirs, theirs.map() as m, theirs.cpu_access(read=False):
            m[100:105] = b"child"
        b.send(b"done")
        return 0

    pid = fork(child)
    b.close()
    with a, heap.allocate(SIZE) as mine:
        (got,) = pydmabuf.recv(a)
        with got, got.map(write=False) as m, got.cpu_access(write=False):
            assert m[:] == bytes([7]) * SIZE
        pydmabuf.send(a, mine)
        assert a.recv(16) == b"done"
        with mine.map(write=False) as m:
            assert m[100:105] == b"child"
    assert join(pid) == 0


@needs_timeline
@pytest.mark.parametrize("signaler", ["parent", "child"])
def test_fence_signaled_in_one_process_wakes_the_other(signaler: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child() -> int:
        a.close()
        if signaler == "parent":
            (fence,) = pydmabuf.recv(b)
            with fence:
                assert not fence.signaled
                b.send(b"waiting")
                fence.wait(10)  # woken by the parent's signal
            b.send(b"woken")
        else:
            with pydmabuf.Timeline() as tl, tl.fence(1) as fence:
                pydmabuf.send(b, fence)
                assert b.recv(16) == b"waiting"
                time.sleep(0.05)
                tl.signal(1)
                assert b.recv(16) == b"woken"
        return 0

    pid = fork(child)
    b.close()
    with a:
        if signaler == "parent":
            with pydmabuf.Timeline() as tl, tl.fence(1) as fence:
                pydmabuf.send(a, fence)
                assert a.recv(16) == b"waiting"
                time.sleep(0.05)
                tl.signal(1)
                a.settimeout(10)
                assert a.recv(16) == b"woken"
        else:
            (fence,) = pydmabuf.recv(a)
            with fence:
                assert not fence.signaled
                a.send(b"waiting")
                fence.wait(10)
                a.send(b"woken")
    assert join(pid) == 0


# --- bad input: clear error, nothing leaks ----------------------------------------

def _raw_send(sock: socket.socket, msg: bytes, fds: list[int]) -> None:
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def test_malformed_header_closes_every_fd(heap: pydmabuf.Heap,
                                          pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with heap.allocate(4096) as buf:
        before = open_fds()
        _raw_send(a, b"not a pydmabuf message!", [buf.fileno(), buf.fileno()])
        with pytest.raises(share.ProtocolError, match=r"magic|length"):
            pydmabuf.recv(b)
        assert open_fds() == before


def test_more_fds_than_announced(heap: pydmabuf.Heap) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, heap.allocate(4096) as buf:
        before = open_fds()
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with c, d:  # capture a valid one-object message, then resend it with 3 fds
            pydmabuf.send(c, buf)
            msg, anc, _flags, _addr = d.recvmsg(4096, socket.CMSG_SPACE(16))
            os.close(array.array("i", anc[0][2])[0])
        _raw_send(a, msg, [buf.fileno()] * 3)
        with pytest.raises(share.ProtocolError, match="announces 1 objects but 3 fds"):
            pydmabuf.recv(b)
        _raw_send(a, msg, [])
        with pytest.raises(share.ProtocolError, match="announces 1 objects but 0 fds"):
            pydmabuf.recv(b)
        assert open_fds() == before


def test_truncated_control_data_is_an_error(heap: pydmabuf.Heap) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with heap.allocate(4096) as buf:
        pydmabuf.send(a, buf, buf, buf)

    def child() -> int:
        # A full fd table makes the kernel drop fds and set MSG_CTRUNC.
        top = max(int(n) for n in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        filler = []
        try:
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        os.close(filler.pop())  # room for one fd out of three
        before = open_fds()
        try:
            pydmabuf.recv(b)
        except share.ProtocolError as exc:
            assert "MSG_CTRUNC" in str(exc)
        else:
            return 2
        return 0 if open_fds() == before else 3

    pid = fork(child)
    a.close()
    b.close()
    assert join(pid) == 0


def test_eof_and_bad_arguments(heap: pydmabuf.Heap, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buf = heap.allocate(4096)
    buf.close()
    with pytest.raises(pydmabuf.ClosedError):
        pydmabuf.send(a, buf)
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.send(a, "not a buffer")  # type: ignore[arg-type]
    with pytest.raises(pydmabuf.InvalidArgumentError):
        share.send(a, data=bytes(share.MAX_DATA + 1))
    with pytest.raises(TypeError, match="data must be bytes"):
        share.send(a, data="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a socket"):
        pydmabuf.send("not a socket", data=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a socket"):
        pydmabuf.send(a.fileno(), data=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a socket"):
        pydmabuf.recv("not a socket")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a socket"):
        pydmabuf.recv(b.fileno())  # type: ignore[arg-type]
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        pydmabuf.recv(b)


def test_closed_socket_is_a_closed_error(heap: pydmabuf.Heap) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.close()
    b.close()
    with heap.allocate(4096) as buf:
        for call in (lambda: pydmabuf.send(a, buf), lambda: share.send(a, data=b"x"),
                     lambda: pydmabuf.recv(b), lambda: pydmabuf.recv(b, timeout=1)):
            with pytest.raises(pydmabuf.ClosedError):
                call()


def test_send_needs_an_af_unix_socket(heap: pydmabuf.Heap) -> None:
    # UDP would even take the message and silently drop the fds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, heap.allocate(4096) as buf, \
            pytest.raises(pydmabuf.InvalidArgumentError, match="AF_UNIX"):
        pydmabuf.send(udp, buf)


@pytest.mark.parametrize("verify", [True, False])
def test_lying_header_is_refused_with_or_without_verify(heap: pydmabuf.Heap, verify: bool) -> None:
    # verification is always on: verify=False is accepted and changes nothing
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        with a, b, heap.allocate(4096) as buf:
            c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with c, d:
                pydmabuf.send(c, buf)
                msg, anc, _flags, _addr = d.recvmsg(4096, socket.CMSG_SPACE(4))
                os.close(array.array("i", anc[0][2])[0])
            before = open_fds()
            _raw_send(a, msg, [r])  # a pipe described as a buffer
            with pytest.raises(share.ProtocolError, match="not a dma-buf or a sealed memfd") as info:
                pydmabuf.recv(b, verify=verify)
            assert info.value.errno == errno.EPROTO
            assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def test_buffers_of_both_backends_in_one_message(heap: pydmabuf.Heap,
                                                 pair: tuple[socket.socket, socket.socket]) -> None:
    """Each received object gets the backend its fd implies: in the VM a kernel
    dma-buf and a fallback memfd travel together; natively both are fallback."""
    a, b = pair
    with pydmabuf.Heap("system", backend="fallback") as fallback_heap, \
            heap.allocate(SIZE) as native, fallback_heap.allocate(2 * SIZE) as emulated:
        share.send(a, native, emulated, native, data=b"mixed")
        got, data = share.recv_data(b, timeout=10)
        try:
            assert data == b"mixed"
            assert [(o.backend, o.size) for o in got] == [
                (native.backend, SIZE), ("fallback", 2 * SIZE), (native.backend, SIZE)]
        finally:
            for obj in got:
                obj.close()


# --- from_pid --------------------------------------------------------------------

def _holder(make: str) -> tuple[int, int, socket.socket]:
    """A child holding a buffer (or fence) whose fd number it reports; it exits
    when the parent closes the returned socket."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child() -> int:
        a.close()
        if make == "buffer":
            with pydmabuf.Heap("system") as h, h.allocate(4096) as buf, buf.map() as m:
                m[:4] = b"took"
                b.send(str(buf.fileno()).encode())
                b.recv(1)
        else:
            with pydmabuf.Timeline() as tl, tl.fence(1) as fence:
                tl.signal(1)
                b.send(str(fence.fileno()).encode())
                b.recv(1)
        return 0

    pid = fork(child)
    b.close()
    return pid, int(a.recv(16)), a


def test_buffer_from_pid(heap: pydmabuf.Heap) -> None:
    pid, fd, sock = _holder("buffer")
    try:
        with pydmabuf.Buffer.from_pid(pid, fd) as buf, buf.map(write=False) as m:
            assert m[:4] == b"took"
            assert not os.get_inheritable(buf.fileno())
        with pytest.raises(pydmabuf.Error, match="no fd"):
            pydmabuf.Buffer.from_pid(pid, 1000)
    finally:
        sock.close()
        assert join(pid) == 0


@needs_timeline
def test_sync_file_from_pid() -> None:
    pid, fd, sock = _holder("fence")
    try:
        with pydmabuf.SyncFile.from_pid(pid, fd) as fence:
            fence.wait(5)
    finally:
        sock.close()
        assert join(pid) == 0


def test_from_pid_permission_error_names_ptrace(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pidfd: int, fd: int) -> int:
        raise pydmabuf.errors.error(errno.EPERM, "pidfd_getfd")

    monkeypatch.setattr(_ops, "pidfd_getfd", refuse)
    with pytest.raises(PermissionError, match=r"ptrace.*same uid.*ptrace_scope"):
        pydmabuf.Buffer.from_pid(os.getpid(), 0)


def test_from_pid_real_permission_error() -> None:
    if os.geteuid() == 0:
        _root_from_pid_permission_error()
        return
    import ctypes

    def child() -> int:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: refuses ptrace
        time.sleep(5)
        return 0

    pid = fork(child)
    time.sleep(0.1)
    try:
        with pytest.raises(PermissionError, match="ptrace"):
            pydmabuf.Buffer.from_pid(pid, 0)
    finally:
        os.kill(pid, 9)
        join(pid)


def _root_from_pid_permission_error() -> None:
    # root has CAP_SYS_PTRACE, so the refusal is provoked from a child that drops to
    # nobody and tries to take an fd from this (root) process.
    target = os.getpid()

    def child() -> int:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        try:
            pydmabuf.Buffer.from_pid(target, 0)
        except PermissionError as exc:
            return 0 if "ptrace" in str(exc) else 2
        return 1

    assert join(fork(child)) == 0


def test_from_pid_of_a_dead_process() -> None:
    pid = fork(lambda: 0)
    join(pid)
    with pytest.raises(ProcessLookupError):
        pydmabuf.Buffer.from_pid(pid, 0)
