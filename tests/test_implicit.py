"""Implicit fences on buffers: mirrors IGT dmabuf_sync_file on both backends."""

from __future__ import annotations

import select

import pytest
from conftest import BACKEND

import pydmabuf


def poll_events(buf: pydmabuf.Buffer) -> int:
    p = select.poll()
    p.register(buf.fileno(), select.POLLIN | select.POLLOUT)
    return sum(ev for _fd, ev in p.poll(0))


def test_export_of_idle_buffer_is_signaled(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        for read, write in ((True, False), (False, True), (True, True)):
            with buf.export_sync_file(read=read, write=write) as fence:
                assert fence.signaled
        buf.wait(timeout=0)
        buf.wait(write=True, timeout=0)


def test_export_needs_a_direction(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, pytest.raises(pydmabuf.InvalidArgumentError):
        buf.export_sync_file(read=False, write=False)


def test_import_write_fence_blocks_readers_and_writers(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        with buf.export_sync_file(read=True, write=False) as for_readers, \
                buf.export_sync_file(write=True) as for_writers:
            assert not for_readers.signaled and not for_writers.signaled
            with pytest.raises(pydmabuf.TimeoutError):
                buf.wait(timeout=0.05)
            with pytest.raises(pydmabuf.TimeoutError):
                buf.wait(write=True, timeout=0.05)
            timeline.signal(1)
            for_readers.wait(5)
            for_writers.wait(5)
        buf.wait(timeout=5)
        buf.wait(write=True, timeout=5)


def test_import_read_fence_blocks_only_writers(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=False)
        buf.wait(timeout=0)  # readers need not wait for readers
        with buf.export_sync_file(read=True, write=False) as for_readers:
            assert for_readers.signaled
        with pytest.raises(pydmabuf.TimeoutError):
            buf.wait(write=True, timeout=0.05)
        timeline.signal(1)
        buf.wait(write=True, timeout=5)


def test_poll_on_buffer_fd_reflects_imported_fences(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    # IGT: import read-only vs read-write changes what poll on the buffer reports.
    if BACKEND == "fallback":  # a memfd always polls ready: the fences show through wait()
        with heap.allocate(4096) as buf, timeline.fence(1) as fence:
            buf.import_sync_file(fence, write=True)
            assert poll_events(buf) == select.POLLIN | select.POLLOUT
            with pytest.raises(pydmabuf.TimeoutError):
                buf.wait(timeout=0.05)
            timeline.signal(1)
            buf.wait(timeout=5)
        return
    with heap.allocate(4096) as buf:
        assert poll_events(buf) == select.POLLIN | select.POLLOUT
        with timeline.fence(1) as fence:
            buf.import_sync_file(fence, write=False)
            assert poll_events(buf) == select.POLLIN
            timeline.signal(1)
        assert poll_events(buf) == select.POLLIN | select.POLLOUT
        with timeline.fence(2) as fence:
            buf.import_sync_file(fence, write=True)
            assert poll_events(buf) == 0
            timeline.signal(2)
        assert poll_events(buf) == select.POLLIN | select.POLLOUT


def test_export_is_a_snapshot(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, buf.export_sync_file() as before, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        assert before.signaled  # taken before the fence was added
        with buf.export_sync_file() as after:
            assert not after.signaled
            timeline.signal(1)
            after.wait(5)


def test_export_after_signal_is_signaled(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        timeline.signal(1)
        with buf.export_sync_file() as exported:
            assert exported.signaled


def test_multiple_fences_all_waited(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, timeline.fence(1) as a, timeline.fence(2) as b:
        buf.import_sync_file(a, write=False)
        buf.import_sync_file(b, write=False)
        with buf.export_sync_file(write=True) as all_fences:
            timeline.signal(1)
            assert not all_fences.signaled
            timeline.signal(2)
            all_fences.wait(5)


def test_import_signaled_fence_is_noop(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    timeline.signal(1)
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        buf.wait(write=True, timeout=0)


def test_import_rejects_non_syncfile(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, heap.allocate(4096) as other, pytest.raises(pydmabuf.InvalidArgumentError):
        buf.import_sync_file(other)  # type: ignore[arg-type]


def test_implicit_fences_on_udmabuf(timeline: pydmabuf.Timeline) -> None:
    with pydmabuf.udmabuf(4096) as buf, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        with pytest.raises(pydmabuf.TimeoutError):
            buf.wait(timeout=0.05)
        timeline.signal(1)
        buf.wait(timeout=5)


def test_implicit_fences_visible_through_dup(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    with heap.allocate(4096) as buf, buf.dup() as other, timeline.fence(1) as fence:
        buf.import_sync_file(fence, write=True)
        with pytest.raises(pydmabuf.TimeoutError):
            other.wait(timeout=0.05)
        timeline.signal(1)
        other.wait(timeout=5)
