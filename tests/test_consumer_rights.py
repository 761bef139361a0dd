"""What an admitted consumer of another uid can do to the producer's buffers: read a
frame and nothing else. No xattr (the fallback's name, any junk), no seal, no
read-write reopen, no chmod; the producer's ``buf.name`` never changes because of a
consumer.

The consumer is a forked child that drops to uid 65534 before it connects (the tests
run as root) and reports what each attempt gave. The backends differ where the kernel
decides: a dma-buf has no xattrs (EOPNOTSUPP) and no seals (EINVAL), cannot be
reopened (ENXIO), and ``DMA_BUF_SET_NAME`` renames it for every holder, from any fd
(kernel semantics: the name is the exporter-visible debug name, and the kernel checks
no permission for it). The fallback's memfds are writable by their owner only (mode
0644) and go to consumers as read-only reopens, so each attempt is refused, and a
consumer's ``set_name`` stays in its own process.
"""

from __future__ import annotations

import errno as E
import fcntl
import itertools
import json
import os
import select
import time
from collections.abc import Callable

from _procs import fork, join
from conftest import BACKEND

import pydmabuf
from pydmabuf.backends.fallback import NAME_XATTR
from pydmabuf.channel import Consumer, Producer
from pydmabuf.uapi import memfd as _memfd
from pydmabuf.uapi.ops import dma_buf_set_name

SIZE = 16 << 10
NOBODY = 65534
_names = itertools.count()


