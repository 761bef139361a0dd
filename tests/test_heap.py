from __future__ import annotations

import errno
import os

import pytest
from conftest import BACKEND, kernel_only, open_fds

import pydmabuf
from pydmabuf.uapi import ops as _ops

PAGE = os.sysconf("SC_PAGE_SIZE")


def test_backend_is_visible() -> None:
    assert pydmabuf.backend in ("kernel", "fallback")
    assert pydmabuf.get_backend().name == pydmabuf.backend


def test_heaps_lists_system() -> None:
    assert "system" in pydmabuf.heaps()


@pytest.mark.parametrize("size", [1, PAGE, PAGE + 1, 1 << 20])
def test_allocate_rounds_to_pages_and_is_zeroed(heap: pydmabuf.Heap, size: int) -> None:
    with heap.allocate(size) as buf:
        expected = -(-size // PAGE) * PAGE
        assert buf.size == expected
        with buf.map() as m, buf.cpu_access():
            assert bytes(m) == bytes(expected)


def test_reallocated_buffers_come_back_zeroed(heap: pydmabuf.Heap) -> None:
    # kernel selftest: fill with 0xff, free, re-allocate, all zero
    for size in (4096, 1 << 20):
        for _ in range(32):
            with heap.allocate(size) as buf, buf.map() as m, buf.cpu_access():
                m[:] = b"\xff" * size
        with heap.allocate(size) as buf, buf.map() as m, buf.cpu_access(write=False):
            assert m[:] == bytes(size)


def test_allocate_with_name(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096, name="camera-frame-0") as buf:
        assert buf.name == "camera-frame-0"
        info = buf.info()
        assert info.name == "camera-frame-0"
        assert info.size == 4096
        assert info.inode > 0


def test_heap_repr_and_properties(heap: pydmabuf.Heap) -> None:
    assert heap.name == "system"
    assert heap.backend == BACKEND
    assert "system" in repr(heap)
    assert heap.fileno() >= 0


@pytest.mark.parametrize("size", [0, -1, -4096])
def test_bad_sizes(heap: pydmabuf.Heap, size: int) -> None:
    before = open_fds()
    with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
        heap.allocate(size)
    assert exc.value.errno == errno.EINVAL
    assert open_fds() == before


@pytest.mark.parametrize("size", [1.5, "4096", None, True])
def test_size_of_wrong_type(heap: pydmabuf.Heap, size: object) -> None:
    with pytest.raises((pydmabuf.InvalidArgumentError, TypeError)):
        heap.allocate(size)  # type: ignore[arg-type]


def test_oversized_allocation_refused_up_front(heap: pydmabuf.Heap) -> None:
    # Never actually attempted: the system heap has no cap and the OOM killer would
    # pick another process.
    with pytest.raises(pydmabuf.OutOfMemoryError) as exc:
        heap.allocate(1 << 50)
    assert exc.value.errno == errno.ENOMEM
    assert isinstance(exc.value, pydmabuf.Error)
    assert "memory" in str(exc.value)


def test_unknown_heap_name() -> None:
    with pytest.raises(FileNotFoundError) as exc:
        pydmabuf.Heap("no-such-heap")
    assert exc.value.errno == errno.ENOENT
    assert "available" in str(exc.value)
    assert isinstance(exc.value, pydmabuf.Error)


@pytest.mark.parametrize("name", ["", "../system", "a/b", "."])
def test_invalid_heap_names(name: str) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.Heap(name)


def test_heap_close_is_idempotent_and_closed_heap_refuses() -> None:
    heap = pydmabuf.Heap("system")
    heap.close()
    heap.close()
    assert heap.closed
    with pytest.raises(pydmabuf.ClosedError):
        heap.allocate(4096)
    with pytest.raises(ValueError):
        heap.fileno()


def test_heap_context_manager_closes() -> None:
    with pydmabuf.Heap() as heap:
        fd = heap.fileno()
    assert heap.closed
    with pytest.raises(OSError) as exc:
        os.fstat(fd)
    assert exc.value.errno == errno.EBADF


def test_ten_thousand_cycles_leave_fd_count_unchanged(heap: pydmabuf.Heap) -> None:
    before = open_fds()
    for i in range(10_000):
        buf = heap.allocate(4096)
        m = buf.map()
        with buf.cpu_access(read=False, write=True):
            m[0] = i & 0xFF
        m.close()
        buf.close()
    assert open_fds() == before


def test_buffers_freed_by_finalizer(heap: pydmabuf.Heap) -> None:
    before = open_fds()
    for _ in range(100):
        heap.allocate(4096)  # dropped at once: __del__ closes
    assert open_fds() == before


@kernel_only
def test_kernel_rejects_bad_heap_flags(heap: pydmabuf.Heap) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        _ops.heap_alloc(heap.fileno(), 4096, os.O_RDWR | os.O_CLOEXEC, heap_flags=1)


@kernel_only
@pytest.mark.parametrize("fd_flags", [os.O_NONBLOCK, os.O_RDWR | os.O_APPEND, 0x100000])
def test_kernel_rejects_bad_fd_flags(heap: pydmabuf.Heap, fd_flags: int) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        _ops.heap_alloc(heap.fileno(), 4096, fd_flags)


@kernel_only
def test_kernel_buffer_is_rdwr_and_cloexec(heap: pydmabuf.Heap) -> None:
    import fcntl

    with heap.allocate(4096) as buf:
        assert fcntl.fcntl(buf.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert not os.get_inheritable(buf.fileno())
        assert buf.info().exporter == "system"


@kernel_only
def test_kernel_cloexec_only_buffer_is_read_only(heap: pydmabuf.Heap) -> None:
    # uapi trap: fd_flags=O_CLOEXEC alone gives an O_RDONLY buffer
    fd = _ops.heap_alloc(heap.fileno(), 4096, os.O_CLOEXEC)
    with pydmabuf.Buffer.from_fd(fd) as buf:
        with pytest.raises(PermissionError) as exc:
            buf.map(write=True)
        assert "read-only" in str(exc.value)
        with buf.map(write=False) as m:
            assert m[0] == 0
