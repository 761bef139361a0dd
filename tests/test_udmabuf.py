"""Mirrors the kernel's selftests/drivers/dma-buf/udmabuf behaviour on both backends."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from conftest import BACKEND, open_fds

import pydmabuf
from pydmabuf.uapi import memfd as _memfd

PAGE = os.sysconf("SC_PAGE_SIZE")


def sealed(size: int, seals: int = _memfd.F_SEAL_SHRINK) -> int:
    return _memfd.sealed_memfd("test", size, seals)


def test_udmabuf_rounds_up_and_names() -> None:
    with pydmabuf.udmabuf(PAGE + 1, name="scratch") as buf:
        assert buf.size == 2 * PAGE
        assert buf.name == "scratch"
        with buf.map() as m, buf.cpu_access():
            m[:] = b"\x01" * buf.size
            assert m[-1] == 1


def test_udmabuf_info_exporter() -> None:
    with pydmabuf.udmabuf(PAGE) as buf:
        assert buf.info().exporter == ("udmabuf" if BACKEND == "kernel" else "pydmabuf-fallback")


def test_from_memfd_shares_pages_both_ways() -> None:
    memfd = sealed(4 * PAGE)
    try:
        with pydmabuf.udmabuf_from_memfd(memfd) as buf:
            assert buf.size == 4 * PAGE
            os.pwrite(memfd, b"from-memfd", PAGE)
            with buf.map() as m:
                with buf.cpu_access():
                    assert m[PAGE:PAGE + 10] == b"from-memfd"
                    m[0:6] = b"buffer"
                assert os.pread(memfd, 6, 0) == b"buffer"
    finally:
        os.close(memfd)


def test_from_memfd_window() -> None:
    memfd = sealed(4 * PAGE)
    try:
        os.pwrite(memfd, b"second", 2 * PAGE)
        with pydmabuf.udmabuf_from_memfd(memfd, 2 * PAGE, PAGE) as buf, buf.map() as m:
            assert buf.size == PAGE
            with buf.cpu_access():
                assert m[:6] == b"second"
    finally:
        os.close(memfd)


def test_buffer_outlives_memfd() -> None:
    memfd = sealed(PAGE)
    try:
        os.pwrite(memfd, b"kept", 0)
        buf = pydmabuf.udmabuf_from_memfd(memfd)
    finally:
        os.close(memfd)
    with buf, buf.map() as m, buf.cpu_access():
        assert m[:4] == b"kept"


@pytest.mark.parametrize(
    "offset,size",
    [(PAGE // 2, PAGE), (0, PAGE + 1), (0, PAGE // 2), (0, 0), (0, 8 * PAGE), (4 * PAGE, PAGE)],
    ids=["unaligned-offset", "non-page-size", "half-page", "zero", "past-end", "offset-at-end"],
)
def test_bad_ranges_rejected(offset: int, size: int) -> None:
    memfd = sealed(4 * PAGE)
    try:
        before = open_fds()
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.udmabuf_from_memfd(memfd, offset, size)
        assert exc.value.errno == errno.EINVAL
        assert open_fds() == before
    finally:
        os.close(memfd)


def test_non_memfd_rejected() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(pydmabuf.Error) as exc:
            pydmabuf.udmabuf_from_memfd(r, 0, PAGE)
        assert exc.value.errno == errno.EBADFD
    finally:
        os.close(r)
        os.close(w)


def test_memfd_without_sealing_rejected() -> None:
    memfd = os.memfd_create("plain")  # Python's default flags lack MFD_ALLOW_SEALING
    try:
        os.ftruncate(memfd, PAGE)
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.udmabuf_from_memfd(memfd)
        assert "SEAL" in str(exc.value)
    finally:
        os.close(memfd)


def test_memfd_without_seal_shrink_rejected() -> None:
    memfd = sealed(PAGE, seals=0)
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.udmabuf_from_memfd(memfd)
    finally:
        os.close(memfd)


def test_memfd_with_write_seal_rejected() -> None:
    memfd = sealed(PAGE, seals=_memfd.F_SEAL_SHRINK | _memfd.F_SEAL_WRITE)
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.udmabuf_from_memfd(memfd)
    finally:
        os.close(memfd)


def test_grow_and_seal_seal_alongside_shrink_allowed() -> None:
    memfd = sealed(PAGE, _memfd.F_SEAL_SHRINK | _memfd.F_SEAL_GROW | _memfd.F_SEAL_SEAL)
    try:
        with pydmabuf.udmabuf_from_memfd(memfd) as buf:
            assert buf.size == PAGE
    finally:
        os.close(memfd)


def test_size_limit() -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
        pydmabuf.udmabuf((64 << 20) + PAGE)
    assert "size" in str(exc.value)


def test_create_list_contiguous_chunks_match_memfd() -> None:
    memfd = sealed(8 * PAGE)
    try:
        for i in range(8):
            os.pwrite(memfd, bytes([i]) * PAGE, i * PAGE)
        ranges = [(memfd, 0, 2 * PAGE), (memfd, 2 * PAGE, 2 * PAGE), (memfd, 4 * PAGE, 4 * PAGE)]
        with pydmabuf.udmabuf_from_ranges(ranges) as buf, buf.map() as m:
            assert buf.size == 8 * PAGE
            with buf.cpu_access(write=False):
                assert bytes(m) == b"".join(bytes([i]) * PAGE for i in range(8))
            os.pwrite(memfd, b"\xee" * PAGE, 7 * PAGE)  # written after creation
            with buf.cpu_access(write=False):
                assert m[7 * PAGE:] == b"\xee" * PAGE
    finally:
        os.close(memfd)


def test_create_list_of_several_memfds() -> None:
    fds = [sealed(2 * PAGE) for _ in range(3)]
    try:
        for i, fd in enumerate(fds):
            os.pwrite(fd, bytes([0x10 + i]) * 2 * PAGE, 0)
        ranges = [(fds[2], PAGE, PAGE), (fds[0], 0, 2 * PAGE), (fds[1], 0, PAGE)]
        if BACKEND == "fallback":
            # One memfd cannot share the pages of several: the fallback says so.
            with pytest.raises(pydmabuf.UnsupportedError) as exc:
                pydmabuf.udmabuf_from_ranges(ranges)
            assert "kernel" in str(exc.value)
            return
        with pydmabuf.udmabuf_from_ranges(ranges) as buf, buf.map() as m:
            assert buf.size == 4 * PAGE
            with buf.cpu_access(write=False):
                assert bytes(m) == b"\x12" * PAGE + b"\x10" * 2 * PAGE + b"\x11" * PAGE
            os.pwrite(fds[1], b"\x99" * PAGE, 0)
            with buf.cpu_access(write=False):
                assert m[3 * PAGE:] == b"\x99" * PAGE
    finally:
        for fd in fds:
            os.close(fd)


def test_empty_range_list_rejected() -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.udmabuf_from_ranges([])


def test_shrinking_pinned_memfd_refused() -> None:
    memfd = sealed(2 * PAGE)
    try:
        with pydmabuf.udmabuf_from_memfd(memfd), pytest.raises(PermissionError):
            os.ftruncate(memfd, PAGE)
    finally:
        os.close(memfd)


def test_udmabuf_fd_is_cloexec() -> None:
    with pydmabuf.udmabuf(PAGE) as buf:
        assert fcntl.fcntl(buf.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC


@pytest.mark.parametrize("memfd", [2**31, 2**31 - 1 + 2**32, 2**63, 2**64])
def test_impossible_fd_numbers_are_invalid_not_overflow(memfd: int) -> None:
    before = open_fds()
    with pytest.raises(pydmabuf.InvalidArgumentError, match="invalid fd"):
        pydmabuf.udmabuf_from_memfd(memfd)  # was OverflowError from os.fstat
    assert open_fds() == before


def test_offsets_and_sizes_take_numpy_integers() -> None:
    np = pytest.importorskip("numpy")
    memfd = sealed(4 * PAGE)
    try:
        with pydmabuf.udmabuf_from_memfd(memfd, np.int64(PAGE), np.uint32(2 * PAGE)) as buf:
            assert buf.size == 2 * PAGE and type(buf.size) is int
        with pydmabuf.udmabuf_from_ranges([(memfd, np.int64(0), np.int64(PAGE))]) as buf:
            assert buf.size == PAGE
        with pydmabuf.udmabuf(np.int64(PAGE)) as buf:
            assert buf.size == PAGE
        with pytest.raises(pydmabuf.InvalidArgumentError, match="offset must be an int"):
            pydmabuf.udmabuf_from_memfd(memfd, np.float64(0))
    finally:
        os.close(memfd)


@pytest.mark.parametrize(("seals", "offset", "size", "named"), [
    (0, 0, PAGE, "F_SEAL_SHRINK"),
    (_memfd.F_SEAL_SHRINK | _memfd.F_SEAL_WRITE, 0, PAGE, "no write seal"),
    (_memfd.F_SEAL_SHRINK, PAGE // 2, PAGE, "page-aligned"),
    (_memfd.F_SEAL_SHRINK, 0, 8 * PAGE, "past the end"),
], ids=["no-shrink-seal", "write-seal", "unaligned", "past-end"])
def test_a_refusal_names_the_condition_that_failed(seals: int, offset: int, size: int, named: str) -> None:
    # The kernel says only EINVAL; both backends name the one condition (not the list of five).
    memfd = sealed(4 * PAGE, seals=seals)
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.udmabuf_from_memfd(memfd, offset, size)
        assert named in str(exc.value), str(exc.value)
        assert "size_limit_mb" not in str(exc.value)  # not the generic five-condition hint
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.udmabuf_from_ranges([(memfd, offset, size)])
        assert named in str(exc.value), str(exc.value)
    finally:
        os.close(memfd)


def test_a_buffer_over_the_size_limit_names_the_limit() -> None:
    limit = _memfd.udmabuf_size_limit()
    memfd = sealed(limit + PAGE)  # sparse: no page is touched
    try:
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.udmabuf_from_memfd(memfd, 0, limit + PAGE)
        assert "limit" in str(exc.value) and str(limit) in str(exc.value), str(exc.value)
    finally:
        os.close(memfd)
