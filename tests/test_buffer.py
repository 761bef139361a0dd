from __future__ import annotations

import contextlib
import errno
import os
import threading

import numpy as np
import pytest
from conftest import BACKEND, kernel_only, needs_timeline, open_fds

import pydmabuf


def test_map_write_read_back(heap: pydmabuf.Heap) -> None:
    with heap.allocate(8192) as buf, buf.map() as m:
        with buf.cpu_access(read=False, write=True):
            m[:5] = b"hello"
            m[-1] = 7
        with buf.cpu_access(read=True, write=False):
            assert m[:5] == b"hello"
            assert m[8191] == 7


def test_second_mapping_sees_first(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, buf.map() as a, buf.map(write=False) as b:
        with buf.cpu_access():
            a[100:104] = b"abcd"
        with buf.cpu_access(write=False):
            assert b[100:104] == b"abcd"


def test_buffer_protocol_and_numpy_zero_copy(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, buf.map() as m:
        arr = np.frombuffer(m, dtype=np.uint32)
        assert arr.shape == (1024,)
        with buf.cpu_access():
            arr[:] = np.arange(1024, dtype=np.uint32)
        view = memoryview(m)
        assert view.nbytes == 4096
        assert int.from_bytes(view[4:8], "little") == 1
        view.release()
        del arr


def test_read_only_mapping_refuses_writes(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, buf.map(write=False) as m:
        for write in (lambda: m.__setitem__(0, 1), lambda: m.__setitem__(slice(0, 2), b"ab"),
                      lambda: m.write(b"x"), lambda: m.write_byte(1), lambda: m.move(0, 1, 1)):
            # The library's error, still the TypeError that mmap raised before.
            with pytest.raises(pydmabuf.errors.ReadOnlyError, match="write=True") as refused:
                write()
            assert isinstance(refused.value, TypeError) and isinstance(refused.value, pydmabuf.PermissionDeniedError)
            assert refused.value.errno == errno.EACCES
        assert memoryview(m).readonly
        assert m[:2] == bytes(2) and "read-only" in repr(m)


def test_closed_mapping_raises_closed_error(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        for write in (True, False):
            m = buf.map(write=write)
            m.close()
            for name, args in (("__getitem__", (slice(0, 4),)), ("__getitem__", (0,)), ("__setitem__", (0, 1)),
                               ("__len__", ()), ("read", (1,)), ("find", (b"x",)), ("seek", (0,)), ("size", ()),
                               ("flush", ()), ("write", (b"x",)), ("__enter__", ())):
                # ClosedError is a ValueError, what mmap raised before ("mmap closed or invalid").
                with pytest.raises(pydmabuf.ClosedError, match="closed Mapping"):
                    getattr(m, name)(*args)
            m.close()  # again: nothing
            assert m.closed and repr(m) == "<pydmabuf.Mapping closed>"
            assert isinstance(m, pydmabuf.Mapping)


def test_closing_a_mapping_under_a_live_array(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        m = buf.map()
        arr = np.frombuffer(m, np.uint8)
        for close in (m.close, lambda: m.__exit__(None, None, None)):
            with pytest.raises(pydmabuf.errors.MappingInUseError, match="del array") as busy:
                close()
            assert isinstance(busy.value, BufferError) and busy.value.errno == errno.EBUSY
        assert not m.closed and m[0] == 0  # still open and usable
        del arr
        m.close()
        assert m.closed


def test_mapping_cannot_be_resized(heap: pydmabuf.Heap) -> None:
    # mmap.resize would ftruncate the buffer's file (a fallback memfd would grow).
    with heap.allocate(4096) as buf, buf.map() as m:
        with pytest.raises(pydmabuf.UnsupportedError, match="fixed size"):
            m.resize(8192)
        assert len(m) == 4096 and buf.info().size == 4096


def test_mapping_outlives_buffer_object(heap: pydmabuf.Heap) -> None:
    buf = heap.allocate(4096)
    m = buf.map()
    with buf.cpu_access():
        m[0] = 42
    buf.close()
    assert m[0] == 42  # the mapping holds its own reference
    m.close()
    assert "closed" in repr(m)


def test_cpu_access_issues_end_even_when_block_raises(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        with pytest.raises(RuntimeError), buf.cpu_access():
            raise RuntimeError("boom")
        # Balanced: a new bracket works.
        with buf.cpu_access():
            pass


def test_cpu_access_needs_a_direction(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, pytest.raises(pydmabuf.InvalidArgumentError):
        buf.cpu_access(read=False, write=False)


def test_cpu_access_bracket_is_reusable(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        access = buf.cpu_access()
        for _ in range(2):
            with access as same:
                assert same is buf


def test_dropped_buffer_closes_at_once_after_cpu_access(heap: pydmabuf.Heap) -> None:
    # No reference cycle between a buffer and its brackets: the fd goes with the last
    # reference, without waiting for the cycle collector.
    import gc

    buf = heap.allocate(4096)
    with buf.cpu_access(), buf.cpu_access(read=True, write=False, timeout=1):
        pass
    fd = buf.fileno()
    gc.disable()
    try:
        del buf
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        gc.enable()


def test_explicit_begin_end(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        buf.begin_cpu_access(read=True, write=False)
        buf.end_cpu_access(read=True, write=False)


def test_unpaired_end_on_heap_buffer(heap: pydmabuf.Heap) -> None:
    # uapi §3.2: the kernel's system heap accepts an END with no START; the fallback
    # checks brackets for balance and refuses it (a documented difference).
    with heap.allocate(4096) as buf:
        if BACKEND == "kernel":
            buf.end_cpu_access()
        else:
            with pytest.raises(pydmabuf.InvalidArgumentError):
                buf.end_cpu_access()


def test_udmabuf_end_before_first_start_is_refused() -> None:
    # uapi §3.2: udmabuf returns EINVAL for END before the first START; fallback matches.
    with pydmabuf.udmabuf(4096) as buf:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            buf.end_cpu_access()
        with buf.cpu_access():
            pass


def test_from_fd_and_size(heap: pydmabuf.Heap) -> None:
    with heap.allocate(3 * 4096) as buf:
        with pydmabuf.Buffer.from_fd(buf.fileno(), own=False) as other:
            assert other.size == 3 * 4096
            assert other.fileno() != buf.fileno()
        assert not buf.closed  # own=False dup'd


def test_from_fd_rejects_non_buffers() -> None:
    r, w = os.pipe()
    try:
        before = open_fds()
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.Buffer.from_fd(r)
        assert "not a" in str(exc.value)
        assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def test_from_fd_borrowing_a_non_buffer_names_the_callers_fd_and_closes_its_dup() -> None:
    # own=False dups first and looks at the dup (a number reused meanwhile can't pair one
    # file's size with another's fd); a refusal still names the caller's number.
    r, w = os.pipe()
    try:
        before = open_fds()
        with pytest.raises(pydmabuf.InvalidArgumentError, match=f"fd {r} "):
            pydmabuf.Buffer.from_fd(r, own=False)
        with pytest.raises(pydmabuf.InvalidArgumentError, match=f"fd {r} "):
            pydmabuf.Buffer.from_fd(r, own=False, backend="kernel")
        assert open_fds() == before
        os.close(r)
        with pytest.raises(pydmabuf.Error) as exc:
            pydmabuf.Buffer.from_fd(r, own=False)
        assert exc.value.errno == errno.EBADF
        assert open_fds() == before - 1
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):  # r is closed above unless an assertion failed
                os.close(fd)


def test_from_fd_borrowing_checks_the_expected_backend(heap: pydmabuf.Heap) -> None:
    other = "fallback" if BACKEND == "kernel" else "kernel"
    with heap.allocate(4096) as buf:
        before = open_fds()
        with pytest.raises(pydmabuf.InvalidArgumentError, match=f"fd {buf.fileno()} is"):
            pydmabuf.Buffer.from_fd(buf.fileno(), own=False, backend=other)
        assert open_fds() == before
        with pydmabuf.Buffer.from_fd(buf.fileno(), own=False, backend=BACKEND) as same:
            assert same.backend == BACKEND and same.size == 4096


def test_from_fd_rejects_closed_fd() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(pydmabuf.Error):
        pydmabuf.Buffer.from_fd(r)


def test_from_fd_accepts_objects_with_fileno(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, pydmabuf.Buffer.from_fd(buf, own=False) as other:
        assert other.size == 4096


def test_detach_gives_up_ownership(heap: pydmabuf.Heap) -> None:
    buf = heap.allocate(4096)
    fd = buf.detach()
    assert buf.closed
    with pytest.raises(ValueError):
        buf.fileno()
    os.fstat(fd)  # still open
    os.close(fd)


def test_dup_is_same_buffer(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096, name="dup-me") as buf, buf.dup() as copy:
        assert copy.fileno() != buf.fileno()
        assert copy.info().inode == buf.info().inode
        assert copy.name == "dup-me"


def test_closed_buffer_refuses_everything(heap: pydmabuf.Heap) -> None:
    buf = heap.allocate(4096)
    fd = buf.fileno()
    buf.close()
    buf.close()  # idempotent
    # Another file takes the same number; no method may touch it.
    r, w = os.pipe()
    try:
        calls = [
            buf.fileno, buf.map, buf.cpu_access().__enter__, buf.info, buf.dup, buf.detach,
            lambda: buf.set_name("x"), lambda: buf.name, buf.export_sync_file, buf.wait,
            buf.begin_cpu_access,
        ]
        for call in calls:
            with pytest.raises(pydmabuf.ClosedError) as exc:
                call()
            assert isinstance(exc.value, ValueError)
            assert exc.value.errno == errno.EBADF
        assert "closed" in repr(buf)
    finally:
        os.close(r)
        os.close(w)
    assert fd >= 0


def test_names_up_to_31_bytes(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        assert buf.name is None
        buf.set_name("x" * 31)
        assert buf.name == "x" * 31
        with pytest.raises(pydmabuf.InvalidArgumentError):
            buf.set_name("y" * 32)
        assert buf.name == "x" * 31
        buf.set_name("")
        assert buf.name == ""


def test_names_with_odd_characters_round_trip(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        buf.set_name("a b/c\nd")
        assert buf.name == "a b/c\nd"
        assert buf.info().name == "a b/c\nd"


def test_name_with_nul_refused(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, pytest.raises(pydmabuf.InvalidArgumentError):
        buf.set_name("a\0b")


def test_repr_shows_fd_size_name(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096, name="frame") as buf:
        text = repr(buf)
        assert f"fd={buf.fileno()}" in text and "size=4096" in text and "'frame'" in text


def test_info_reports_exporter_and_count(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        info = buf.info()
        assert info.exporter == ("system" if BACKEND == "kernel" else "pydmabuf-fallback")
        base = info.count
        with buf.map():
            # The mapping is a reference, and Python's mmap keeps a dup of the fd.
            assert buf.info().count == base + 2


def test_concurrent_cpu_access_from_threads(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096 * 4) as buf, buf.map() as m:
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            try:
                for _ in range(200):
                    with buf.cpu_access(read=False, write=True):
                        m[index * 4096] = index
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert [m[i * 4096] for i in range(4)] == [0, 1, 2, 3]


@needs_timeline
def test_cpu_access_timeout_waits_on_implicit_fences(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        with pytest.raises(pydmabuf.TimeoutError), buf.cpu_access(timeout=0.05):
            pass
        timeline.signal(1)
        with buf.cpu_access(timeout=5):
            pass


def test_buffer_fd_is_a_dmabuf_or_a_fallback_memfd(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096, name="link") as buf:
        link = os.readlink(f"/proc/self/fd/{buf.fileno()}")
        if BACKEND == "kernel":
            assert link == "/dmabuf:link"
        else:  # the name lives in an xattr; the memfd keeps the name it was made with
            assert link.startswith("/memfd:pydmabuf:system")
        assert os.fstat(buf.fileno()).st_size == 4096


@needs_timeline
def test_cpu_access_start_survives_signals_while_blocked(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    # SYNC START blocks on the write fence; timer signals interrupt it (EINTR) and the
    # library must retry until the fence signals, not fail.
    import signal
    import time

    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        hits: list[int] = []
        old = signal.signal(signal.SIGALRM, lambda *_: hits.append(1))
        releaser = threading.Timer(0.5, timeline.signal, args=(1,))
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        releaser.start()
        start = time.monotonic()
        try:
            with buf.cpu_access():
                elapsed = time.monotonic() - start
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            releaser.join()
        assert hits, "no signal arrived during the blocked START"
        assert elapsed >= 0.4


@kernel_only
def test_kernel_hot_path_errors_are_library_errors() -> None:
    # The fast paths (fcntl.ioctl) map failures like the ops layer does: an fd that is
    # not a dma-buf answers ENOTTY, which is UnsupportedError.
    backend = pydmabuf.get_backend("kernel")
    r, w = os.pipe()
    try:
        fake = pydmabuf.Buffer(os.dup(r), 4096, backend)
        with fake:
            with pytest.raises(pydmabuf.UnsupportedError), fake.cpu_access():
                pass
            with pytest.raises(pydmabuf.UnsupportedError):
                fake.export_sync_file()
        with pytest.raises(pydmabuf.UnsupportedError):
            backend.allocate(r, "system", 4096)
    finally:
        os.close(r)
        os.close(w)