def _attempt(fn: Callable[[], object]) -> int:
    """0 if ``fn()`` worked, else its errno (-1 for an error without one)."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


def _tamper_as_nobody(path: str, report: int) -> int:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    with Consumer.connect(path, timeout=10) as consumer:
        delivery = consumer.receive(timeout=10)
        assert delivery is not None
        buf = delivery.buffer
        fd = buf.fileno()
        seen_name = buf.name

        def reopen() -> None:
            os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC))

        results = {
            "setxattr name": _attempt(lambda: os.setxattr(fd, NAME_XATTR, b"pwned")),
            "setxattr junk": _attempt(lambda: os.setxattr(fd, "user.junk", b"j" * (60 << 10))),
            "F_SEAL_SEAL": _attempt(lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _memfd.F_SEAL_SEAL)),
            "F_SEAL_WRITE": _attempt(lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _memfd.F_SEAL_WRITE)),
            "reopen read-write": _attempt(reopen),
            "fchmod": _attempt(lambda: os.fchmod(fd, 0o666)),
            "set_name": _attempt(lambda: buf.set_name("pwned")),
        }
        results["name seen"] = seen_name  # type: ignore[assignment]
        results["name after set_name"] = buf.name  # type: ignore[assignment]
        assert delivery.map()[:4] == b"tick"  # reading is what a consumer may do
        delivery.release()
    os.write(report, json.dumps(results).encode())
    return 0


def test_admitted_consumer_of_another_uid_changes_nothing_but_a_kernel_name() -> None:
    path = f"@pydmabuf-rights-{os.getpid()}-{next(_names)}"
    read_end, write_end = os.pipe()
    pid = 0
    try:
        with Producer(path, size=SIZE, count=1, max_pending=1, allow_uids=[NOBODY]) as producer:
            (buf,) = producer.buffers
            original = buf.name
            assert original  # the pool's buffers are named ("channel0")
            fd = buf.fileno()
            seals = _memfd.seals(fd)
            pid = fork(lambda: _tamper_as_nobody(path, write_end))
            os.close(write_end)
            write_end = -1
            producer.wait_for_consumers(1, timeout=10)
            item = producer.acquire(timeout=10)
            producer.mapping(item)[:4] = b"tick"
            assert producer.submit(item) == 1
            end = time.monotonic() + 20
            while not select.select([read_end], [], [], 0)[0]:  # serve it until it reports
                assert time.monotonic() < end, "the consumer did not finish"
                producer.poll(0.01)
            results = json.loads(os.read(read_end, 1 << 16) or b"{}")
            assert results, "the consumer failed before reporting (see its traceback above)"
            end = time.monotonic() + 10
            while not (done := os.waitpid(pid, os.WNOHANG))[0]:  # its release and hang-up, served
                assert time.monotonic() < end, "the consumer did not exit"
                producer.poll(0.01)
            pid = 0
            assert os.waitstatus_to_exitcode(done[1]) == 0

            assert results["name seen"] == original  # a consumer may read the name
            if BACKEND == "fallback" or _memfd.seals(fd) is not None:
                # A memfd of the producer's, writable by its owner only, sent read-only.
                assert results["setxattr name"] == E.EACCES
                assert results["setxattr junk"] == E.EACCES
                assert results["F_SEAL_SEAL"] == E.EPERM  # a read-only fd adds no seal
                assert results["F_SEAL_WRITE"] == E.EPERM
                assert results["reopen read-write"] == E.EACCES
                assert results["fchmod"] == E.EPERM
                assert results["set_name"] == 0  # kept in the consumer's process only
                assert results["name after set_name"] == "pwned"
                assert buf.name == original
                assert os.getxattr(fd, NAME_XATTR).decode() == original
                assert "user.junk" not in os.listxattr(fd)
                assert _memfd.seals(fd) == seals and not seals & _memfd.F_SEAL_SEAL  # type: ignore[operator]
                assert os.fstat(fd).st_mode & 0o7777 == 0o644
            else:
                # A dma-buf: no xattrs, no seals, no reopen, and the kernel lets any holder
                # rename it (DMA_BUF_SET_NAME checks no permission): the name is the one
                # thing a consumer changes for everyone.
                assert results["setxattr name"] in (E.EOPNOTSUPP, E.EACCES, E.EPERM)
                assert results["setxattr junk"] in (E.EOPNOTSUPP, E.EACCES, E.EPERM)
                assert results["F_SEAL_SEAL"] == E.EINVAL
                assert results["F_SEAL_WRITE"] == E.EINVAL
                assert results["reopen read-write"] in (E.ENXIO, E.EACCES)
                assert results["fchmod"] == E.EPERM
                assert results["set_name"] == 0
                assert results["name after set_name"] == "pwned"
                assert buf.name == "pwned"
    finally:
        if pid:
            join(pid)
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_producer_keeps_its_own_name_whatever_the_file_says() -> None:
    """A holder of the same uid can still write the fallback's xattr (it owns the
    inode), yet the producer's name is what the producer set, remembered in its
    process. A dma-buf's name is the kernel's, one for every holder: renaming it through
    another fd renames it here too."""
    with pydmabuf.Heap("system") as heap, heap.allocate(4096, name="mine") as buf:
        other = os.dup(buf.fileno())  # what a peer holding the buffer holds
        try:
            if buf.backend == "fallback":
                os.setxattr(other, NAME_XATTR, b"theirs")
                assert buf.name == "mine"
                with pydmabuf.Buffer.from_fd(other, own=False) as again:  # the same file, here
                    assert again.name == "mine"
            else:
                dma_buf_set_name(other, b"theirs")
                assert buf.name == "theirs"
        finally:
            os.close(other)
        buf.set_name("renamed")
        assert buf.name == "renamed"
        if buf.backend == "fallback":  # and it travels with the file
            assert os.getxattr(buf.fileno(), NAME_XATTR) == b"renamed"


def test_new_buffers_are_writable_by_their_owner_only() -> None:
    with pydmabuf.Heap("system") as heap, heap.allocate(4096) as buf:
        mode = os.fstat(buf.fileno()).st_mode & 0o7777
        # A dma-buf's inode is 0600 as the kernel makes it; a fallback memfd 0644 (born
        # 0777): readable by whoever holds it, changed by nobody but its owner.
        assert mode == (0o644 if buf.backend == "fallback" else 0o600)
        buf.set_name("still")  # the owner still names, maps and writes it
        assert buf.name == "still"
        with buf.map() as m:
            m[:1] = b"x"
